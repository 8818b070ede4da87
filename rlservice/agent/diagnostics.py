"""The quantities the papers measure (SPEC.md, Diagnostics), computed on a fixed batch at
logging time, outside the training step."""

from __future__ import annotations

import torch

from rlservice.agent.learner import Batch, Learner


@torch.no_grad()
def diagnostics(learner: Learner, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-seed [K] tensors: Q statistics on dataset actions and on pi(s), PANI's
    ood_overestimation, PARS's dormant_ratio and Sokar's dead_units. `q_abs_max` is the largest
    |Q| of any critic of the ensemble (divergence shows in one critic before the minimum)."""
    activations: list[torch.Tensor] = []
    q_data_all = learner.critic(batch.obs, batch.actions, activations=activations)  # [K, N, B]
    q_pi_all = learner.critic(batch.obs, learner.actor(batch.obs))
    q_data, q_pi = q_data_all.min(dim=1).values, q_pi_all.min(dim=1).values
    uniform = 2 * torch.rand(batch.actions.shape, generator=generator, device=batch.actions.device) - 1
    q_uniform = learner.critic(batch.obs, uniform).min(dim=1).values
    return {
        "q_data_mean": q_data.mean(dim=-1),
        "q_data_max": q_data.max(dim=-1).values,
        "q_pi_mean": q_pi.mean(dim=-1),
        "q_pi_max": q_pi.max(dim=-1).values,
        "q_abs_max": torch.maximum(q_data_all.abs().amax(dim=(1, 2)), q_pi_all.abs().amax(dim=(1, 2))),
        "ood_overestimation": (q_uniform > q_data).float().mean(dim=-1),
        "dormant_ratio": dormant_ratio(activations, learner.seeds),
        "dead_units": dead_units(activations, learner.seeds),
    }


@torch.no_grad()
def action_diagnostics(learner: Learner, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-seed [K]: how much the critics care about the action (issue 23). `action_sensitivity`
    = mean_b(Q(s, a_data) - Q(s, a_uniform)) / mean_b |Q(s, a_data)| (Q the ensemble minimum);
    `ensemble_spread` = mean_b of the std over critics of Q_i(s, a_data); `policy_distance` =
    mean_b ||pi(s) - a_data||_2 in normalised action units."""
    q_data_all = learner.critic(batch.obs, batch.actions)
    q_data = q_data_all.min(dim=1).values
    uniform = 2 * torch.rand(batch.actions.shape, generator=generator, device=batch.actions.device) - 1
    q_uniform = learner.critic(batch.obs, uniform).min(dim=1).values
    return {
        "action_sensitivity": (q_data - q_uniform).mean(dim=-1) / q_data.abs().mean(dim=-1),
        "ensemble_spread": q_data_all.std(dim=1, unbiased=False).mean(dim=-1),
        "policy_distance": (learner.actor(batch.obs) - batch.actions).norm(dim=-1).mean(dim=-1),
    }


def dormant_ratio(activations: list[torch.Tensor], seeds: int) -> torch.Tensor:
    """PARS's dormant ratio (its Figure 7, Table 12): the fraction of hidden ReLU outputs that are
    zero, averaged over the inputs of the batch, per seed. Each activation is [K*N, B, H] (the
    critics of seed k are rows k*N..k*N+N-1)."""
    zero = [(a == 0).reshape(seeds, -1) for a in activations]  # [K, N*B*H] each
    return torch.cat(zero, dim=1).float().mean(dim=1)


def dead_units(activations: list[torch.Tensor], seeds: int) -> torch.Tensor:
    """Sokar et al.'s dead units: the fraction of hidden ReLU units that output zero for every
    input of the batch, per seed."""
    dead = [(a == 0).all(dim=1).reshape(seeds, -1) for a in activations]  # [K, N*H] each
    return torch.cat(dead, dim=1).float().mean(dim=1)


def q_bound(reward_scale: float, max_abs_reward: float, discount: float) -> float:
    """No value can legitimately exceed c * max|r| / (1 - gamma) in magnitude."""
    return reward_scale * max_abs_reward / (1.0 - discount)


def diverged(q_abs_max: torch.Tensor, losses: dict[str, torch.Tensor], limit: float) -> bool:
    """Host-side check, called every `log_every` steps (it synchronises)."""
    values = [q_abs_max] + list(losses.values())
    if not all(bool(torch.isfinite(v).all()) for v in values):
        return True
    return float(q_abs_max.max()) > limit
