"""The CLI's live table of a tuning job: a Tune callback that says one line per trial event
(trial, status, step, this evaluation's score, the best so far, knobs) through `say`."""

from __future__ import annotations

from typing import Callable

from ray import tune

HEADER = f"{'trial':<6} {'status':<14} {'step':>7} {'score':>8} {'best':>8}  knobs"


class LiveTable(tune.Callback):
    def __init__(self, say: Callable[[str], None]):
        self.say: Callable[[str], None] | None = say
        self.best: dict[str, float] = {}
        self.header = False

    def __getstate__(self):  # pickled with Tune's state: restored inert (a resumed job brings its own)
        return {"say": None, "best": {}, "header": True}

    def line(self, trial, status: str, result: dict | None = None) -> None:
        if self.say is None:
            return
        if not self.header:
            self.say(HEADER)
            self.header = True
        number, _, knobs = str(trial).partition(" ")  # trial names are `t07 rs=28 nc=4` (runtime.tuner)
        result = trial.last_result if result is None else result
        score = result.get("score")
        if score is not None and result.get("status") != "diverged":
            self.best[trial.trial_id] = max(score, self.best.get(trial.trial_id, score))
        self.say(f"{number:<6} {status:<14} {_cell(result.get('step')):>7} {_cell(score):>8} "
                 f"{_cell(self.best.get(trial.trial_id)):>8}  {knobs}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.line(trial, "started", {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.line(trial, result.get("status", "running"), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get("status") not in ("completed", "diverged"):
            self.line(trial, "stopped (ASHA)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.line(trial, "retrying")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.line(trial, "failed")


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
