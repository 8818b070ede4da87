"""A small variant of the quickstart job end to end on local Ray: TPE proposes the trials, ASHA
stops weak ones, evaluator actors score them, MLflow records every trial, the best candidates are
confirmed on fresh episodes and the best confirmed one is registered. And a job whose trials
diverge records them as such and goes on, with the CLI's own table on stdout and Ray's in a log."""

import json

import pytest
from mlflow import MlflowClient
from optuna.samplers import TPESampler
from tune_helpers import child_runs, last_json, rlservice, trial_results

from rlservice.config.tuning import CONFIRMATION_SEED_BASE
from rlservice.runtime.trial import DIVERGED_SCORE
from rlservice.runtime.tuner import saved_study

pytestmark = pytest.mark.slow

RAY_OUTPUT = ("╭", "Trial status", "Checkpoint successfully created", "Tuner.restore", "Token authentication",
              "snapshotting")


def test_quickstart_variant_searches_stops_early_and_registers_the_best(tiny_job, service_env, tmp_path):
    # One trial at a time: ASHA's decisions then depend on the (seeded) scores alone, not on
    # which trial reaches a rung first.
    job = tiny_job(trials=4, max_concurrent=1, confirm={"top_k": 2, "episodes": 3})
    done = rlservice("tune", "run", job, "--name", "e2e", "--json", env=service_env, timeout=280)
    assert done.returncode == 0, done.stderr[-4000:]
    out = last_json(done.stdout)
    assert done.stdout.count("\n") == 1  # the JSON object only: no Ray table, no warning
    assert not [marker for marker in RAY_OUTPUT if marker in done.stderr]  # they went to the job's log
    assert any(marker in open(out["output_log"]).read() for marker in RAY_OUTPUT)

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

    # Confirmation: the two best trials by selection score, at their best and final checkpoints, on
    # environment seeds that no evaluation of any trial used (as the trials report them).
    confirmed = out["confirmed"]
    top2 = sorted(trials, key=lambda t: -t["score"])[:2]
    assert sorted((k["trial"], k["checkpoint_kind"]) for k in confirmed) == sorted(
        (t["trial"], kind) for t in top2 for kind in ("best", "final"))
    selection = {s for results in trial_results(tmp_path / "tune" / "e2e").values() for s in results[-1]["selection_seeds"]}
    assert selection == {0}  # seed 0, one episode per evaluation
    for k in confirmed:
        assert k["confirmed_seeds"] == [CONFIRMATION_SEED_BASE + i for i in range(3)]
        assert not selection & set(k["confirmed_seeds"])
    best = out["best"]
    winner = max(confirmed, key=lambda k: k["confirmed"]["mean"])
    assert out["mlflow"]["version"] is not None and out["mlflow"]["best_run_id"] == best["run_id"] == winner["run_id"]
    c = MlflowClient(service_env["MLFLOW_TRACKING_URI"])
    tags = c.get_model_version(out["mlflow"]["model"], str(out["mlflow"]["version"])).tags
    assert float(tags["confirmed_score"]) == pytest.approx(winner["confirmed"]["mean"])
    assert tags["confirmed_checkpoint"] == winner["checkpoint_kind"] and tags["trials"] == "4"
    parent = c.get_run(out["mlflow"]["parent_run_id"])
    assert {"tuning_budget.csv", "tuning_budget.png"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert c.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    runs = {r.info.run_id: r for r in child_runs(service_env["MLFLOW_TRACKING_URI"], out["mlflow"]["parent_run_id"])}
    assert set(runs) == {t["run_id"] for t in trials}
    for t in trials:
        run = runs[t["run_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == t["status"]
        assert "score" in run.data.metrics and "score_ci_low" in run.data.metrics
        assert run.info.run_name == t["name"] and t["name"].startswith("t0")  # `t01 rs=12 up=on pa=4e-4 nc=2`
        assert "is_best" not in run.data.metrics


def test_diverging_trials_are_recorded_as_diverged_and_the_job_goes_on(tiny_job, service_env, tmp_path):
    """No critic survives this learning rate: both trials diverge at their first log, one after the other."""
    space = {"critic_lr": {"type": "choice", "values": [1.0e30]}, "reward_scale": {"type": "loguniform", "low": 1, "high": 10}}
    job = tiny_job(trials=2, search_space=space, max_concurrent=1, resources={"cpus": 1, "evaluators": 0})
    shown = rlservice("tune", "run", job, "--name", "diverging", env=service_env, timeout=200)
    assert shown.returncode == 0, shown.stderr[-4000:]
    # The terminal gets the CLI's live table and summary; Ray's tables and warnings go to the log it names.
    assert not [marker for marker in RAY_OUTPUT if marker in shown.stdout + shown.stderr]
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("tuning job diverging") and lines[1].startswith("warning: steps=")  # short PARS trials
    assert lines[2].split()[:5] == ["trial", "status", "step", "score", "best"]
    assert sum("diverged" in line for line in lines) >= 2 and "registered: none (no trial completed)" in lines
    log = service_env["RLSERVICE_HOME"] + "/tune-jobs/diverging/output.log"
    assert f"Ray and Tune output: {log} (--verbose shows it here)" in lines
    assert any(marker in open(log).read() for marker in RAY_OUTPUT)

    header = next(i for i, line in enumerate(lines) if "selection score [95% CI]" in line)
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["t01", "t02"]
    assert all("  diverged  " in line for line in lines[header + 1 : header + 3])
    results = trial_results(tmp_path / "tune" / "diverging").values()
    assert [r[-1]["score"] for r in results] == [DIVERGED_SCORE] * 2  # what ASHA and TPE saw
    assert [t.value for t in saved_study(tmp_path / "tune" / "diverging").trials] == [DIVERGED_SCORE] * 2
    record = json.loads(open(service_env["RLSERVICE_HOME"] + "/tune-jobs/diverging/rlservice-job.json").read())
    runs = child_runs(service_env["MLFLOW_TRACKING_URI"], record["tracking"]["parent_run_id"])
    assert sorted((r.info.status, r.data.tags["status"]) for r in runs) == [("FAILED", "diverged")] * 2
