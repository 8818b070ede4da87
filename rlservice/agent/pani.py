"""PANI (Oh & Lee, 2025): penalised action noise injection.

The critic is trained on perturbed dataset actions a_hat instead of a, with the target
lowered by the squared distance travelled: y_hat = y - penalty * ||a - a_hat||^2. Actions
near the data keep their value; actions far from it learn a lower one, which is what keeps
an actor maximising Q inside the data's support.
"""

from __future__ import annotations

import torch


def noisy_actions(
    actions: torch.Tensor, sigma: float, kind: str, uniform_prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Draw a_hat ~ q_sigma(. | a) for actions [..., B, d], clipped to the action box [-1, 1]."""
    shape, device = actions.shape, actions.device
    if kind == "gaussian":
        a_hat = actions + sigma * torch.randn(shape, generator=generator, device=device)
    elif kind == "laplace":
        # Inverse CDF of Laplace(0, 1): -sign(u) * log(1 - 2|u|) for u uniform on (-1/2, 1/2).
        u = torch.rand(shape, generator=generator, device=device) - 0.5
        laplace = -torch.sign(u) * torch.log1p(-2.0 * u.abs())
        a_hat = actions + sigma * laplace
    elif kind == "hybrid":
        # A scale mixture of Gaussians (per-sample scale ~ Exponential(mean sigma)) is
        # leptokurtic; with probability `uniform_prob` the sample is uniform on the box instead.
        scale = torch.empty(shape[:-1] + (1,), device=device).exponential_(1.0 / sigma, generator=generator) if sigma > 0 else 0.0
        gaussian = actions + scale * torch.randn(shape, generator=generator, device=device)
        uniform = 2.0 * torch.rand(shape, generator=generator, device=device) - 1.0
        pick_uniform = torch.rand(shape[:-1] + (1,), generator=generator, device=device) < uniform_prob
        a_hat = torch.where(pick_uniform, uniform, gaussian)
    else:
        raise ValueError(f"noise_kind={kind!r} is unknown")
    return a_hat.clamp(-1.0, 1.0)


def noise_penalty(actions: torch.Tensor, a_hat: torch.Tensor, weight: float) -> torch.Tensor:
    """weight * ||a - a_hat||^2 per sample: [..., B, d] -> [..., B]."""
    return weight * (actions - a_hat).square().sum(dim=-1)
