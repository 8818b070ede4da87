"""Faults in a tuning job: evaluations slower than training, a trial killed with SIGKILL. The
searcher and the scheduler must see what MLflow records, and no run may be left open."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tune_helpers import (
    REPO,
    child_runs,
    evaluated_steps,
    last_json,
    rlservice,
    trial_results,
    trial_runs,
)

from rlservice.runtime.evaluators import EVAL_DELAY_ENV
from rlservice.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def last_evaluation(tracking_uri, run_id):
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "normalized_score")
    last = max(history, key=lambda m: m.step)
    return last.step, last.value


def test_slow_evaluations_hold_training_back_and_each_checkpoint_holds_its_step(tiny_job, service_env, tmp_path):
    # Each evaluation takes longer than a period of training: unchecked, a trial would train to
    # the end before its first report, and the checkpoint reported at step s would hold a later step.
    # One trial at a time, as in test_tune_local: ASHA's decisions depend on the seeded scores alone.
    job = tiny_job(trials=4, steps=400, eval_every=100, max_concurrent=1,
                   resources={"cpus": 0.5, "evaluators": 1, "evaluator_cpus": 0.5})
    env = {**service_env, EVAL_DELAY_ENV: "1"}
    done = rlservice("tune", "run", job, "--name", "slow-evals", "--json", env=env, timeout=280)
    assert done.returncode == 0, done.stderr[-4000:]
    out = last_json(done.stdout)
    uri = service_env["MLFLOW_TRACKING_URI"]

    results = trial_results(tmp_path / "tune" / "slow-evals")
    assert len(results) == 4
    assert any(t["status"] == "early-stopped" for t in out["trials"]), "ASHA stopped no trial"
    for reports in results.values():
        for r in reports:  # never more than one period of training past the evaluation it reports
            assert r["step"] <= r["trained_steps"] <= r["step"] + 100, reports
    for trial in out["trials"]:
        # Stopped at `steps`, the trial had trained at most one period further (its logged metrics say how far).
        trained = max(m.step for m in MlflowClient(uri).get_metric_history(trial["run_id"], "critic_loss"))
        assert trained <= trial["steps"] + 100, trial
        # The last score the searcher saw is the last evaluation of the trial's MLflow run.
        assert last_evaluation(uri, trial["run_id"]) == (trial["steps"], pytest.approx(trial["final_score"]))
        # The checkpoint reported with it holds that step: learner, and history up to it.
        state, _, info = load_checkpoint(Path(trial["checkpoint"]).parent / "latest")
        assert state["learner"]["steps"] == info["step"] == trial["steps"]
        assert [h["step"] for h in info["history"]] == evaluated_steps(uri, trial["run_id"])


def descendants(pid):
    """Pids of the processes below `pid` (read from /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def trial_process(driver_pid):
    for pid in descendants(driver_pid):
        try:
            if b"ImplicitFunc.train" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def test_a_killed_trial_leaves_no_run_open(tiny_job, service_env):
    # One evaluation, at the end: the trial is killed before it has any checkpoint.
    job = tiny_job(trials=1, steps=600, eval_every=600, scheduler={"type": "none"}, max_failures=2,
                   resources={"cpus": 1, "evaluators": 0})
    uri = service_env["MLFLOW_TRACKING_URI"]
    driver = subprocess.Popen([sys.executable, "-m", "rlservice.cli", "tune", "run", str(job), "--name", "killed", "--json"],
                              env=service_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, killed = time.monotonic() + 200, None
        while killed is None and time.monotonic() < deadline:
            assert driver.poll() is None, "the job ended before its trial could be killed"
            training = [r for r in trial_runs(uri) if r.info.status == "RUNNING" and "critic_loss" in r.data.metrics]
            pid = trial_process(driver.pid) if training else None
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed = training[0].info.run_id
            time.sleep(0.2)
        assert killed, "the trial never started training"
        stdout, stderr = driver.communicate(timeout=200)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr[-4000:]
    out = last_json(stdout)
    [trial] = out["trials"]
    assert trial["status"] == "completed" and trial["failures"] == 1

    runs = {r.info.run_id: r for r in child_runs(uri, out["mlflow"]["parent_run_id"])}
    assert len(runs) == 2 and trial["run_id"] in runs and killed in runs
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    assert runs[killed].info.status == "KILLED" and runs[killed].data.tags["status"] == "interrupted"
    assert runs[killed].data.tags["continued_in"] == trial["run_id"]
    assert runs[trial["run_id"]].info.status == "FINISHED"
