"""Every MLflow call of the tuning service, in one place, on top of `runs` and `store`.

The tracking URI travels to each trial inside `JobTracking` (with the trainable's parameters),
never through Ray's MLflow callback or a worker's environment.

A trial's run is finished by the trial itself when it completes or diverges. Runs that no
process can finish any more are ended from outside: by a retried trial (the run of the attempt
that was cut short: `interrupted`) and by the driver at the end, with the status Tune gives the
trial (ASHA stopped it: `early-stopped`; it failed for good: `failed`; the scheduler stopped it
at its very last report: `completed`). When the driver stops, however it stops, it ends every
child run still RUNNING: a superseded attempt's run (a retry that found no checkpoint could not
know of it) is ended `interrupted` (KILLED) and tagged `continued_in` with the run that replaced it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from rlservice.config.run import RunConfig
from rlservice.config.tuning import TuningJob
from rlservice.tracking import runs, store

log = logging.getLogger(__name__)
RUN_FILE = runs.RUN_FILE  # in the trial's run directory, so it travels with its checkpoints


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


def start_job(uri: str, job: TuningJob, name: str, digest: str) -> JobTracking:
    """The job's parent run; `digest` is that of the data the driver loaded (`OfflineData.digest`)."""
    params = {
        "dataset.id": job.dataset.id, "dataset.digest": digest,
        "preset": job.preset or "none", "trials": job.trials, "steps": job.steps, "eval_every": job.eval_every,
        "eval_episodes": job.eval_episodes, "seeds_per_trial": job.seeds_per_trial, "scheduler": job.scheduler.model_dump(),
        "searched": ",".join(job.search_space), "fixed": job.fixed, "selection": job.selection,
        "offline_evaluation": job.offline_evaluation.model_dump() if job.offline_evaluation else "none",
    }
    parent = runs.start_job_run(uri, job.mlflow.experiment, name, params, tags={"dataset": job.dataset.id})
    return JobTracking(uri, job.mlflow.experiment, parent)


def finish_job(target: JobTracking, job: TuningJob, trials: list[dict[str, Any]], confirmed: list[dict] | None = None,
               champion: dict | None = None) -> dict[str, Any]:
    """End the runs no trial could end (ASHA stopped it, or it failed for good), then summarise
    and register (`confirmed`, `champion`: see runs.finish_job)."""
    for trial in trials:
        if trial["run_id"]:
            runs.end_run(target.uri, trial["run_id"], trial["status"], trial["score"], trial["score_std"],
                         interval=trial.get("score_interval"))
    end_superseded(target, trials)
    return runs.finish_job(
        target.uri, target.parent_run_id, trials, model_name=job.mlflow.registered_model,
        dataset_id=job.dataset.id, preset=job.preset, searched=list(job.search_space),
        confirmed=confirmed, champion=champion, version_tags=selection_tags(job, trials),
    )


def selection_tags(job: TuningJob, trials: list[dict[str, Any]]) -> dict[str, str]:
    """Tags of the registered version saying how it was selected; offline: with its FQE estimate."""
    if not job.offline:
        return {"selection": "online"}
    best = max((t for t in trials if t.get("status") in runs.RANKED and t.get("score") is not None),
               key=lambda t: t["score"], default=None)
    tags = {"selection": "offline", "fqe_steps": str(job.offline_evaluation.steps)}
    if best is not None:
        tags["fqe_score"] = repr(float(best["score"]))
        if best.get("fqe_return") is not None:
            tags["fqe_return"] = repr(float(best["fqe_return"]))
    return tags


def log_ope_quality(target: JobTracking, quality: dict[str, Any]) -> None:
    """ope_quality.csv on the job's parent run (long format: quantity, trial, value) and the
    metrics ope_spearman and ope_regret."""
    rows = [("spearman", "", quality["spearman"]), ("regret", "", quality["regret"]),
            ("online_best", quality["online_best"], ""), ("fqe_pick", quality["fqe_pick"], "")]
    for t in quality["trials"]:
        rows += [("online_score", t["trial"], t["final_score"]), ("fqe_score", t["trial"], t["fqe_score"])]
    runs.log_table(target.uri, target.parent_run_id, "ope_quality.csv", ["quantity", "trial", "value"], rows)
    c = store.client(target.uri)
    c.log_metric(target.parent_run_id, "ope_spearman", quality["spearman"])
    c.log_metric(target.parent_run_id, "ope_regret", quality["regret"])


def end_superseded(target: JobTracking, trials: list[dict[str, Any]]) -> None:
    """End every child run of the job still RUNNING as `interrupted` and tag each run of an attempt
    that another run replaced with `continued_in` (trials: rows with `name` and the `run_id` Tune
    last heard of). Called by the driver when it stops, finished or not."""
    client = store.client(target.uri)
    final = {t["name"]: t["run_id"] for t in trials if t.get("run_id")}
    try:
        parent = client.get_run(target.parent_run_id)
        children = client.search_runs([parent.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{target.parent_run_id}'", max_results=10_000)
    except MlflowException as exc:  # the store is down: the next driver of the job sweeps again
        log.warning("could not end the job's open trial runs: %s", store.error_line(exc))
        return
    for run in children:
        successor = final.get(run.data.tags.get("tune_trial"))
        replaced = successor not in (None, run.info.run_id)
        tags = {"continued_in": successor} if replaced and "continued_in" not in run.data.tags else {}
        if run.info.status == "RUNNING":
            runs.end_run(target.uri, run.info.run_id, "interrupted", tags=tags)
        else:
            for key, value in tags.items():
                client.set_tag(run.info.run_id, key, value)


class TrialTracking:
    """The trial's child run under the job's parent run. `run` is None when an earlier attempt
    already recorded the trial's outcome (Tune missed only its last report)."""

    def __init__(self, run: "runs.TrialRun | None", run_id: str):
        self.run = run
        self.run_id = run_id

    @classmethod
    def open(cls, target: JobTracking, run_dir: Path, name: str, knobs: dict[str, Any], run_config: RunConfig,
             action_dim: int, node_id: str, digest: str) -> "TrialTracking":
        """Start the trial's run; on a retry, end the run of the attempt that was cut short."""
        run_file = run_dir / RUN_FILE
        previous = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        client = store.client(target.uri)
        if previous and runs.run_ended(client, previous) and client.get_run(previous).data.tags.get("status") != "interrupted":
            return cls(None, previous)
        params = {**runs.run_params(run_config, action_dim, digest=digest), "searched": knobs}
        run = runs.TrialRun(target.uri, target.experiment, target.parent_run_id, name, params,
                                tags={"tune_trial": name, "ray_node_id": node_id})
        if previous:
            runs.supersede(target.uri, previous, run.run_id)  # ends it unless the stopped driver has
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
