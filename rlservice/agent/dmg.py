"""DMG (Mao et al., NeurIPS 2024): doubly mild generalisation.

Mild generalisation propagation: the bootstrap mixes the policy's value with the in-sample
maximum V(s') learnt by expectile regression, y = c r + gamma (1 - done) (lambda Q' + (1 -
lambda) V). Mild action generalisation: the actor's behaviour-cloning term is weighted by
clipped exponentiated advantages, so it imitates good dataset actions more than bad ones.
"""

from __future__ import annotations

import torch


def mixed_bootstrap(q_next: torch.Tensor, v_next: torch.Tensor | None, lam: float) -> torch.Tensor:
    """lambda * Q'(s', a') + (1 - lambda) * V(s'); lambda = 1 is TD3's target, 0 is IQL's."""
    if lam == 1.0:
        return q_next
    if lam == 0.0:
        return v_next
    return lam * q_next + (1.0 - lam) * v_next


def expectile_loss(u: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|tau - 1[u < 0]| * u^2) over the batch (last dim): [K, B] -> [K]."""
    weight = torch.where(u < 0, 1.0 - expectile, expectile)
    return (weight * u.square()).mean(dim=-1)


def advantage_weights(advantage: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    """w = min(exp(temperature * A), max_weight), with no gradient."""
    return torch.exp(temperature * advantage.detach()).clamp(max=max_weight)


def finetune_decay(step: int, lam0: float, nu0: float, lam_end: float = 0.5, nu_end: float = 0.005) -> tuple[float, float]:
    """DMG's online schedule (official train_finetune.py): every 1000 gradient steps decay *= 0.99,
    and lambda = lam_end - (lam_end - lam0) * decay,  nu = nu_end + (nu0 - nu_end) * decay, with
    nu_end an absolute value. Both move together, also when lam0 == lam_end."""
    decay = 0.99 ** (step // 1000)
    return lam_end - (lam_end - lam0) * decay, nu_end + (nu0 - nu_end) * decay
