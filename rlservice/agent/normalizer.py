"""The observation normaliser that travels with a policy (checkpoints and exported models)."""

from __future__ import annotations

import numpy as np
import torch


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
