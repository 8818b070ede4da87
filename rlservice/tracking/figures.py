"""Figures logged to MLflow: a run's learning curve and a tuning job's summary (score against
each searched knob, and Optuna's parameter importances when there is enough to estimate them).

Figures are built with matplotlib's object API (no pyplot), so nothing global is touched.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

# fANOVA on fewer trials than this says more about the noise than about the knobs.
MIN_TRIALS_FOR_IMPORTANCE = 5


def learning_curve(history: list[dict[str, Any]], title: str = "") -> Figure:
    """Normalised score (mean and +-std over seeds) at each evaluation; the best one starred."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    if history:
        steps = [h["step"] for h in history]
        mean = [h["normalized_score"] for h in history]
        std = [h.get("normalized_score_std", 0.0) for h in history]
        ax.plot(steps, mean, marker="o", markersize=3)
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25)
        best = max(range(len(mean)), key=mean.__getitem__)
        ax.plot(steps[best], mean[best], marker="*", markersize=12, color="tab:red", label=f"best {mean[best]:.1f}")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no evaluation finished", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("gradient step")
    ax.set_ylabel("normalised score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def job_summary(trials: list[dict[str, Any]], searched: list[str]) -> Figure:
    """One panel per searched knob (score of each scored trial against the knob's value) and a
    last panel with the knobs' importances, or a note saying why there are none."""
    scored = [t for t in trials if t.get("score") is not None]
    panels = len(searched) + 1
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    best = max(scored, key=lambda t: t["score"], default=None)
    for ax, knob in zip(axes, searched):
        points = [(t["config"][knob], t["score"], t is best) for t in scored if knob in t.get("config", {})]
        _scatter(ax, knob, points)
    importances = param_importances(trials, searched)
    ax = axes[-1]
    if isinstance(importances, str):
        ax.text(0.5, 0.5, importances, ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    else:
        names = list(importances)
        ax.barh(names[::-1], [importances[n] for n in names[::-1]])
        ax.set_xlabel("importance (Optuna fANOVA)")
    ax.set_title("parameter importances")
    return fig


def _scatter(ax, knob: str, points: list[tuple[Any, float, bool]]) -> None:
    values = [v for v, _, _ in points]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        xs = values
    else:  # categories (bools, strings) on evenly spaced ticks
        labels = sorted({str(v) for v in values})
        xs = [labels.index(str(v)) for v in values]
        ax.set_xticks(range(len(labels)), labels)
    ax.scatter(xs, [s for _, s, _ in points], alpha=0.7)
    for x, (_, s, is_best) in zip(xs, points):
        if is_best:
            ax.plot(x, s, marker="*", markersize=14, color="tab:red")
    if numeric and values and min(values) > 0 and max(values) / min(values) >= 100:
        ax.set_xscale("log")
    ax.set_xlabel(knob)
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)


def param_importances(trials: list[dict[str, Any]], searched: list[str]) -> dict[str, float] | str:
    """Optuna's importances of the searched knobs, estimated on a study rebuilt from the scored
    trials; a string saying why when they cannot be estimated."""
    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    scored = [t for t in trials if t.get("score") is not None and t.get("status") != "failed"]
    if len(searched) < 2:
        return "importances need at least 2 searched knobs"
    if len(scored) < MIN_TRIALS_FOR_IMPORTANCE:
        return f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE} scored trials ({len(scored)} so far)"
    distributions = {}
    for knob in searched:
        values = [t["config"][knob] for t in scored if knob in t.get("config", {})]
        if len({repr(v) for v in values}) < 2:
            continue  # a knob that never varied has no importance to estimate
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            distributions[knob] = IntDistribution(min(values), max(values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            low, high = float(min(values)), float(max(values))
            distributions[knob] = FloatDistribution(low, high, log=low > 0 and high / low >= 100)
        else:
            distributions[knob] = CategoricalDistribution(sorted({v for v in values}, key=str))
    if len(distributions) < 2:
        return "importances need at least 2 knobs that took different values"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(direction="maximize")
        for t in scored:
            params = {k: _as(distributions[k], t["config"][k]) for k in distributions if k in t["config"]}
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={k: distributions[k] for k in params}, value=float(t["score"])
            ))
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as exc:
        return f"importances could not be estimated: {exc}"
    finally:
        optuna.logging.set_verbosity(verbosity)


def _as(distribution, value):
    from optuna.distributions import FloatDistribution

    return float(value) if isinstance(distribution, FloatDistribution) else value


def tuning_budget(curve: dict[str, list[float]], confirmed: dict[str, Any] | None) -> Figure:
    """Expected best final score of n trials (with its bootstrap band) against n, and the
    registered policy's confirmed score with its interval beside it."""
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    n = curve["trials"]
    ax.plot(n, curve["expected_max"], marker="o", markersize=3, label="expected best final score of n trials")
    ax.fill_between(n, curve["low"], curve["high"], alpha=0.25, label="95% bootstrap band")
    if confirmed is not None:
        ax.axhline(confirmed["mean"], color="tab:red", label=f"registered, confirmed {confirmed['mean']:.1f}")
        ax.axhspan(confirmed["low"], confirmed["high"], color="tab:red", alpha=0.12)
    ax.set_xlabel("trials (tuning budget)")
    ax.set_ylabel("normalised score")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig
