"""Every MLflow call of the tuning service, in one place, on top of `runs` and `store`.

The tracking URI travels to each trial inside `JobTracking` (with the trainable's parameters),
never through Ray's MLflow callback or a worker's environment.

A trial's run is finished by the trial itself when it completes or diverges. Runs that no
process can finish any more are ended from outside: by a retried trial (the run of the attempt
that was cut short: `interrupted`) and by the driver at the end, with the status Tune gives the
trial (ASHA stopped it: `early-stopped`; it failed for good: `failed`; the scheduler stopped it
at its very last report: `completed`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlservice.config.run import RunConfig
from rlservice.config.tuning import TuningJob
from rlservice.tracking import runs, store

RUN_FILE = "mlflow-run.json"  # in the trial's run directory, so it travels with its checkpoints


@dataclass(frozen=True)
class JobTracking:
    uri: str
    experiment: str
    parent_run_id: str


def check_tracking(cli_uri: str | None) -> str:
    """Resolve the tracking URI and fail with one line if the store cannot be used."""
    uri = store.resolve_tracking_uri(cli_uri)
    store.check_reachable(uri)
    return uri


def start_job(uri: str, job: TuningJob, name: str) -> JobTracking:
    params = {
        "dataset.id": job.dataset.id, "dataset.digest": runs.dataset_digest(job.dataset.id),
        "preset": job.preset or "none", "trials": job.trials, "steps": job.steps, "eval_every": job.eval_every,
        "eval_episodes": job.eval_episodes, "seeds_per_trial": job.seeds_per_trial, "scheduler": job.scheduler.model_dump(),
        "searched": ",".join(job.search_space), "fixed": job.fixed,
    }
    parent = runs.start_job_run(uri, job.mlflow.experiment, name, params, tags={"dataset": job.dataset.id})
    return JobTracking(uri, job.mlflow.experiment, parent)


def finish_job(target: JobTracking, job: TuningJob, trials: list[dict[str, Any]], confirmed: list[dict] | None = None,
               champion: dict | None = None) -> dict[str, Any]:
    """End the runs no trial could end (ASHA stopped it, or it failed for good), then summarise
    and register (`confirmed`, `champion`: see runs.finish_job)."""
    for trial in trials:
        if trial["run_id"]:
            end_run(target, trial["run_id"], trial["status"], trial["score"], trial["score_std"],
                    interval=trial.get("score_interval"))
    return runs.finish_job(
        target.uri, target.parent_run_id, trials, model_name=job.mlflow.registered_model,
        dataset_id=job.dataset.id, preset=job.preset, searched=list(job.search_space),
        confirmed=confirmed, champion=champion,
    )


def end_run(target: JobTracking, run_id: str, status: str, score: float | None = None,
            score_std: float | None = None, tags: dict[str, str] | None = None, interval: dict | None = None) -> None:
    """End a trial's run that its own process can no longer finish (no-op if it has ended)."""
    client = store.client(target.uri)
    if _ended(client, run_id):
        return
    if score is not None:
        client.log_metric(run_id, "score", score)
        client.log_metric(run_id, "score_std", score_std or 0.0)
        for key, value in (runs.interval_metrics("score", interval) if interval else {}).items():
            client.log_metric(run_id, key, value)
    for key, value in {**(tags or {}), "status": status}.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, runs.RUN_STATUS[status])


def _ended(client, run_id: str) -> bool:
    return client.get_run(run_id).info.status != "RUNNING"


class TrialTracking:
    """The trial's child run under the job's parent run. `run` is None when an earlier attempt
    already recorded the trial's outcome (Tune missed only its last report)."""

    def __init__(self, run: "runs.TrialRun | None", run_id: str):
        self.run = run
        self.run_id = run_id

    @classmethod
    def open(cls, target: JobTracking, run_dir: Path, name: str, knobs: dict[str, Any], run_config: RunConfig,
             action_dim: int, node_id: str) -> "TrialTracking":
        """Start the trial's run; on a retry, end the run of the attempt that was cut short."""
        run_file = run_dir / RUN_FILE
        previous = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        if previous and _ended(store.client(target.uri), previous):
            return cls(None, previous)
        params = {**runs.run_params(run_config, action_dim), "searched": knobs}
        run = runs.TrialRun(target.uri, target.experiment, target.parent_run_id, name, params,
                                tags={"tune_trial": name, "ray_node_id": node_id})
        if previous:
            end_run(target, previous, "interrupted", tags={"continued_in": run.run_id})
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"run_id": run.run_id}))
        return cls(run, run.run_id)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.run:
            self.run.log_metrics(step, metrics)

    def finish(self, status: str, history: list[dict[str, Any]], best_dir: Path, final_dir: Path | None = None) -> None:
        """Log the best checkpoint and the final one (when there are), and end the run with `status`."""
        if self.run:
            if best_dir.is_dir():
                self.run.log_checkpoint(best_dir)
            if final_dir is not None and final_dir.is_dir():
                self.run.log_checkpoint(final_dir, runs.FINAL_CHECKPOINT)
            self.run.finish(status, history)
            self.run = None
