"""The tuning-budget curve: the expected best score of n trials, for n = 1..N, from a job's N trials.

Dodge et al. (2019, "Show your work"): with the trials' scores sorted v_1 <= ... <= v_N and n
trials drawn (with replacement) from their empirical distribution, P(max <= v_i) = (i/N)^n, so

    E[max of n] = sum_i v_i * ((i/N)^n - ((i-1)/N)^n).

The band resamples the N trials (arch's IID bootstrap, which rliable builds on) and takes the
2.5 and 97.5 percentiles of the curve. A curve still rising at n = N says more trials would help.
"""

from __future__ import annotations

import numpy as np

from rlservice.training.intervals import BOOTSTRAP_SEED, CONFIDENCE, REPLICATES


def expected_max(scores) -> np.ndarray:
    """[E max of n trials for n = 1..N] over the empirical distribution of `scores` (N values)."""
    v = np.sort(np.asarray(scores, dtype=np.float64))
    count = len(v)
    n = np.arange(1, count + 1)[:, None]
    cdf = np.arange(count + 1)[None, :] / count  # P(max of one draw <= v_i), i = 0..N
    weights = cdf[:, 1:] ** n - cdf[:, :-1] ** n  # [n, i]: P(max of n draws is v_i)
    return weights @ v


def budget_curve(scores, replicates: int = REPLICATES) -> dict[str, list[float]]:
    """{trials, expected_max, low, high}: the curve and its 95% bootstrap band (no band for one trial)."""
    from arch.bootstrap import IIDBootstrap

    values = np.asarray(scores, dtype=np.float64)
    curve = expected_max(values)
    if len(values) > 1:
        band = IIDBootstrap(values, seed=BOOTSTRAP_SEED).conf_int(
            expected_max, reps=replicates, method="percentile", size=CONFIDENCE)
        low, high = band
    else:
        low = high = curve
    return {"trials": list(range(1, len(values) + 1)), "expected_max": curve.tolist(),
            "low": np.asarray(low).tolist(), "high": np.asarray(high).tolist()}
