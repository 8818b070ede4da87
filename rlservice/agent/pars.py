"""PARS (Kim et al., ICML 2025): reward scaling with LayerNorm critics, and a penalty on
infeasible actions.

Reward scaling is the `c` in the critic target (see `learner.critic_target`); LayerNorm is a
network switch (`critic_layernorm`). What is left is the PA term: actions far outside the
feasible box [-1, 1]^d are pushed towards the lowest value any policy can earn, so that the
critic's extrapolation slopes downward away from the data instead of growing without bound.
"""

from __future__ import annotations

import torch


def infeasible_actions(shape: tuple[int, ...], distance: float, generator: torch.Generator, device) -> torch.Tensor:
    """Each dimension uniform on [-2L, -L] or [L, 2L], the side chosen with probability 1/2."""
    magnitude = distance * (1.0 + torch.rand(shape, generator=generator, device=device))
    side = torch.rand(shape, generator=generator, device=device) < 0.5
    return torch.where(side, -magnitude, magnitude)


def q_min(reward_scale: float, reward_min: float, discount: float) -> float:
    """The value of receiving the smallest (scaled) reward forever: c * r_min / (1 - gamma)."""
    return reward_scale * reward_min / (1.0 - discount)


def pa_loss(q_infeasible: torch.Tensor, q_floor: float) -> torch.Tensor:
    """L_PA = sum_i mean((Q_i(s, a_inf) - Q_min)^2); q_infeasible [K, N, B] -> per seed [K]."""
    return (q_infeasible - q_floor).square().mean(dim=-1).sum(dim=-1)
