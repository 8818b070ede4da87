"""Ray Tune for a tuning job: connect, build the Tuner, fit or restore it, read the trials back."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.experiment import Trial

from rlservice.config.tuning import TuningJob
from rlservice.data.minari_io import OfflineData
from rlservice.runtime import search
from rlservice.runtime.session import start_ray
from rlservice.runtime.trial import TrialSetup, run_trial, scratch_root
from rlservice.tracking.tuning_runs import JobTracking
from rlservice.training.intervals import EPISODES, FQE_CRITICS, score_interval


def connect() -> None:
    """Inside a Ray job (RAY_ADDRESS is set) join its cluster; else start Ray here, sized to the
    machine, on a loopback address."""
    if not start_ray():
        return
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops the job like Ctrl-C: Tune saves its state and the job can be resumed.
        # (Set after ray.init, whose own handler would abort the driver.)
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))


@contextmanager
def session():
    """Ray for the length of a job: the search and the confirmation after it share one start."""
    connect()
    try:
        yield
    finally:
        ray.shutdown()


def fit(job: TuningJob, target: JobTracking, name: str, storage: str, data: OfflineData,
        callbacks: list | None = None, verbose: int = 0) -> list[dict[str, Any]]:
    """Run the search (inside `session()`). `callbacks`: Tune callbacks (the CLI's live table);
    `verbose`: Tune's own progress output (0: none, its tables only with 1 or more)."""
    tuner = tune.Tuner(
        _trainable(job, target, data),
        tune_config=tune.TuneConfig(
            search_alg=search.searcher(job), scheduler=search.scheduler(job), num_samples=job.trials,
            reuse_actors=False, trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=job.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=verbose,
        ),
    )
    return _finish(job, name, tuner.fit().experiment_path)


def trial_name(trial: Trial) -> str:
    """`t07 rs=28 pa=4e-4 nc=4`: the trial's number and its knobs (the MLflow run's name)."""
    number = int(trial.experiment_tag.split("_", 1)[0])
    return f"t{number:02d} {knob_label(trial.config)}".strip()


def trial_dirname(trial: Trial) -> str:
    return f"run_trial_{trial.trial_id}_{trial.experiment_tag}"[:130]


def knob_label(config: dict[str, Any]) -> str:
    """Knobs by their initials (reward_scale -> rs; the full name where two share them), values short."""
    initials = {k: "".join(w[:1] for w in k.split("_")) for k in config}
    shared = {a for a in initials.values() if list(initials.values()).count(a) > 1}
    return " ".join(f"{k if initials[k] in shared else initials[k]}={_short(v)}" for k, v in config.items())


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e4):
            mantissa, exponent = f"{value:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2g}"
    return str(value)


def refit(job: TuningJob, target: JobTracking, experiment_dir: str, data: OfflineData,
          callbacks: list | None = None, verbose: int = 0) -> list[dict[str, Any]]:
    """Continue a job (inside `session()`): finished trials stay as they are; unfinished and failed
    ones resume from their last checkpoints; the searcher continues with the observations it had."""
    tuner = tune.Tuner.restore(experiment_dir, trainable=_trainable(job, target, data),
                               resume_unfinished=True, resume_errored=True)
    # The restored run config is the pickled one of the first session; this session's output
    # goes to this session's callbacks (Tune has no public way to replace them on restore).
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks, run_config.verbose = callbacks, verbose
    return _finish(job, Path(experiment_dir).name, tuner.fit().experiment_path)


def _finish(job: TuningJob, name: str, experiment_path: str) -> list[dict[str, Any]]:
    shutil.rmtree(scratch_root(name), ignore_errors=True)
    return trials(job, experiment_path)


def can_restore(experiment: str) -> bool:
    return tune.Tuner.can_restore(experiment)


def searcher_observations(experiment: str) -> int:
    """Finished trials in the Optuna study Tune saved for this job (what a resumed searcher knows);
    read from local storage only (0 for a remote URI)."""
    study = saved_study(experiment)
    return 0 if study is None else sum(t.state.is_finished() for t in study.trials)


def saved_study(experiment_dir: str | Path):
    # One file per session of the job, named by its start time; a resumed job rewrites older ones too.
    states = sorted(Path(experiment_dir).glob("searcher-state-*.pkl"))
    if not states:
        return None
    with states[-1].open("rb") as f:  # written by this job's own driver
        return pickle.load(f)["_ot_study"]


def _trainable(job: TuningJob, target: JobTracking, data: OfflineData):
    """The trial function with its resources. `with_parameters` puts `data` in Ray's object store
    once (here, on the driver's node) and every trial gets it from there, on whichever node it
    runs: no node but the driver's reads the dataset."""
    r = job.resources
    trial_bundle = {"CPU": r.cpus, **({"GPU": r.gpus} if r.gpus else {})}
    bundles = [trial_bundle] + [{"CPU": r.evaluator_cpus}] * r.evaluators
    trainable = tune.with_parameters(run_trial, setup=TrialSetup(job, target), data=data)
    return tune.with_resources(trainable, tune.PlacementGroupFactory(bundles))


def trials(job: TuningJob, experiment_path: str) -> list[dict[str, Any]]:
    """One row per trial: knobs, status (completed | early-stopped | diverged | failed | unfinished),
    its MLflow run, its best checkpoint and that checkpoint's `score` (the best evaluation; the
    search itself optimises `final_score`, the last one)."""
    return [_row(job, trial) for trial in tune.ExperimentAnalysis(experiment_path).trials]


def _row(job: TuningJob, trial: Trial) -> dict[str, Any]:
    last = trial.last_result or {}
    checkpoint = trial.checkpoint
    best = Path(checkpoint.path) / "best" if checkpoint is not None else None
    final = Path(checkpoint.path) / "latest" if checkpoint is not None else None
    episodes = last.get("best_episode_scores")
    return {
        "trial": trial.trial_id,
        "name": str(trial),  # `t07 rs=28 nc=4`, as the trial's MLflow run (and its `tune_trial` tag)
        "run_id": last.get("mlflow_run_id"),
        "status": _status(job, trial, last),
        "score": last.get("best_score"),
        "score_std": last.get("best_score_std"),
        # under offline selection the columns are the FQE ensemble's members, not episodes
        "score_interval": score_interval(episodes, unit=FQE_CRITICS if job.offline else EPISODES).to_json()
        if episodes else None,
        "final_score": last.get("score"),
        "fqe_score": last.get("fqe_score"),  # with offline_evaluation: FQE of the final policy
        "fqe_return": last.get("fqe_return"),
        "steps": last.get("step"),
        "config": dict(trial.config),
        "checkpoint": str(best) if best is not None and best.is_dir() else None,
        "final_checkpoint": str(final) if final is not None and final.is_dir() else None,
        "selection_seeds": last.get("selection_seeds") or [],
        "node_id": last.get("node_id"),
        "failures": trial.num_failures,
    }


def _status(job: TuningJob, trial: Trial, last: dict[str, Any]) -> str:
    if trial.status == Trial.ERROR:
        return "failed"
    if trial.status != Trial.TERMINATED:
        return "unfinished"
    if last.get("status") == "diverged":
        return "diverged"
    return "completed" if last.get("step", 0) >= job.steps else "early-stopped"
