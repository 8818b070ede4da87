"""Policy rollouts in the dataset's environment and the D4RL normalised score."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from rlservice.agent.policy import Policy
from rlservice.data.minari_io import normalized_score
from rlservice.training.intervals import EPISODES


@dataclass(frozen=True)
class Evaluation:
    returns: np.ndarray  # one per episode
    normalized: np.ndarray  # 100 * (return - ref_min) / (ref_max - ref_min)
    seeds: tuple[int, ...] = ()  # the environment seed of each episode
    unit: str = EPISODES  # FQE_CRITICS where FQE estimated the scores: then there is one per critic

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def score(self) -> float:
        return float(self.normalized.mean())


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
