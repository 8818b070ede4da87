"""Policy rollouts in the dataset's environment and the D4RL normalised score."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from scipy import stats

from rlservice.agent.policy import Policy
from rlservice.data.minari_io import normalized_score


@dataclass(frozen=True)
class Evaluation:
    returns: np.ndarray  # one per episode
    normalized: np.ndarray  # 100 * (return - ref_min) / (ref_max - ref_min)
    seeds: tuple[int, ...] = ()  # the environment seed of each episode

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def score(self) -> float:
        return float(self.normalized.mean())


def mean_interval(samples, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of independent samples (episodes, FQE members): mean +- t *
    std / sqrt(n), with n - 1 degrees of freedom; a point for a single sample. The one place
    intervals of a mean are made, so another estimator (e.g. a stratified bootstrap) can replace it."""
    x = np.asarray(samples, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean - half, mean + half


def evaluate(policy: Policy, env_id: str, episodes: int, seed: int, ref_min_score: float, ref_max_score: float) -> Evaluation:
    """Run `episodes` episodes side by side in a synchronous vector env, one episode per env;
    episode i starts from environment seed `seed + i`."""
    seeds = tuple(seed + i for i in range(episodes))
    envs = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="sync")
    try:
        obs, _ = envs.reset(seed=list(seeds))
        returns = np.zeros(episodes)
        running = np.ones(episodes, dtype=bool)
        while running.any():
            obs, reward, terminated, truncated, _ = envs.step(policy.act(obs))
            returns += np.where(running, reward, 0.0)
            running &= ~(terminated | truncated)
    finally:
        envs.close()
    return Evaluation(returns, normalized_score(returns, ref_min_score, ref_max_score), seeds)
