"""Fitted Q Evaluation (Le et al. 2019; Voloshin et al. 2021): the value of a fixed policy,
learnt from a dataset alone by TD regression with the policy's own actions at the next states.

    y = r + gamma * (1 - done) * Q'_m(s', pi(s'))        L_m = mean_b (Q_m(s, a) - y)^2

`r` is the dataset's raw reward (the environment's), never a training run's scaled or shifted
one, so Q estimates the discounted return in the environment's units. pi is deterministic and
fixed (no target-policy noise: the value of pi itself is wanted). The M members are independent
fits: each is one seed-member of the project's batched `CriticEnsemble` (one critic per seed),
with its own initialisation, its own minibatches and its own target network, so their spread
measures how much the fit itself varies. Like the learner, an update is a pure function of the
state and a batch and never reads a value back to the host.
"""

from __future__ import annotations

import copy

import torch

from rlservice.agent.adam import FusedAdam
from rlservice.agent.learner import Batch
from rlservice.agent.networks import Actor, CriticEnsemble


def fqe_target(critic_target: CriticEnsemble, actor: Actor, batch: Batch, discount: float) -> torch.Tensor:
    """y [M, B] for a batch shaped [M, B, ...] (one batch per member); `actor` has one seed."""
    m, b, obs_dim = batch.next_obs.shape
    next_actions = actor(batch.next_obs.reshape(1, m * b, obs_dim)).view(m, b, -1)
    q_next = critic_target(batch.next_obs, next_actions)[:, 0]
    return batch.rewards + discount * (1.0 - batch.dones) * q_next


def fqe_loss(critic: CriticEnsemble, critic_target: CriticEnsemble, actor: Actor, batch: Batch,
             discount: float) -> torch.Tensor:
    """Per-member TD loss [M] on the dataset's actions."""
    with torch.no_grad():
        y = fqe_target(critic_target, actor, batch, discount)
    return (critic(batch.obs, batch.actions)[:, 0] - y).square().mean(dim=-1)


class FQE:
    """M critics of one fixed policy; `update` is one gradient step of every member."""

    def __init__(self, actor: Actor, obs_dim: int, act_dim: int, *, members: int, discount: float, hidden: int = 256,
                 layers: int = 2, layernorm: bool = True, lr: float = 3e-4, tau: float = 0.005, seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.actor = copy.deepcopy(actor).to(device).requires_grad_(False).eval()
        self.members, self.discount, self.tau = members, discount, tau
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.critic = CriticEnsemble(members, 1, obs_dim, act_dim, hidden, layers, layernorm).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizer = FusedAdam(self.critic.parameters(), lr)
        self._targets, self._onlines = list(self.critic_target.parameters()), list(self.critic.parameters())

    def update(self, batch: Batch) -> torch.Tensor:
        """One TD step of every member on its own batch [M, B, ...]; returns the losses [M]."""
        self.optimizer.zero_grad()
        loss = fqe_loss(self.critic, self.critic_target, self.actor, batch, self.discount)
        loss.sum().backward()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._targets, self._onlines, self.tau)
        return loss.detach()

    @torch.no_grad()
    def values(self, obs: torch.Tensor) -> torch.Tensor:
        """Q_m(s, pi(s)) [M, S] of each member at states obs [S, obs_dim]."""
        actions = self.actor(obs.unsqueeze(0))
        return self.critic(obs.expand(self.members, *obs.shape), actions.expand(self.members, *actions.shape[1:]))[:, 0]
