"""Networks whose layers are batched over a leading *member* dimension.

A member is one independent network: one critic of the ensemble, or one seed's actor. All
members of a layer run as one batched matmul (`baddbmm` on weights shaped [M, in, out]),
so N critics x K seeds cost one kernel launch per layer instead of N*K. The hidden layers' matmuls
run on ATen's kernels or oneDNN's (`rlservice.agent.matmul`; `use_matmul` picks), with the same
parameters either way: a checkpoint does not depend on the kernel.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from rlservice.agent.matmul import Kernel, batched_linear


class _SingleOutput(torch.autograd.Function):
    """baddbmm(bias, x, weight) for weight [M, in, 1], with each product in a fast orientation.

    On CPU, bmm with a single output column is ~4x slower than the same products as
    weight^T @ x^T, and the input gradient, an outer product, ~15x slower as a bmm than as a
    broadcast multiply (measured at [10, 512, 256]); the critics' and V's heads are such layers.
    """

    @staticmethod
    def forward(ctx, bias, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias, weight.mT, x.mT).mT

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_bias = grad.sum(dim=1, keepdim=True) if ctx.needs_input_grad[0] else None
        grad_x = grad * weight.mT if ctx.needs_input_grad[1] else None
        grad_weight = torch.bmm(grad.mT, x).mT if ctx.needs_input_grad[2] else None
        return grad_bias, grad_x, grad_weight


class BatchedLinear(nn.Module):
    """M independent Linear layers: x [M, B, in] -> [M, B, out].

    Initialised like `nn.Linear` (uniform in +-1/sqrt(in) for weight and bias). `kernel` runs
    the matmuls of layers with more than one output (a single-output head runs as below).
    """

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        self.kernel: Kernel = "aten"
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if members is not None:
            weight, bias = weight[members], bias[members]
        if weight.shape[-1] == 1:
            return _SingleOutput.apply(bias, x, weight)
        return batched_linear(self.kernel, x, weight, bias)


class BatchedLayerNorm(nn.Module):
    """LayerNorm over features with a separate affine transform per member.

    The normalisation gets a constant unit scale: PyTorch's CPU kernels take a path about 2x
    faster, forward and backward, when given one (measured at [10, 512, 256]: 1.37 ms against
    0.74 ms); the per-member affine follows as one addcmul."""

    def __init__(self, members: int, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))
        self.register_buffer("unit_scale", torch.ones(features), persistent=False)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if members is not None:
            weight, bias = weight[members], bias[members]
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], self.unit_scale, eps=self.eps), weight)


class BatchedMLP(nn.Module):
    """Linear -> [LayerNorm] -> ReLU, `layers` times, then a Linear head; batched over members."""

    def __init__(self, members: int, in_features: int, hidden: int, layers: int, out_features: int, layernorm: bool):
        super().__init__()
        self.members = members
        sizes = [in_features] + [hidden] * layers
        self.hidden = nn.ModuleList(BatchedLinear(members, i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(BatchedLayerNorm(members, hidden) for _ in range(layers)) if layernorm else None
        self.head = BatchedLinear(members, hidden, out_features)

    def forward(
        self, x: torch.Tensor, members: torch.Tensor | None = None, activations: list | None = None
    ) -> torch.Tensor:
        """x [M, B, in] -> [M, B, out]. `members` picks a subset of members (then x is [len, B, in]);
        `activations`, if given, collects each hidden layer's post-ReLU output."""
        for i, linear in enumerate(self.hidden):
            x = linear(x, members)
            if self.norms is not None:
                x = self.norms[i](x, members)
            x = F.relu(x, inplace=True)  # its backward needs only its output; saves a pass over memory (~3% steps/s)
            if activations is not None:
                activations.append(x)
        return self.head(x, members)


class Actor(nn.Module):
    """Deterministic policy per seed: s [K, B, obs] -> tanh action [K, B, act] in [-1, 1]."""

    def __init__(self, seeds: int, obs_dim: int, act_dim: int, hidden: int, layers: int, layernorm: bool):
        super().__init__()
        self.net = BatchedMLP(seeds, obs_dim, hidden, layers, act_dim, layernorm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class CriticEnsemble(nn.Module):
    """N critics per seed as one module: (s [K, B, obs], a [K, B, act]) -> Q [K, N, B]."""

    def __init__(self, seeds: int, num_critics: int, obs_dim: int, act_dim: int, hidden: int, layers: int, layernorm: bool):
        super().__init__()
        self.seeds, self.num_critics = seeds, num_critics
        self.net = BatchedMLP(seeds * num_critics, obs_dim + act_dim, hidden, layers, 1, layernorm)

    def forward(
        self, obs: torch.Tensor, act: torch.Tensor, subset: torch.Tensor | None = None, activations: list | None = None
    ) -> torch.Tensor:
        """`subset` [K, m] picks m critics per seed (indices in [0, N)); the output is then [K, m, B]."""
        x = torch.cat([obs, act], dim=-1)
        k, b = x.shape[0], x.shape[1]
        per_seed = self.num_critics if subset is None else subset.shape[1]
        x = x.unsqueeze(1).expand(k, per_seed, b, x.shape[-1]).reshape(k * per_seed, b, x.shape[-1])
        members = None
        if subset is not None:
            offsets = torch.arange(k, device=subset.device).unsqueeze(1) * self.num_critics
            members = (subset + offsets).reshape(-1)
        return self.net(x, members, activations).view(k, per_seed, b)


class ValueNet(nn.Module):
    """State value per seed: s [K, B, obs] -> V [K, B]."""

    def __init__(self, seeds: int, obs_dim: int, hidden: int, layers: int):
        super().__init__()
        self.net = BatchedMLP(seeds, obs_dim, hidden, layers, 1, layernorm=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


def seed_view(net: nn.Module, seeds: int, start: int, stop: int) -> nn.Module:
    """`net` restricted to seeds [start, stop): the same modules, each parameter a view of the
    matching slice of `net`'s (members first, seed-major), so an update to `net` shows here."""
    view = copy.deepcopy(net)
    for full, part in zip(net.modules(), view.modules()):
        for name, p in full._parameters.items():
            members = p.shape[0] // seeds
            part._parameters[name] = nn.Parameter(p.detach()[start * members : stop * members], p.requires_grad)
    return view


def use_matmul(net: nn.Module, kernel: Kernel) -> nn.Module:
    """Runs every BatchedLinear of `net` on `kernel` ("aten" or "onednn"); returns `net`."""
    for module in net.modules():
        if isinstance(module, BatchedLinear):
            module.kernel = kernel
    return net

