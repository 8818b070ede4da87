"""A score with its 95% interval and what it rests on, from rliable's stratified bootstrap.

The scores of an evaluation form a matrix [seeds, episodes] of normalised scores. rliable
resamples runs within strata and, with `task_bootstrap`, the strata too; here an episode is a
run and a seed is a stratum, so each replicate draws seeds with replacement and episodes with
replacement within each drawn seed: the interval covers both the spread between trained seeds
and the spread between episodes. One seed gives its episode interval (never `std 0`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
REPLICATES = 2000  # enough for 95% percentile bounds to +-0.5% of the spread; fast on 2 cores
BOOTSTRAP_SEED = 0  # intervals are reproducible: the same scores give the same bounds


EPISODES, FQE_CRITICS = "ep", "FQE critics"  # what the columns of an interval's scores are


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    seeds: int
    episodes: int  # per seed
    unit: str = EPISODES  # what the columns are: episodes, or FQE's critics where FQE estimated the scores

    def to_json(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """`30.12 [28.40, 31.90] (3 seeds x 50 ep)`."""
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}] ({seeds} x {self.episodes} {self.unit})"


def score_interval(scores, replicates: int = REPLICATES, unit: str = EPISODES) -> Interval:
    """Mean and 95% stratified-bootstrap interval of `scores` [seeds, episodes] (a 1-d array is one
    seed); `unit` names what the columns are."""
    from rliable import (
        library,  # imports arch and statsmodels: only when an interval is computed
    )

    matrix = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    seeds, episodes = matrix.shape
    # rliable reads [runs, tasks]; its resampling draws from NumPy's global generator, so that
    # generator is seeded here and given back its state afterwards.
    saved = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        points, intervals = library.get_interval_estimates(
            {"scores": matrix.T}, lambda x: np.array([x.mean()]), method="percentile", task_bootstrap=True,
            reps=replicates, confidence_interval_size=CONFIDENCE,
        )
    finally:
        np.random.set_state(saved)
    low, high = intervals["scores"][:, 0]
    return Interval(float(points["scores"][0]), float(low), float(high), seeds, episodes, unit)
