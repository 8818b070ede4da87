"""A small tuning job tracked without Ray: a parent run, three trials trained for real, the
job's summary and registration, then `rlservice best` on the result."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rlservice.cli import main
from rlservice.data.minari_io import dataset_digest
from rlservice.tracking import runs
from rlservice.training.trainer import Trainer

EXPERIMENT = "job-test"
PA_ALPHAS = (1e-4, 1e-3, 1e-2)


@pytest.fixture(scope="module")
def job(mlflow_server, hopper_random_dataset, tiny_run_config, one_thread, tmp_path_factory):
    uri = mlflow_server.uri
    parent = runs.start_job_run(uri, EXPERIMENT, "job-1", {"dataset": hopper_random_dataset, "searched": "pa_alpha"})
    trials, logged = [], {}
    for i, pa_alpha in enumerate(PA_ALPHAS):
        run_config = tiny_run_config(seed=i, pa_alpha=pa_alpha)
        trainer = Trainer(run_config, tmp_path_factory.mktemp(f"trial{i}"))
        run = runs.TrialRun(uri, EXPERIMENT, parent, f"trial-{i}", runs.run_params(run_config, action_dim=3, digest=trainer.data.digest))
        calls = []

        def record(step, metrics, run=run, calls=calls):
            calls.append((step, dict(metrics)))
            run.log_metrics(step, metrics)

        with one_thread():
            result = trainer.run(on_log=record, on_eval=record, progress=False)
        run.log_checkpoint(trainer.run_dir / "best")
        assert run.finish(result.status, result.history)
        logged[run.run_id] = calls
        trials.append({"trial": f"trial-{i}", "run_id": run.run_id, "status": result.status,
                       "score": result.best_normalized_score, "score_std": 0.0, "config": {"pa_alpha": pa_alpha},
                       "final_score": result.normalized_score,
                       "checkpoint": str(trainer.run_dir / "best")})
    summary = runs.finish_job(uri, parent, trials, model_name="job-test-policy", dataset_id=hopper_random_dataset,
                                  preset="td3bc", searched=["pa_alpha"])
    return {"uri": uri, "parent": parent, "trials": trials, "logged": logged, "summary": summary,
            "client": MlflowClient(tracking_uri=uri)}


def test_parent_and_child_runs_are_nested_with_lineage_params(job, hopper_random_dataset):
    c = job["client"]
    parent = c.get_run(job["parent"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[runs.KIND_TAG] == "job"
    for trial, pa_alpha in zip(job["trials"], PA_ALPHAS):
        run = c.get_run(trial["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == job["parent"]
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
        params = run.data.params
        assert float(params["agent.pa_alpha"]) == pa_alpha
        assert params["dataset.id"] == hopper_random_dataset
        assert params["dataset.digest"] == dataset_digest(hopper_random_dataset)
        assert params["preset"] == "td3bc" and params["train.steps"] == "100"
        assert params["git.commit"] == (runs.git_commit() or "unknown")


def test_every_logged_metric_value_reached_the_server(job):
    c = job["client"]
    for run_id, calls in job["logged"].items():
        expected = {}
        for step, metrics in calls:
            for key, value in metrics.items():
                if key != "step" and not isinstance(value, (bool, list, str)):  # per-episode lists, score_unit
                    expected.setdefault(key, []).append((step, pytest.approx(value)))
        assert {"critic_loss", "normalized_score", "ood_overestimation"} <= expected.keys()
        for key, points in expected.items():
            history = sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))
            assert history == points, key
        best = max(m.value for m in c.get_metric_history(run_id, "normalized_score"))
        assert c.get_run(run_id).data.metrics["score"] == pytest.approx(best)  # the best evaluation: the checkpoint's


def test_artifacts_of_trials_and_job(job, tmp_path):
    c = job["client"]
    for trial in job["trials"]:
        names = {a.path for a in c.list_artifacts(trial["run_id"])}
        assert {"checkpoint", "learning_curve.png"} <= names
        checkpoint = {a.path for a in c.list_artifacts(trial["run_id"], "checkpoint")}
        assert checkpoint == {"checkpoint/state.pt", "checkpoint/config.json"}
        local = Path(c.download_artifacts(trial["run_id"], "checkpoint/state.pt", str(tmp_path / trial["trial"])))
        assert local.read_bytes() == (Path(trial["checkpoint"]) / "state.pt").read_bytes()
    parent_artifacts = {a.path for a in c.list_artifacts(job["parent"])}
    assert {"trials.csv", "summary.png", "tuning_budget.csv", "tuning_budget.png"} <= parent_artifacts
    budget = list(csv.DictReader(Path(c.download_artifacts(job["parent"], "tuning_budget.csv", str(tmp_path))).open()))
    finals = [t["final_score"] for t in job["trials"]]
    assert [int(r["trials"]) for r in budget] == [1, 2, 3]
    assert float(budget[0]["expected_max_final_score"]) == pytest.approx(sum(finals) / 3)  # one trial: the mean
    assert float(budget[-1]["expected_max_final_score"]) <= max(finals)
    description = c.get_run(job["parent"]).data.tags["mlflow.note.content"]
    assert "Top trials by selection score" in description and all(t["trial"] in description for t in job["trials"])
    table = Path(c.download_artifacts(job["parent"], "trials.csv", str(tmp_path)))
    rows = list(csv.DictReader(table.open()))
    assert [r["run_id"] for r in rows] == [t["run_id"] for t in job["trials"]]
    assert [float(r["pa_alpha"]) for r in rows] == list(PA_ALPHAS)
    png = Path(c.download_artifacts(job["parent"], "summary.png", str(tmp_path)))
    assert png.read_bytes().startswith(b"\x89PNG")


def test_best_trial_is_registered_with_lineage(job, hopper_random_dataset):
    c, summary = job["client"], job["summary"]
    best = max(job["trials"], key=lambda t: t["score"])
    assert summary["best_run_id"] == best["run_id"] and summary["best_score"] == pytest.approx(best["score"])
    assert summary["champion"] is True  # the first version of a model is its first champion
    assert c.get_run(job["parent"]).data.metrics["best_selection_score"] == pytest.approx(best["score"])
    version = c.get_model_version_by_alias("job-test-policy", "champion")
    assert version.version == str(summary["version"])
    assert version.run_id == best["run_id"]
    tags = version.tags
    assert tags["run_id"] == best["run_id"] and tags["parent_run_id"] == job["parent"]
    assert tags["dataset"] == hopper_random_dataset and tags["preset"] == "td3bc"
    assert float(tags["score"]) == pytest.approx(best["score"])
    assert tags["dataset_digest"] == dataset_digest(hopper_random_dataset)


def test_best_command_lists_trials_in_score_order(job, hopper_random_dataset, capsys):
    code = main(["best", "--experiment", EXPERIMENT, "--dataset", hopper_random_dataset, "--json",
                 "--tracking-uri", job["uri"]])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    expected = sorted(job["trials"], key=lambda t: -t["score"])
    assert [r["run_id"] for r in rows] == [t["run_id"] for t in expected]
    assert [r["score"] for r in rows] == pytest.approx([t["score"] for t in expected])
    for row, trial in zip(rows, expected):
        # td3bc's values are the baseline: only what the trial changed shows
        assert row["knobs"] == {"pa_alpha": trial["config"]["pa_alpha"], "critic_hidden": 32, "actor_hidden": 32}
        # one seed, one episode per evaluation: the interval says so (and is the point itself), never `std 0`
        assert row["score_interval"] == {"mean": pytest.approx(row["score"]), "low": pytest.approx(row["score"]),
                                         "high": pytest.approx(row["score"]), "seeds": 1, "episodes": 1, "unit": "ep"}
        assert row["confirmed"] is None

    assert main(["best", "--experiment", EXPERIMENT, "--top", "2", "--tracking-uri", job["uri"]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and expected[0]["run_id"] in lines[1] and expected[1]["run_id"] in lines[2]
    assert "(1 seed x 1 ep)" in lines[1] and "std" not in lines[0]

    assert main(["best", "--experiment", EXPERIMENT, "--dataset", "rlservice/other/random-v0", "--json",
                 "--tracking-uri", job["uri"]]) == 0
    assert json.loads(capsys.readouterr().out) == []
