"""A tuning job stopped by SIGTERM resumes with `rlservice tune resume`: finished trials are not run
again, an unfinished one continues from its checkpoint, and the searcher keeps its observations."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis
from tune_helpers import (
    REPO,
    child_runs,
    evaluated_steps,
    finished_runs,
    last_json,
    rlservice,
    trial_results,
    trial_runs,
)

from rlservice.runtime.tuner import saved_study

pytestmark = pytest.mark.slow


def trial_states(experiment_dir):
    """{trial directory name: (Tune status, last reported step)} from the saved experiment state."""
    try:
        trials = ExperimentAnalysis(str(experiment_dir)).trials
    except Exception:  # not written yet
        return {}
    return {Path(t.path).name: (t.status, (t.last_result or {}).get("step", 0)) for t in trials}


def wait_for_progress(driver, tracking_uri, evaluated, timeout=200):
    """Until one trial has finished and another has been evaluated at steps within `evaluated`
    (a range): part way, with a checkpoint behind it. Watched in MLflow: Tune writes its own
    state to the storage only now and then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the job ended before it could be interrupted"
        runs = trial_runs(tracking_uri)
        running = [r for r in runs if r.info.status == "RUNNING" and "normalized_score" in r.data.metrics]
        if finished_runs(runs) and any(evaluated_steps(tracking_uri, r.info.run_id)[-1] in evaluated for r in running):
            time.sleep(1)  # a trial ends its run (status tag first) just before its last report: let Tune take that report
            return
        time.sleep(0.3)
    raise AssertionError("no trial finished while another was half way")


def test_interrupted_job_resumes_without_rerunning_finished_trials(tiny_job, service_env, tmp_path):
    job = tiny_job(trials=3, steps=1000, scheduler={"type": "none"}, max_concurrent=2,
                   resources={"cpus": 1, "evaluators": 0})
    experiment_dir = tmp_path / "tune" / "resumable"
    driver = subprocess.Popen([sys.executable, "-m", "rlservice.cli", "tune", "run", str(job), "--name", "resumable", "--json"],
                              env=service_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_progress(driver, service_env["MLFLOW_TRACKING_URI"], evaluated=range(200, 501))
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "rlservice tune resume resumable" in errors[0], stderr[-3000:]
    assert not [r for r in trial_runs(service_env["MLFLOW_TRACKING_URI"]) if r.info.status == "RUNNING"]

    before, states = trial_results(experiment_dir), trial_states(experiment_dir)
    finished = {name: results for name, results in before.items() if states[name][0] == "TERMINATED"}
    partial = {name: step for name, (status, step) in states.items() if status != "TERMINATED" and step > 0}
    assert finished and partial, states
    observed = len(saved_study(experiment_dir).trials)

    resumed = rlservice("tune", "resume", "resumable", "--json", env=service_env, timeout=280)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    out = last_json(resumed.stdout)
    assert len(out["trials"]) == 3 and {t["status"] for t in out["trials"]} == {"completed"}
    assert out["searcher_observations_at_start"] >= len(finished)

    after = trial_results(experiment_dir)
    for name, results in finished.items():
        assert after[name] == results, f"finished trial {name} ran again"
    for name in partial:
        # Continued from its last checkpoint, not from the start (it may repeat the evaluations
        # reported after that checkpoint, which Tune had not committed when it was stopped).
        resumed = [r["step"] for r in after[name][len(before[name]):]]
        assert after[name][: len(before[name])] == before[name]
        assert resumed[0] > 100 and resumed == sorted(set(resumed)) and resumed[-1] == 1000, (before[name], resumed)

    # The searcher came back with the study it had: its earlier trials are in the final study.
    study = saved_study(experiment_dir)
    assert len(study.trials) == 3 and len(study.trials) >= observed
    params = [t.params for t in study.trials]
    for results in finished.values():
        assert results[-1]["config"] in params

    # What the searcher saw last for every trial is the last evaluation of its MLflow run, step for step.
    client = MlflowClient(service_env["MLFLOW_TRACKING_URI"])
    for trial in out["trials"]:
        last = max(client.get_metric_history(trial["run_id"], "normalized_score"), key=lambda m: m.step)
        assert (trial["steps"], trial["final_score"]) == (last.step, pytest.approx(last.value)), trial
        [value] = [t.value for t in study.trials if t.params == trial["config"]]
        assert value == pytest.approx(last.value)

    runs = child_runs(service_env["MLFLOW_TRACKING_URI"], out["mlflow"]["parent_run_id"])
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["tune_trial"], []).append(run.data.tags.get("status"))
    assert len(by_trial) == 3
    for name in finished:
        # directory run_trial_<id>_<number>_<knobs>, run name `t<number> <knobs>` (runtime.tuner)
        trial = next(t for t in by_trial if t.split()[0] == f"t{int(name.split('_')[3]):02d}")
        assert by_trial[trial] == ["completed"], json.dumps(by_trial)
    for statuses in by_trial.values():
        assert statuses.count("completed") == 1 and set(statuses) <= {"completed", "interrupted"}
