"""PARS's didactic experiment (Kim et al. 2025, Figure 5): fit Q(x) = c * ||x|| on the disc of
radius 0.5 and look at the predictions on the ring 0.5 < ||x|| <= 1, outside the data.

The paper reports that with LayerNorm a larger reward scale makes the extrapolation lower
(relative to c), and that without LayerNorm the network overshoots the in-data maximum."""

import math

import pytest
import torch

from rlservice.agent.networks import BatchedMLP


def uniform_annulus(n, r_min, r_max, g):
    r = torch.sqrt(r_min**2 + (r_max**2 - r_min**2) * torch.rand(n, generator=g))
    theta = 2 * math.pi * torch.rand(n, generator=g)
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)


def ring_prediction(layernorm: bool, c: float, steps: int = 1500, seed: int = 0) -> torch.Tensor:
    """Predictions / c on the ring, after fitting a 3-hidden-layer 256-unit ReLU MLP on the disc."""
    torch.manual_seed(seed)
    net = BatchedMLP(1, 2, 256, 3, 1, layernorm)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = uniform_annulus(256, 0.0, 0.5, g)
        loss = (net(x[None])[0, :, 0] - c * x.norm(dim=-1)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() / c**2 < 1e-3, "the fit on the data must be good for the comparison to mean anything"
    with torch.no_grad():
        return net(uniform_annulus(4096, 0.5, 1.0, g)[None])[0, :, 0] / c


@pytest.mark.slow
def test_layernorm_with_large_reward_scale_extrapolates_lower_and_plain_mlp_overshoots():
    ln_c1 = ring_prediction(layernorm=True, c=1.0)
    ln_c100 = ring_prediction(layernorm=True, c=100.0)
    plain_c100 = ring_prediction(layernorm=False, c=100.0)
    in_data_max = 0.5
    assert ln_c100.mean() < ln_c1.mean() - 0.1
    assert ln_c100.max() < in_data_max * 1.1  # stays near the data's maximum
    assert plain_c100.max() > in_data_max * 1.5  # keeps growing outside the data
    assert plain_c100.mean() > ln_c100.mean() + 0.1
