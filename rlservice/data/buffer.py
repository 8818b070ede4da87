"""The replay buffer: transitions as tensors on the training device, sampled on the device."""

from __future__ import annotations

import numpy as np
import torch

from rlservice.agent.learner import Batch


class ObservationNormalizer:
    """D4RL convention: observations standardised with the dataset's mean and std. The two
    vectors travel with the policy (checkpoints and exported models) so that raw environment
    observations are normalised the same way at evaluation and deployment."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def fit(cls, observations: np.ndarray, eps: float = 1e-3) -> "ObservationNormalizer":
        return cls(observations.mean(axis=0), observations.std(axis=0) + eps)

    @classmethod
    def identity(cls, dim: int) -> "ObservationNormalizer":
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        return ((observations - self.mean) / self.std).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "ObservationNormalizer":
        return cls(state["mean"].numpy(), state["std"].numpy())


class ReplayBuffer:
    """Fixed-size offline transitions on `device`; `sample` draws [K, B] indices there, so a
    training step never copies data from the host."""

    def __init__(self, obs, actions, rewards, next_obs, dones, device: str | torch.device = "cpu"):
        as_tensor = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)  # noqa: E731
        self.obs, self.actions, self.next_obs = as_tensor(obs), as_tensor(actions), as_tensor(next_obs)
        self.rewards, self.dones = as_tensor(rewards), as_tensor(dones)
        self.size = self.obs.shape[0]

    def __len__(self) -> int:
        return self.size

    def sample(self, generator: torch.Generator, seeds: int, batch_size: int) -> Batch:
        idx = torch.randint(0, self.size, (seeds, batch_size), generator=generator, device=self.obs.device)
        return self.gather(idx)

    def gather(self, idx: torch.Tensor) -> Batch:
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx])
