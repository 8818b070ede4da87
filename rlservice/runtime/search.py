"""The searcher and the scheduler of a tuning job: Optuna's TPE through Ray Tune, ASHA on the score.

The objective is `score`: the normalised score (mean over the trial's seeds) at each evaluation,
reported against `step` (gradient steps), which is ASHA's clock.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from rlservice.config.tuning import SearchDim, TuningJob

METRIC, MODE, CLOCK = "score", "max", "step"


class DefineByRun:
    """Samples one trial's knobs, each only where it has an effect (TuningJob.applies).

    A class rather than a closure: Ray pickles the searcher, space included, to resume a job;
    a closure would not pickle and the searcher's observations would be lost on resume.
    """

    def __init__(self, job: TuningJob, base_agent: dict[str, Any]):
        self.job = job
        self.base_agent = base_agent
        self.order = job.search_order()

    def __call__(self, trial: optuna.Trial) -> None:
        sampled: dict[str, Any] = {}
        for knob in self.order:
            if self.job.applies(knob, sampled, self.base_agent):
                sampled[knob] = _suggest(trial, knob, self.job.search_space[knob])


def _suggest(trial: optuna.Trial, knob: str, dim: SearchDim) -> Any:
    if dim.type == "choice":
        return trial.suggest_categorical(knob, dim.values)
    if dim.type == "int":
        return trial.suggest_int(knob, int(dim.low), int(dim.high))
    return trial.suggest_float(knob, dim.low, dim.high, log=dim.type == "loguniform")


def searcher(job: TuningJob) -> ConcurrencyLimiter:
    """TPE over the job's space (multivariate and grouped: it models conditional spaces jointly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=job.sampler.startup_trials, multivariate=True, group=True, seed=job.seed
        )
    space = DefineByRun(job, job.run_config().agent.model_dump())
    optuna_search = OptunaSearch(space=space, metric=METRIC, mode=MODE, sampler=sampler)
    return ConcurrencyLimiter(optuna_search, max_concurrent=job.max_concurrent)


def scheduler(job: TuningJob) -> TrialScheduler:
    if job.scheduler.type == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=CLOCK,
        metric=METRIC,
        mode=MODE,
        max_t=job.steps,
        grace_period=job.scheduler.grace_period,
        reduction_factor=job.scheduler.reduction_factor,
    )
