"""Tuning without an environment (`selection: offline`, trials scored by FQE), and FQE's quality
measured against online scores (`selection: online` with `offline_evaluation`)."""

import csv
import json

import gymnasium as gym
import pytest
from minari.storage import get_dataset_path
from mlflow import MlflowClient
from tune_helpers import child_runs, last_json, rlservice

from rlservice.data.minari_io import load_offline_data, read_metadata, write_dataset
from rlservice.errors import DatasetError
from rlservice.training.intervals import Interval

pytestmark = pytest.mark.slow

NOT_INSTALLED = "NotInstalled/Robot-v0"
ONE_TRIAL_AT_A_TIME = {"max_concurrent": 1, "resources": {"cpus": 1, "evaluators": 0}, "scheduler": {"type": "none"},
                       "steps": 200, "eval_every": 100}


@pytest.fixture(scope="module")
def unregistered_dataset(hopper_random_dataset):
    """The Hopper random dataset's episodes under a new id whose recorded env is not installed."""
    from minari import load_dataset

    from rlservice.data.minari_io import Episode

    source = load_dataset(hopper_random_dataset)
    episodes = [Episode(e.observations, e.actions, e.rewards, e.terminations, e.truncations)
                for e in source.iterate_episodes()]
    meta = read_metadata(hopper_random_dataset)
    dataset_id = "offline/robot-v0"
    write_dataset(dataset_id, "Hopper-v5", episodes, ref_min_score=meta["ref_min_score"],
                  ref_max_score=meta["ref_max_score"], overwrite=True)
    path = get_dataset_path(dataset_id) / "data" / "metadata.json"
    metadata = json.loads(path.read_text())
    spec = json.loads(metadata["env_spec"])
    spec.update(id=NOT_INSTALLED, entry_point="not_installed_robots.envs:Robot")
    metadata["env_spec"] = json.dumps(spec)
    path.write_text(json.dumps(metadata))
    return dataset_id


def test_offline_selection_tunes_a_dataset_whose_env_is_not_installed(unregistered_dataset, tiny_job, service_env):
    assert NOT_INSTALLED not in gym.registry
    with pytest.raises(DatasetError, match="cannot be created"):
        load_offline_data(unregistered_dataset)  # nothing could run an episode of it
    job = tiny_job(trials=2, dataset={"id": unregistered_dataset}, selection="offline",
                   offline_evaluation={"steps": 40}, **ONE_TRIAL_AT_A_TIME)
    done = rlservice("tune", "run", job, "--name", "offline", "--json", env=service_env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = last_json(done.stdout)

    assert out["selection"] == "offline"
    trials = out["trials"]
    assert [t["status"] for t in trials] == ["completed"] * 2
    for t in trials:  # one FQE of the final policy, and that is the trial's score
        assert t["score"] == t["final_score"] == t["fqe_score"] and t["steps"] == 200
        assert t["score_interval"]["unit"] == "FQE critics"  # its interval is over FQE's members, no episode ran
        assert "FQE critics)" in Interval(**t["score_interval"]).text()
    best = max(trials, key=lambda t: t["fqe_score"])
    assert out["best"]["trial"] == best["trial"]

    uri = service_env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    version = client.get_model_version(out["mlflow"]["model"], out["mlflow"]["version"])
    assert version.tags["selection"] == "offline" and version.tags["run_id"] == best["run_id"]
    assert float(version.tags["fqe_score"]) == pytest.approx(best["fqe_score"])
    assert float(version.tags["fqe_return"]) == pytest.approx(best["fqe_return"])
    for run in child_runs(uri, out["mlflow"]["parent_run_id"]):
        assert {"fqe_score", "fqe_return"} <= set(run.data.metrics) and "normalized_score" not in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "fqe_score")] == [200]
        # what the score's interval rests on is named for what it is: FQE's critics, not episodes
        assert run.data.metrics["score_fqe_critics"] == 5 and "score_episodes" not in run.data.metrics
    experiment = client.get_experiment(client.get_run(out["mlflow"]["parent_run_id"]).info.experiment_id).name
    listed = rlservice("best", "--experiment", experiment, env=service_env, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = [line for line in listed.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2 and all("FQE critics)" in row and " ep)" not in row for row in rows), listed.stdout


def test_offline_selection_with_asha_is_refused_in_one_line(tiny_job, service_env):
    job = tiny_job(selection="offline", offline_evaluation={"steps": 40})  # TINY's scheduler is ASHA
    done = rlservice("tune", "run", job, env=service_env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: selection=offline with scheduler asha: ASHA needs a score at every evaluation; "
        "set offline_evaluation.every: true or scheduler.type: none"]


def test_online_selection_logs_fqe_next_to_online_scores_and_ope_quality(tiny_job, service_env, tmp_path):
    job = tiny_job(trials=2, offline_evaluation={"steps": 40}, **ONE_TRIAL_AT_A_TIME)
    done = rlservice("tune", "run", job, "--name", "ope", env=service_env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Spearman rank correlation of fqe_score with the final online score" in done.stdout

    uri = service_env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "tags.`rlservice.kind` = 'job'")[0]
    trial_runs = child_runs(uri, parent.info.run_id)
    assert len(trial_runs) == 2
    for run in trial_runs:
        assert {"fqe_score", "normalized_score"} <= set(run.data.metrics)
    table = client.download_artifacts(parent.info.run_id, "ope_quality.csv", str(tmp_path))
    rows = list(csv.DictReader(open(table)))
    values = {(r["quantity"], r["trial"]): r["value"] for r in rows}
    online = {t: float(v) for (q, t), v in values.items() if q == "online_score"}
    fqe = {t: float(v) for (q, t), v in values.items() if q == "fqe_score"}
    assert len(online) == len(fqe) == 2
    # Two trials: Spearman is +1 when FQE orders them as the online scores do, else -1; regret by hand.
    (a, b) = sorted(online)
    same_order = (online[a] - online[b]) * (fqe[a] - fqe[b]) > 0
    assert float(values[("spearman", "")]) == pytest.approx(1.0 if same_order else -1.0)
    pick = max(fqe, key=fqe.get)
    assert float(values[("regret", "")]) == pytest.approx(max(online.values()) - online[pick])
    assert parent.data.metrics["ope_regret"] == pytest.approx(float(values[("regret", "")]))
