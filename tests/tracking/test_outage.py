"""The tracking server goes away in the middle of a run: training goes on at full speed, and
nothing is lost when the server comes back; a server that never comes back costs a warning."""

from __future__ import annotations

import logging
import numbers
import time

from mlflow import MlflowClient

from rlservice.tracking import runs
from rlservice.training.trainer import Trainer


def test_server_down_mid_run(mlflow_server, tiny_run_config, one_thread, tmp_path, caplog):
    uri = mlflow_server.uri
    parent = runs.start_job_run(uri, "outage-test", "job", {})
    survivor = runs.TrialRun(uri, "outage-test", parent, "survivor", {"role": "survivor"})
    doomed = runs.TrialRun(uri, "outage-test", parent, "doomed", {"role": "doomed"})
    trainer = Trainer(tiny_run_config(seed=7), tmp_path / "run")
    calls, attempts = [], []
    send = survivor._send

    def counted_send():
        attempts.append(time.monotonic())
        send()

    survivor._send = counted_send

    def record(step, metrics):
        calls.append((step, dict(metrics)))
        survivor.log_metrics(step, metrics)

    mlflow_server.stop()
    try:
        with one_thread():
            result = trainer.run(on_log=record, on_eval=record, progress=False)
        survivor.log_checkpoint(trainer.run_dir / "best")
        # A dead server does not stall training: a failed send is retried only after a pause that
        # doubles from RETRY_FIRST_S, so log calls in between never touch the network (here 6 log
        # calls and the checkpoint: all 7 would try only if the run took over a minute).
        assert 1 <= len(attempts) <= len(calls)
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        pauses = [min(runs.RETRY_FIRST_S * 2**i, runs.RETRY_MAX_S) for i in range(len(gaps))]
        assert all(gap >= pause for gap, pause in zip(gaps, pauses)), (gaps, pauses)
        doomed.log_checkpoint(trainer.run_dir / "best")
        with caplog.at_level(logging.WARNING, logger="rlservice.tracking"):
            assert doomed.finish("completed", result.history, deadline_s=1.0) is False
        gave_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
        assert len(gave_up) == 1 and doomed.run_id in gave_up[0]
        assert "and the checkpoint" in gave_up[0] and str(trainer.run_dir) in gave_up[0]
    finally:
        mlflow_server.start()

    assert survivor.finish(result.status, result.history)
    c = MlflowClient(tracking_uri=uri)
    expected = {}
    for step, metrics in calls:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool):  # what log_metrics keeps
                expected.setdefault(key, []).append((step, value))
    assert len(expected) > 10 and sum(map(len, expected.values())) > 40
    for key, points in expected.items():
        assert sorted((m.step, m.value) for m in c.get_metric_history(survivor.run_id, key)) == sorted(points), key
    run = c.get_run(survivor.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert run.data.params["role"] == "survivor"
    assert {a.path for a in c.list_artifacts(survivor.run_id)} >= {"checkpoint", "learning_curve.png"}
    assert c.get_run(doomed.run_id).info.status == "RUNNING"  # it gave up: nothing pretends otherwise
