"""`rlservice train` with MLflow (and without a reachable server), and `rlservice ui`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import requests
from mlflow import MlflowClient

from rlservice.cli import main


def test_train_with_an_unreachable_server_fails_before_training(hopper_random_dataset, free_port, tmp_path, capsys):
    port = free_port()
    code = main(["train", "--dataset", hopper_random_dataset, "--preset", "td3bc", "--steps", "10",
                 "--out", str(tmp_path / "run"), "--tracking-uri", f"http://127.0.0.1:{port}", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == f"error: tracking server http://127.0.0.1:{port} is unreachable: Connection refused\n"
    assert captured.out == ""
    assert not (tmp_path / "run").exists()  # nothing trained, nothing saved


def test_train_logs_one_run_that_best_lists(mlflow_server, hopper_random_dataset, one_thread, tmp_path, capsys):
    uri = mlflow_server.uri
    with one_thread():
        code = main(["train", "--dataset", hopper_random_dataset, "--preset", "pars", "--steps", "60",
                     "--eval-every", "30", "--eval-episodes", "1", "--log-every", "20", "--set", "critic_hidden=32",
                     "--set", "num_critics=2", "--out", str(tmp_path / "run"), "--tracking-uri", uri,
                     "--experiment", "cli-train", "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
    run = MlflowClient(tracking_uri=uri).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert run.data.tags["rlservice.kind"] == "train" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.params["preset"] == "pars" and run.data.params["train.steps"] == "60"
    assert run.data.metrics["score"] == summary["best_normalized_score"]
    assert {"critic_loss", "normalized_score", "dormant_ratio"} <= run.data.metrics.keys()
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)}
    assert {"checkpoint", "learning_curve.png"} <= artifacts

    assert main(["best", "--experiment", "cli-train", "--json", "--tracking-uri", uri]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["run_id"] == summary["mlflow_run_id"]
    assert row["knobs"] == {"critic_hidden": 32, "num_critics": 2}  # the rest is pars's

    # Continued with --resume: a new run that names the one it continues.
    with one_thread():
        code = main(["train", "--resume", str(tmp_path / "run" / "latest"), "--steps", "90", "--tracking-uri", uri,
                     "--experiment", "cli-train", "--json", "--no-progress"])
    assert code == 0
    resumed = MlflowClient(tracking_uri=uri).get_run(json.loads(capsys.readouterr().out)["mlflow_run_id"])
    assert resumed.data.tags["resumed_from"] == summary["mlflow_run_id"]


def test_ui_serves_the_embedded_store_until_stopped(free_port, tmp_path):
    port = free_port()
    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    ui = subprocess.Popen([sys.executable, "-m", "rlservice.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = ui.stdout.readline()  # printed once the server answers
        assert line.startswith(f"MLflow UI: http://127.0.0.1:{port}")
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"
        assert requests.get(api, params={"max_results": 5}, timeout=10).status_code == 200
        ui.send_signal(signal.SIGTERM)  # to rlservice only: it must take its server down with it
        assert ui.wait(30) == 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                requests.get(api, timeout=1)
            except requests.ConnectionError:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the UI server outlived `rlservice ui`")
    finally:
        if ui.poll() is None:  # a failed assertion: still stop the server through `rlservice ui`
            ui.send_signal(signal.SIGTERM)
            try:
                ui.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)


def test_train_reads_a_dataset_uri_with_an_empty_minari_root(hopper_random_dataset, tmp_path, monkeypatch, capsys):
    import shutil

    from minari.storage import get_dataset_path

    shared = tmp_path / "shared" / "hopper-random-v0"
    shutil.copytree(get_dataset_path(hopper_random_dataset), shared)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty-minari"))
    code = main(["train", "--dataset", hopper_random_dataset, "--dataset-uri", shared.as_uri(), "--preset", "td3bc",
                 "--steps", "20", "--eval-every", "20", "--eval-episodes", "1", "--set", "critic_hidden=8",
                 "--set", "actor_hidden=8", "--out", str(tmp_path / "run"), "--no-tracking", "--no-progress", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["steps"] == 20 and out["normalized_score"] is not None
    config = json.loads((tmp_path / "run" / "latest" / "config.json").read_text())
    assert config["run"]["dataset"]["uri"] == shared.as_uri()  # a resume reads the same place
    assert not [p for p in (tmp_path / "empty-minari").rglob("*") if p.is_file()]
