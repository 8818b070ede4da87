"""Pieces of the tracking layer that need no server: URIs, lineage, knobs, figures, model refs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from minari.storage import get_dataset_path

from rlservice.config.run import build_run_config
from rlservice.data.minari_io import dataset_digest
from rlservice.errors import RLServiceError
from rlservice.paths import home
from rlservice.tracking import figures, runs, store
from rlservice.tracking.registry import model_uri
from rlservice.training.intervals import EPISODES, FQE_CRITICS


def test_tracking_uri_precedence(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.resolve_tracking_uri() == f"sqlite:///{home() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert store.resolve_tracking_uri() == "http://127.0.0.1:1"
    assert store.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_local_store_keeps_artifacts_next_to_its_database(tmp_path):
    uri = f"sqlite:///{tmp_path / 'deep' / 'store' / 'mlflow.db'}"
    with pytest.raises(store.TrackingError, match="does not exist"):  # a user's path: nothing is created
        store.check_reachable(uri)
    assert not (tmp_path / "deep").exists()
    (tmp_path / "deep" / "store").mkdir(parents=True)
    store.check_reachable(uri)
    assert store.local_artifact_root(uri) == tmp_path / "deep" / "store" / "mlartifacts"
    assert store.local_artifact_root("http://127.0.0.1:5000") is None


def test_unreachable_server_is_one_line(free_port):
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(store.TrackingError) as error:
        store.check_reachable(uri, timeout=2)
    assert str(error.value) == f"tracking server {uri} is unreachable: Connection refused"


def test_dataset_digest_follows_the_data(hopper_random_dataset, tmp_path, monkeypatch):
    digest = dataset_digest(hopper_random_dataset)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    copy = tmp_path / "minari" / hopper_random_dataset
    shutil.copytree(get_dataset_path(hopper_random_dataset), copy)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    assert get_dataset_path(hopper_random_dataset) == copy
    assert dataset_digest(hopper_random_dataset) == digest  # a copy elsewhere: same data, same digest
    data = sorted(p for p in (copy / "data").rglob("*") if p.is_file())
    data[-1].write_bytes(data[-1].read_bytes() + b" ")
    assert dataset_digest(hopper_random_dataset) != digest
    with pytest.raises(RLServiceError, match="not found locally"):
        dataset_digest("rlservice/nowhere/random-v0")


def test_run_params_are_flat_and_changed_knobs_are_those_off_the_preset(hopper_random_dataset):
    run_config = build_run_config(hopper_random_dataset, "pars", None, {"pa_alpha": 0.001, "noise_sigma": 0.2}, action_dim=3)
    params = runs.flatten_params(runs.run_params(run_config, action_dim=3, digest="sha256:0"))
    assert params["agent.pa_alpha"] == "0.001" and params["agent.num_critics"] == "10"
    # the paper's row and each preset value's source (PARS Table 11: hopper-random alpha 1e-2)
    assert params["preset.row"] == "hopper-random"
    assert params["preset.source.pa_alpha"] == "PARS Table 11, hopper-random"
    assert params["preset.source.reward_scale"] == "PARS F.3, hopper"
    assert params["train.batch_size"] == "256" and params["preset"] == "pars"
    assert params["dataset.id"] == hopper_random_dataset and params["dataset.action_dim"] == "3"
    assert all(isinstance(v, str) for v in params.values())
    assert runs.changed_knobs(params) == {"pa_alpha": 0.001, "noise_sigma": 0.2}
    assert runs.changed_knobs({**params, "preset": "none"})["num_critics"] == 10  # vs the field defaults


def _trial(i: int, a: float, b: int, status: str = "completed") -> dict:
    return {"trial": f"t{i}", "run_id": f"r{i}", "status": status, "score": 100 * a, "score_std": 0.0,
            "config": {"a": a, "b": b}, "checkpoint": None}


def test_importances_follow_the_knob_that_matters():
    trials = [_trial(i, a, b) for i, (a, b) in enumerate([(0.1, 2), (0.5, 3), (0.9, 2), (0.3, 4), (0.7, 3), (0.2, 4)])]
    importances = figures.param_importances(trials, ["a", "b"])
    assert set(importances) == {"a", "b"} and importances["a"] > importances["b"]
    assert sum(importances.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("trials, searched, reason", [
    ([_trial(i, 0.1 * i, i) for i in range(6)], ["a"], "at least 2 searched knobs"),
    ([_trial(i, 0.1 * i, i) for i in range(3)], ["a", "b"], "at least 5 scored trials (3 so far)"),
    ([_trial(i, 0.1 * i, i, "failed") for i in range(6)], ["a", "b"], "at least 5 scored trials (0 so far)"),
    ([_trial(i, 0.1 * i, 2) for i in range(6)], ["a", "b"], "2 knobs that took different values"),
])
def test_importances_are_skipped_with_a_reason(trials, searched, reason):
    note = figures.param_importances(trials, searched)
    assert isinstance(note, str) and reason in note
    figure = figures.job_summary(trials, searched)
    assert len(figure.axes) == len(searched) + 1


def test_learning_curve_of_an_empty_history_is_a_figure():
    assert figures.learning_curve([]).axes


@pytest.mark.parametrize("ref, uri", [
    ("pol@champion", "models:/pol@champion"), ("pol/3", "models:/pol/3"), ("models:/pol@best-1", "models:/pol@best-1"),
])
def test_model_refs(ref, uri):
    assert model_uri(ref) == uri


def test_bad_model_ref_is_a_user_error():
    with pytest.raises(RLServiceError, match="NAME@ALIAS"):
        model_uri("pol@")


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from rlservice.tracking import store
uri, folder, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(folder / f"ready-{me}").touch()
while not (folder / "go").exists():  # all processes wait here, then open the new store at once
    time.sleep(0.001)
c = store.client(uri)
c.create_run(store.experiment_id(c, uri, "race"))
"""


def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """Without the lock, MLflow's table migrations in two processes collide on a new database."""
    uri, n = f"sqlite:///{tmp_path / 'mlflow.db'}", 4
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, uri, str(tmp_path), str(i)],
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(e.strip().splitlines()[-1] for e in errors if e.strip())
    c = store.client(uri)
    assert len(c.search_runs([c.get_experiment_by_name("race").experiment_id])) == n


def test_supersede_ends_a_run_left_running_and_points_every_cut_run_at_its_successor(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = store.client(uri)
    experiment = store.experiment_id(c, uri, "supersede")
    killed, stopped, successor = (c.create_run(experiment).info.run_id for _ in range(3))
    c.set_tag(stopped, "status", "completed")
    c.set_terminated(stopped, "FINISHED")  # its own process ended it: its outcome stays
    for old in (killed, stopped):
        runs.supersede(uri, old, successor)
    killed_run, stopped_run = c.get_run(killed), c.get_run(stopped)
    assert (killed_run.info.status, killed_run.data.tags["status"]) == ("KILLED", "interrupted")
    assert (stopped_run.info.status, stopped_run.data.tags["status"]) == ("FINISHED", "completed")
    assert killed_run.data.tags["continued_in"] == stopped_run.data.tags["continued_in"] == successor
    assert c.get_run(successor).info.status == "RUNNING"


def test_a_score_fqe_estimated_says_its_interval_rests_on_critics_not_episodes(tmp_path):
    """Under offline selection a trial's scores per seed are its FQE critics' estimates."""
    from rlservice.commands.best import _table

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for unit, low in ((FQE_CRITICS, 1.0), (EPISODES, 0.0)):  # scores 3 and 2: in that order in `best`
        scores = [[low + i for i in range(5)]]
        history = [{"step": 10, "normalized_score": low + 2, "normalized_score_std": 0.0, "episode_scores": scores,
                    "score_unit": unit}]
        run = runs.TrialRun(uri, "units", None, unit, {})
        assert run.finish("completed", history)
        metrics = store.client(uri).get_run(run.run_id).data.metrics
        counted = {"score_fqe_critics", "score_episodes"} & set(metrics)
        assert counted == {"score_fqe_critics" if unit == FQE_CRITICS else "score_episodes"}
        assert metrics[counted.pop()] == 5
    fqe, online = _table(runs.best_runs(uri, "units")).splitlines()[1:3]
    assert "3.00 [" in fqe and "(1 seed x 5 FQE critics)" in fqe and "(1 seed x 5 ep)" in online
