"""The replay buffer: transitions as tensors on the training device, sampled on the device."""

from __future__ import annotations

import numpy as np
import torch

from rlservice.agent.learner import Batch


class ReplayBuffer:
    """Fixed-size offline transitions on `device`; `sample` draws [K, B] indices there, so a
    training step never copies data from the host.

    Each transition is one row [s, a, r, s', done], and a sample gathers whole rows: from a
    dataset too large for the caches, each sampled transition then costs one run of adjacent
    cache lines instead of a separate memory access per field. `obs`, `actions`, ... are column
    views of the rows."""

    def __init__(self, obs, actions, rewards, next_obs, dones, device: str | torch.device = "cpu"):
        columns = [np.asarray(x, dtype=np.float32) for x in (obs, actions, rewards, next_obs, dones)]
        columns = [c.reshape(len(c), -1) for c in columns]
        self.widths = [c.shape[1] for c in columns]
        self.rows = torch.as_tensor(np.concatenate(columns, axis=1), device=device)
        self.obs, self.actions, self.rewards, self.next_obs, self.dones = self._fields(self.rows)
        self.size = self.rows.shape[0]

    def __len__(self) -> int:
        return self.size

    def _fields(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        obs, actions, rewards, next_obs, dones = rows.split(self.widths, dim=-1)
        return obs, actions, rewards.squeeze(-1), next_obs, dones.squeeze(-1)

    def sample(self, generator: torch.Generator, seeds: int, batch_size: int) -> Batch:
        idx = torch.randint(0, self.size, (seeds, batch_size), generator=generator, device=self.rows.device)
        return self.gather(idx)

    def gather(self, idx: torch.Tensor) -> Batch:
        return Batch(*self._fields(self.rows.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)))
