"""Offline policy evaluation: Fitted Q Evaluation of a fixed policy on a dataset, no environment.

The estimate is the mean of Q(s0, pi(s0)) over the dataset's episode start states, per FQE
member (`rlservice.agent.fqe`): `fqe_return` is the mean over the members, in the
environment's reward units, discounted with the policy's training `discount`.

Normalisation. D4RL's normalised score is of an *undiscounted* return, and the dataset's
reference scores (`ref_min_score`, `ref_max_score`) are undiscounted returns. FQE estimates a
*discounted* one. `fqe_score` normalises the discounted estimate by the discounted values of
the references under one stated assumption: a reference return R earned at a steady rate over
a full episode of H steps (H = the env's `max_episode_steps`, else the dataset's longest
episode) has discounted value R * k with k = (1 - gamma^H) / ((1 - gamma) H). So

    fqe_score = 100 * (fqe_return / k - ref_min) / (ref_max - ref_min).

It is an affine function of fqe_return, so it ranks policies exactly as fqe_return does, and it
is on the normalised score's scale where episodes run their full length at a steady reward
rate (an expert in MuJoCo locomotion roughly does); policies that terminate early get a lower
fqe_score than their normalised score. Use it to compare policies on one dataset.

Interval: over the M members (independent fits), a Student-t 95% interval of their mean. It
measures how much the fit varies, not FQE's bias off the data's support.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from rlservice.agent.fqe import FQE
from rlservice.agent.policy import Policy
from rlservice.data.buffer import ReplayBuffer
from rlservice.data.minari_io import OfflineData, normalized_score
from rlservice.training.evaluation import Evaluation
from rlservice.training.intervals import FQE_CRITICS

MEMBERS = 5
FQE_HIDDEN, FQE_LAYERS = 256, 2


@dataclass(frozen=True)
class FQEEstimate:
    members: np.ndarray  # [M] each member's mean Q(s0, pi(s0)) over the start states (discounted return)
    discount: float
    horizon: int  # H of the normalisation
    ref_min_score: float
    ref_max_score: float
    start_states: int
    steps: int

    @property
    def fqe_return(self) -> float:
        return float(self.members.mean())

    @property
    def member_scores(self) -> np.ndarray:
        return np.asarray(self.normalize(self.members))

    @property
    def fqe_score(self) -> float:
        return float(self.member_scores.mean())

    def normalize(self, values):
        return fqe_normalized(values, self.discount, self.horizon, self.ref_min_score, self.ref_max_score)

    def summary(self) -> dict[str, Any]:
        low, high = member_interval(self.members)
        return {
            "fqe_return": self.fqe_return, "fqe_return_interval": [low, high],
            "fqe_score": self.fqe_score, "fqe_score_interval": [self.normalize(low), self.normalize(high)],
            "interval": f"95% Student-t over {len(self.members)} FQE members",
            "members": self.members.tolist(), "discount": self.discount, "horizon": self.horizon,
            "start_states": self.start_states, "fqe_steps": self.steps,
        }


def steady_rate_factor(discount: float, horizon: int) -> float:
    """k = (1 - gamma^H) / ((1 - gamma) H): discounted value of a return spread evenly over H steps, per unit of return."""
    return (1.0 - discount**horizon) / ((1.0 - discount) * horizon)


def fqe_normalized(values, discount: float, horizon: int, ref_min: float, ref_max: float):
    """100 * (values / k - ref_min) / (ref_max - ref_min), k = steady_rate_factor(discount, horizon)."""
    return normalized_score(np.asarray(values, np.float64) / steady_rate_factor(discount, horizon), ref_min, ref_max)


def episode_starts(data: OfflineData) -> np.ndarray:
    """Indices of the transitions that begin an episode (episodes are stored one after another)."""
    ends = np.flatnonzero((data.terminals > 0) | (data.timeouts > 0))
    return np.concatenate([[0], ends[ends + 1 < len(data.rewards)] + 1])


def horizon_of(data: OfflineData) -> int:
    """The env's max_episode_steps as the dataset records it, else its longest episode."""
    try:
        steps = json.loads(data.metadata["env_spec"]).get("max_episode_steps")
    except (KeyError, TypeError, ValueError):
        steps = None
    if steps:
        return int(steps)
    starts = episode_starts(data)
    return int(np.diff(np.append(starts, len(data.rewards))).max())


def fit_fqe(policy: Policy, data: OfflineData, *, discount: float, steps: int, members: int = MEMBERS,
            batch_size: int = 256, hidden: int = FQE_HIDDEN, tau: float = 0.005, seed: int = 0, device: str = "cpu",
            progress: bool = False) -> FQEEstimate:
    """FQE of `policy` on `data` for `steps` gradient steps of every member. Observations go
    through the policy's own normaliser (critics and actor see what the actor was trained on);
    rewards are the dataset's raw ones."""
    norm = policy.normalizer
    buffer = ReplayBuffer(norm(data.observations), data.actions, data.rewards, norm(data.next_observations),
                          data.terminals, device)
    fqe = FQE(policy.actor, data.observations.shape[1], data.actions.shape[1], members=members, discount=discount,
              hidden=hidden, layers=FQE_LAYERS, tau=tau, seed=seed, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for _ in tqdm(range(steps), desc="fqe", unit="step", disable=not progress, dynamic_ncols=True):
        fqe.update(buffer.sample(generator, members, batch_size))
    starts = episode_starts(data)
    values = fqe.values(buffer.obs[torch.as_tensor(starts, device=buffer.obs.device)]).mean(dim=1)
    return FQEEstimate(values.cpu().double().numpy(), discount, horizon_of(data), data.ref_min_score,
                       data.ref_max_score, len(starts), steps)


class FQEEvaluator:
    """The trainer's `Evaluator` without an environment: each policy scored by FQE, in this process.
    An `Evaluation`'s returns are then the members' discounted estimates and its normalised
    scores their fqe_scores."""

    def __init__(self, data: OfflineData, discount: float, steps: int, seed: int, device: str = "cpu"):
        self.data, self.discount, self.steps, self.seed, self.device = data, discount, steps, seed, device
        self._done: list[tuple[int, list[Evaluation]]] = []

    def submit(self, step: int, policies: list[Policy]) -> None:
        estimates = [fit_fqe(p, self.data, discount=self.discount, steps=self.steps, seed=self.seed, device=self.device)
                     for p in policies]
        self._done.append((step, [Evaluation(e.members, e.member_scores, unit=FQE_CRITICS) for e in estimates]))

    def finished(self) -> list[tuple[int, list[Evaluation]]]:
        done, self._done = self._done, []
        return done

    def wait(self, keep: int = 0) -> list[tuple[int, list[Evaluation]]]:
        """Every submitted FQE has finished by the time `submit` returns."""
        return self.finished()


def ope_quality(online: list[float], offline: list[float]) -> dict[str, float]:
    """How well offline scores pick among policies whose online scores are known: the Spearman
    rank correlation of the two (ties get their mean rank) and the regret of picking by the
    offline score, online[argmax online] - online[argmax offline]."""
    online_scores, offline_scores = np.asarray(online, np.float64), np.asarray(offline, np.float64)
    if len(online_scores) < 2 or len(online_scores) != len(offline_scores):
        raise ValueError(f"need two or more pairs of scores, got {len(online_scores)} and {len(offline_scores)}")
    spearman = float(stats.spearmanr(online_scores, offline_scores).statistic)
    regret = float(online_scores.max() - online_scores[int(offline_scores.argmax())])
    return {"spearman": spearman, "regret": regret, "policies": len(online_scores)}


def member_interval(samples, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean over FQE's independent critics: mean +- t * std / sqrt(n), n - 1
    degrees of freedom; a point for one critic. It measures how much the fit varies, not FQE's bias
    (scores over episodes get rliable's interval instead, training.intervals)."""
    x = np.asarray(samples, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean - half, mean + half
