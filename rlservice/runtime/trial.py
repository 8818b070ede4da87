"""One Tune trial: a Trainer on the trial's knobs, evaluated by Ray actors, reporting to Tune and MLflow.

The learner is a single process and stays in the trial itself. After every evaluation the trial
reports `score` (mean normalised score over its seeds) and a checkpoint directory holding
`best/` (the best evaluation's weights) and `latest/` (where a retry resumes: the state of the
step just evaluated, although training has moved on while the evaluation ran; after the last
evaluation, the final weights, which the trial's run logs as `final_checkpoint`). A retry reads
`tune.get_checkpoint()` and continues from `latest/`, so the scores the searcher and the
scheduler see are those of one unbroken run.

With `selection: offline` the evaluations are Fitted Q Evaluations (`training/fqe.py`) in the
trial's own process, and nothing creates an environment; with `offline_evaluation` under online
selection the final policies are also scored by FQE (`fqe_score` next to the online score).

Whatever a trial must record, it records before its last report: the scheduler may stop the
trial at any report, and nothing after that report would run.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from rlservice.config.tuning import TuningJob
from rlservice.data.minari_io import OfflineData
from rlservice.runtime.evaluators import RayEvaluator
from rlservice.tracking.tuning_runs import JobTracking, TrialTracking
from rlservice.training.fqe import FQEEvaluator, fit_fqe
from rlservice.training.trainer import InlineEvaluator, Trainer

# The score a diverged trial reports: below any normalised score a real policy reaches
# (that would be a return 10x the expert-random gap under the random policy's), so ASHA
# stops it and TPE ranks its knobs last.
DIVERGED_SCORE = -1000.0


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a job shares (passed with tune.with_parameters)."""

    job: TuningJob
    tracking: JobTracking


def scratch_root(job_name: str) -> Path:
    """Where the trials of a job keep their run directories on a node. Not in Tune's trial
    directory: Tune syncs that one while the trainer writes into it. The trial removes its own;
    the driver removes what trials that were killed left behind on its node."""
    return Path(tempfile.gettempdir()) / "rlservice-trials" / job_name


def run_trial(config: dict[str, Any], setup: TrialSetup, data: OfflineData) -> None:
    """`data` is the job's dataset, read by the driver and passed through Ray's object store."""
    torch.set_num_threads(max(1, int(setup.job.resources.cpus)))
    context = tune.get_context()
    scratch = scratch_root(context.get_experiment_name()) / context.get_trial_id()
    shutil.rmtree(scratch, ignore_errors=True)  # left by an attempt that was killed
    try:
        _train(config, setup, data, scratch / "run")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train(config: dict[str, Any], setup: TrialSetup, data: OfflineData, run_dir: Path) -> None:
    job = setup.job
    trainer = _trainer(job, config, data, run_dir)
    node_id = ray.get_runtime_context().get_node_id()
    tracking = TrialTracking.open(setup.tracking, run_dir, tune.get_context().get_trial_name(), config, trainer.config,
                                  action_dim=int(trainer.data.actions.shape[1]), node_id=node_id,
                                  digest=trainer.data.digest)
    reporter = _Reporter(job, trainer, tracking, node_id)
    evaluator = _evaluator(job, trainer)
    try:
        result = trainer.run(evaluator, on_log=reporter.on_log, on_eval=reporter.on_eval, progress=False)
    finally:
        if isinstance(evaluator, RayEvaluator):
            evaluator.close()
    if result.status == "diverged":
        tracking.finish("diverged", trainer.history, run_dir / "best")
        tune.report(reporter.metrics(result.steps, DIVERGED_SCORE, status="diverged"))
    elif not reporter.reported:  # resumed after its last evaluation: only the final report was missing
        tracking.finish("completed", trainer.history, run_dir / "best", run_dir / "latest")
        reporter.report(trainer.history[-1], "completed")


def _trainer(job: TuningJob, config: dict[str, Any], data: OfflineData, run_dir: Path) -> Trainer:
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry: continue where the last report left off
        with checkpoint.as_directory() as saved:
            shutil.copytree(saved, run_dir, dirs_exist_ok=True)
        return Trainer.from_checkpoint(run_dir / "latest", run_dir, data=data)
    return Trainer(job.run_config(config, action_dim=data.actions.shape[1]), run_dir, data=data)


def _evaluator(job: TuningJob, trainer: Trainer):
    t, d, a = trainer.config.train, trainer.data, trainer.config.agent
    if job.offline:  # no environment: FQE scores the policies, in the trial's process
        return FQEEvaluator(d, a.discount, job.offline_evaluation.steps, t.seed, t.device)
    if job.resources.evaluators == 0:
        return InlineEvaluator(d.env_id, t.eval_episodes, t.seed, d.ref_min_score, d.ref_max_score)
    return RayEvaluator(
        job.resources.evaluators, job.resources.evaluator_cpus, d.env_id, t.eval_episodes, t.seed,
        d.ref_min_score, d.ref_max_score, (a.actor_hidden, a.actor_layers, a.actor_layernorm),
    )


class _Reporter:
    """Trainer callbacks -> MLflow metrics and Tune reports."""

    def __init__(self, job: TuningJob, trainer: Trainer, tracking: TrialTracking, node_id: str):
        self.job, self.trainer, self.tracking, self.node_id = job, trainer, tracking, node_id
        self.reported = False

    def on_log(self, step: int, logged: dict[str, float]) -> None:
        self.tracking.log_metrics(step, {k: float(v) for k, v in logged.items()})

    def on_eval(self, step: int, record: dict[str, Any]) -> None:
        final = step >= self.job.steps
        if self.job.offline:  # the evaluation was FQE: log it under its own names
            record = {**record, "fqe_score": record["normalized_score"], "fqe_return": record["return_mean"]}
            logged = {"fqe_score": record["fqe_score"], "fqe_score_std": record["normalized_score_std"],
                      "fqe_return": record["fqe_return"], "fqe_return_std": record["return_std"]}
        else:
            if final and self.job.offline_evaluation is not None:
                record = {**record, **self.fqe_of_policies()}
            logged = {k: v for k, v in record.items() if k != "step"}
        self.tracking.log_metrics(step, logged)  # numbers only: the per-episode lists stay out
        self.trainer.save_evaluated("latest")  # the state of `step`, not of the step training has reached
        if final:
            self.tracking.finish("completed", self.trainer.history, self.trainer.run_dir / "best",
                                 self.trainer.run_dir / "latest")
        self.report(record, "completed" if final else "running")

    def report(self, record: dict[str, Any], status: str) -> None:
        metrics = self.metrics(record["step"], record["normalized_score"], status)
        metrics.update(score_std=record["normalized_score_std"], return_mean=record["return_mean"])
        metrics.update({k: record[k] for k in ("fqe_score", "fqe_return") if k in record})
        self.reported = True
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(self.trainer.run_dir))

    def fqe_of_policies(self) -> dict[str, float]:
        """FQE of the current policies (the final ones), averaged over the trial's seeds."""
        t, a = self.trainer.config.train, self.trainer.config.agent
        estimates = [fit_fqe(p, self.trainer.data, discount=a.discount, steps=self.job.offline_evaluation.steps,
                             seed=t.seed, device=t.device) for p in self.trainer.policies()]
        return {"fqe_score": float(np.mean([e.fqe_score for e in estimates])),
                "fqe_return": float(np.mean([e.fqe_return for e in estimates]))}

    def metrics(self, step: int, score: float, status: str) -> dict[str, Any]:
        """`score` is the search objective (this evaluation); `best_score` is the evaluation whose
        weights the checkpoint's best/ holds."""
        best = max(self.trainer.history, key=lambda h: h["normalized_score"], default=None)
        return {
            "step": step,
            "trained_steps": self.trainer.learner.steps,  # where training is while `step` is reported
            "score": score,
            "best_score": best["normalized_score"] if best else None,
            "best_score_std": best["normalized_score_std"] if best else None,
            "best_episode_scores": best.get("episode_scores") if best else None,
            "selection_seeds": sorted({s for h in self.trainer.history for s in h.get("episode_seeds", ())}),
            "status": status,
            "node_id": self.node_id,
            "mlflow_run_id": self.tracking.run_id,
        }
