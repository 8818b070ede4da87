"""Random learner batches for the loss, seed and FLOP tests."""

import torch

from rlservice.agent.learner import Batch


def random_batch(seeds: int, batch: int, obs_dim: int, act_dim: int, seed: int = 0, done_prob: float = 0.3) -> Batch:
    """Gaussian observations and rewards, actions uniform on the box, terminations at `done_prob`."""
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(seeds, batch, obs_dim, generator=g),
        actions=torch.rand(seeds, batch, act_dim, generator=g) * 2 - 1,
        rewards=torch.randn(seeds, batch, generator=g),
        next_obs=torch.randn(seeds, batch, obs_dim, generator=g),
        dones=(torch.rand(seeds, batch, generator=g) < done_prob).float(),
    )
