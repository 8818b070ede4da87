"""A small variant of the quickstart job end to end on local Ray: TPE proposes the trials, ASHA
stops weak ones, evaluator actors score them, MLflow records every trial and the best one is
registered. And a job whose trials diverge records them as such and goes on."""

import pytest
from optuna.samplers import TPESampler
from tune_helpers import child_runs, last_json, rlservice, trial_results

from rlservice.runtime.trial import DIVERGED_SCORE
from rlservice.runtime.tuner import saved_study

pytestmark = pytest.mark.slow


def test_quickstart_variant_searches_stops_early_and_registers_the_best(tiny_job, service_env, tmp_path):
    # One trial at a time: ASHA's decisions then depend on the (seeded) scores alone, not on
    # which trial reaches a rung first.
    job = tiny_job(trials=4, max_concurrent=1)
    done = rlservice("tune", "run", job, "--name", "e2e", "--json", env=service_env, timeout=280)
    assert done.returncode == 0, done.stderr[-4000:]
    out = last_json(done.stdout)

    trials = out["trials"]
    assert len(trials) == 4
    assert {t["status"] for t in trials} <= {"completed", "early-stopped"}
    assert any(t["status"] == "early-stopped" for t in trials), "ASHA stopped no trial"
    assert any(t["status"] == "completed" for t in trials)
    for t in trials:
        assert t["checkpoint"] and t["run_id"] and t["score"] is not None
        assert t["steps"] == 400 if t["status"] == "completed" else t["steps"] < 400
        assert ("pa_alpha" in t["config"]) == t["config"]["use_pa"]  # searched only where it applies
    configs = {tuple(sorted(t["config"].items())) for t in trials}
    assert len(configs) == 4, "the searcher proposed the same configuration twice"

    # TPE proposed them: Tune's saved searcher holds an Optuna TPE study with all the trials.
    study = saved_study(tmp_path / "tune" / "e2e")
    assert isinstance(study.sampler, TPESampler)
    assert sorted(tuple(sorted(t.params.items())) for t in study.trials) == sorted(configs)

    # Evaluations (in evaluator actors, overlapping training) reached Tune in step order.
    for results in trial_results(tmp_path / "tune" / "e2e").values():
        steps = [r["step"] for r in results]
        assert steps == sorted(steps) and steps[0] == 100

    best = out["best"]
    assert best["score"] == max(t["score"] for t in trials)
    assert out["mlflow"]["version"] is not None and out["mlflow"]["best_run_id"] == best["run_id"]

    runs = {r.info.run_id: r for r in child_runs(service_env["MLFLOW_TRACKING_URI"], out["mlflow"]["parent_run_id"])}
    assert set(runs) == {t["run_id"] for t in trials}
    for t in trials:
        run = runs[t["run_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == t["status"]
        assert "score" in run.data.metrics


def test_diverging_trials_are_recorded_as_diverged_and_the_job_goes_on(tiny_job, service_env, tmp_path):
    """No critic survives this learning rate: both trials diverge at their first log, one after the other."""
    space = {"critic_lr": {"type": "choice", "values": [1.0e30]}, "reward_scale": {"type": "loguniform", "low": 1, "high": 10}}
    job = tiny_job(trials=2, search_space=space, max_concurrent=1, resources={"cpus": 1, "evaluators": 0})
    done = rlservice("tune", "run", job, "--name", "diverging", "--json", env=service_env, timeout=200)
    assert done.returncode == 0, done.stderr[-4000:]
    out = last_json(done.stdout)

    assert [t["status"] for t in out["trials"]] == ["diverged", "diverged"]
    assert [t["final_score"] for t in out["trials"]] == [DIVERGED_SCORE] * 2  # what ASHA and TPE saw
    assert [t.value for t in saved_study(tmp_path / "tune" / "diverging").trials] == [DIVERGED_SCORE] * 2
    assert out["best"] is None and out["mlflow"]["version"] is None
    runs = child_runs(service_env["MLFLOW_TRACKING_URI"], out["mlflow"]["parent_run_id"])
    assert sorted((r.info.status, r.data.tags["status"]) for r in runs) == [("FAILED", "diverged")] * 2
