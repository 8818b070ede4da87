"""The floating-point work of one learner step, counted from the network shapes and the losses
that the configuration switches on (what `Learner.update` actually runs).

Counting rules:
- Only matmuls are counted. A batched Linear maps x [M members, R rows, I] to [M, R, O] and
  costs 2*M*R*I*O FLOP forward (one multiply and one add per term).
- Its backward costs the same again for the weight gradient (x^T g) when the layer is trained,
  and the same again for the input gradient (g W^T) when something below the layer needs a
  gradient. A trained layer inside a network therefore costs 2x its forward in backward; the
  first layer of a network fed with data costs 1x (no input gradient); a network that is only
  differentiated through (the critic in the actor step, whose weights are frozen there) costs
  1x in every layer, its first layer included.
- A single-output head (critics, V) runs as weight^T x^T with its input gradient, an outer
  product, as a broadcast multiply (networks.BatchedLinear): the same products, counted alike.
- Elementwise work is ignored: bias adds, LayerNorm, activations, losses and noise draws are
  O(R*O) per layer, the optimiser and the target update O(I*O), against O(R*I*O) for the matmul.

What each part of the step runs (K seeds, N critics, batch B):
- value (DMG, IQL): target critics forward on (s, a) [K*N, B]; V forward and backward on s.
- critic target: target actor forward on s', then the target critics of the drawn subset
  forward on (s', a~') [K*target_subset, B] (lambda > 0); V forward on s' (lambda < 1).
- critic: forward and backward on (s, a_hat), and on (s, a_inf) for B (or `pa_samples`) more
  rows when PARS's PA term is on.
- actor, every `policy_freq` steps (so 1/policy_freq of it per step): actor forward and
  backward on s; with advantage weights, target critics forward on (s, a) and V forward on s;
  unless IQL, the critics (all N for `min`, Q_1 for `first`, `actor_q_subset` for `subset_mean`) forward on
  (s, pi(s)) and backward to the actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlservice.config.run import AgentConfig

Kind = Literal["forward", "weight_grad", "input_grad"]


@dataclass(frozen=True)
class Matmul:
    """One batched matmul of a Linear layer with `members` x [rows, in] @ [in, out] products."""

    kind: Kind
    members: int
    rows: int
    in_features: int
    out_features: int

    @property
    def flops(self) -> int:
        return 2 * self.members * self.rows * self.in_features * self.out_features


def mlp_matmuls(
    members: int, rows: int, sizes: list[int], *, train: bool, input_grad: bool = False
) -> list[Matmul]:
    """Forward (and backward, if `train` or `input_grad`) of an MLP with layer widths `sizes`.
    `train`: weight gradients are computed; `input_grad`: the gradient reaches the input."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    out = [Matmul("forward", members, rows, i, o) for i, o in layers]
    if train:
        out += [Matmul("weight_grad", members, rows, i, o) for i, o in layers]
    if train or input_grad:
        first = 0 if input_grad else 1
        out += [Matmul("input_grad", members, rows, i, o) for i, o in layers[first:]]
    return out


def step_matmuls(cfg: AgentConfig, obs_dim: int, act_dim: int, batch: int, seeds: int = 1) -> dict[str, list[Matmul]]:
    """The matmuls of each part of one step; the "actor" part runs once every `policy_freq` steps."""
    k, n = seeds, cfg.num_critics
    actor = [obs_dim] + [cfg.actor_hidden] * cfg.actor_layers + [act_dim]
    critic = [obs_dim + act_dim] + [cfg.critic_hidden] * cfg.critic_layers + [1]
    value = [obs_dim] + [cfg.critic_hidden] * cfg.critic_layers + [1]
    parts: dict[str, list[Matmul]] = {"value": [], "critic_target": [], "critic": [], "actor": []}
    if cfg.has_value_net:
        parts["value"] = mlp_matmuls(k * n, batch, critic, train=False) + mlp_matmuls(k, batch, value, train=True)
    if cfg.dmg_lambda > 0:
        parts["critic_target"] += mlp_matmuls(k, batch, actor, train=False)
        parts["critic_target"] += mlp_matmuls(k * cfg.target_subset, batch, critic, train=False)
    if cfg.dmg_lambda < 1:
        parts["critic_target"] += mlp_matmuls(k, batch, value, train=False)
    parts["critic"] = mlp_matmuls(k * n, cfg.critic_rows(batch), critic, train=True)
    parts["actor"] = mlp_matmuls(k, batch, actor, train=True)
    if cfg.awr_temperature > 0:
        parts["actor"] += mlp_matmuls(k * n, batch, critic, train=False) + mlp_matmuls(k, batch, value, train=False)
    if cfg.algorithm != "iql":
        judged = {"min": n, "first": 1}.get(cfg.actor_q, cfg.actor_q_subset)
        parts["actor"] += mlp_matmuls(k * judged, batch, critic, train=False, input_grad=True)
    return parts


def cycle_matmuls(cfg: AgentConfig, obs_dim: int, act_dim: int, batch: int, seeds: int = 1) -> list[Matmul]:
    """The matmuls of `policy_freq` consecutive steps: that many critic steps and one actor step."""
    parts = step_matmuls(cfg, obs_dim, act_dim, batch, seeds)
    return [m for name, ms in parts.items() for m in (ms if name == "actor" else ms * cfg.policy_freq)]


def step_flops(cfg: AgentConfig, obs_dim: int, act_dim: int, batch: int, seeds: int = 1) -> float:
    """Matmul FLOPs per learner step, averaged over a `policy_freq` cycle."""
    return sum(m.flops for m in cycle_matmuls(cfg, obs_dim, act_dim, batch, seeds)) / cfg.policy_freq
