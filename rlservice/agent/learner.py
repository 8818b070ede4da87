"""The actor-critic learner of SPEC.md: one update covers TD3+BC, PARS, PANI, DMG, IQL and
any combination, switched by `AgentConfig`.

Every tensor carries a leading seed dimension K (K independent agents trained in lock-step
with stacked weights; K = 1 is the ordinary learner). Losses are computed per seed and
summed: the seeds share no parameters, so each one receives exactly its own gradient, and
Adam, being element-wise, keeps them independent too.

The update never reads a value back to the host: there is no `.item()`, no data-dependent
Python branch, and the returned metrics are device tensors that the caller reads when it
chooses to (every `log_every` steps).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rlservice.agent import dmg, pani, pars
from rlservice.agent.networks import Actor, CriticEnsemble, ValueNet
from rlservice.config import AgentConfig


@dataclass(frozen=True)
class Batch:
    """Transitions shaped [K, B, ...]; actions normalised to [-1, 1]; rewards raw."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor  # 1.0 where the episode terminated (never for time-outs)


@contextmanager
def frozen(net: torch.nn.Module):
    """Differentiate through `net` without computing gradients for its weights."""
    net.requires_grad_(False)
    try:
        yield
    finally:
        net.requires_grad_(True)


class Learner:
    def __init__(
        self,
        cfg: AgentConfig,
        obs_dim: int,
        act_dim: int,
        *,
        reward_min: float,
        seeds: int = 1,
        seed: int = 0,
        total_steps: int = 1_000_000,
        device: str | torch.device = "cpu",
        compile: bool = False,
    ):
        """`reward_min` is the raw minimum reward (config `reward_min` wins over it); `total_steps`
        sets the horizon of the cosine actor schedule; `compile` runs the networks through
        `torch.compile` (same results to float tolerance, a slow first few steps)."""
        self.cfg, self.seeds, self.device = cfg, seeds, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(seeds, obs_dim, act_dim, cfg.actor_hidden, cfg.actor_layers, cfg.actor_layernorm)
            self.critic = CriticEnsemble(
                seeds, cfg.num_critics, obs_dim, act_dim, cfg.critic_hidden, cfg.critic_layers, cfg.critic_layernorm
            )
            self.value = ValueNet(seeds, obs_dim, cfg.critic_hidden, cfg.critic_layers) if cfg.has_value_net else None
        for net in (self.actor, self.critic, self.value):
            if net is not None:
                net.to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        if compile:
            # Fuses LayerNorm, ReLU and their backward; compiled in place, so state_dict keys stay.
            for net in self.networks().values():
                net.compile(dynamic=False)

        fused = {"fused": True}
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, **fused)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, **fused)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, **fused) if self.value else None
        actor_updates = max(1, total_steps // cfg.policy_freq)
        self.actor_schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, T_max=actor_updates)
            if cfg.actor_lr_schedule == "cosine"
            else None
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        raw_min = cfg.reward_min if cfg.reward_min is not None else reward_min
        self.q_floor = pars.q_min(cfg.reward_scale, raw_min + cfg.reward_shift, cfg.discount)
        self.steps = 0
        self._targets = list(self.actor_target.parameters()) + list(self.critic_target.parameters())
        self._onlines = list(self.actor.parameters()) + list(self.critic.parameters())

    # ----------------------------------------------------------------- the update
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on every network that is due; returns per-seed losses [K]."""
        cfg = self.cfg
        self.steps += 1
        metrics: dict[str, torch.Tensor] = {}

        # 1. V(s): expectile regression towards min_i Q'_i(s, a) (DMG's in-sample maximum, IQL).
        if self.value is not None:
            metrics["value_loss"] = self._step(self.value_opt, self.value_loss(batch))

        # 2. Critic: TD regression (on PANI's perturbed actions) plus PARS's PA term.
        with torch.no_grad():
            y = self.critic_target_value(batch)
        critic = self.critic_losses(batch, y)
        total = critic["critic_loss"] + cfg.pa_alpha * critic["pa_loss"] if cfg.pa_alpha > 0 else critic["critic_loss"]
        self._step(self.critic_opt, total)
        metrics.update({k: v.detach() for k, v in critic.items()})

        # 3. Actor and targets, every `policy_freq` critic steps.
        if self.steps % cfg.policy_freq == 0:
            metrics["actor_loss"] = self._step(self.actor_opt, self.actor_loss(batch))
            if self.actor_schedule is not None:
                self.actor_schedule.step()
            torch._foreach_lerp_(self._targets, self._onlines, cfg.tau)
        return metrics

    def value_loss(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            q_data = self.critic_target(batch.obs, batch.actions).min(dim=1).values
        return dmg.expectile_loss(q_data - self.value(batch.obs), self.cfg.expectile)

    def critic_target_value(self, batch: Batch) -> torch.Tensor:
        """y = c * r + gamma * (1 - done) * (lambda * Qnext + (1 - lambda) * V(s')), shape [K, B]."""
        cfg = self.cfg
        q_next = v_next = None
        if cfg.dmg_lambda > 0:
            noise = (cfg.policy_noise * torch.randn(batch.actions.shape, generator=self.generator, device=self.device))
            next_actions = (self.actor_target(batch.next_obs) + noise.clamp(-cfg.noise_clip, cfg.noise_clip)).clamp(-1, 1)
            subset = None
            if cfg.target_subset < cfg.num_critics:
                draws = torch.rand(self.seeds, cfg.num_critics, generator=self.generator, device=self.device)
                subset = draws.argsort(dim=1)[:, : cfg.target_subset]
            q_next = self.critic_target(batch.next_obs, next_actions, subset).min(dim=1).values
        if cfg.dmg_lambda < 1:
            v_next = self.value(batch.next_obs)
        bootstrap = dmg.mixed_bootstrap(q_next, v_next, cfg.dmg_lambda)
        rewards = cfg.reward_scale * (batch.rewards + cfg.reward_shift)
        return rewards + cfg.discount * (1.0 - batch.dones) * bootstrap

    def critic_losses(self, batch: Batch, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-seed TD loss sum_i mean((Q_i(s, a_hat) - y_hat)^2) and, when on, PARS's L_PA."""
        cfg = self.cfg
        actions, target = batch.actions, y
        if cfg.noise_sigma > 0:
            actions = pani.noisy_actions(batch.actions, cfg.noise_sigma, cfg.noise_kind, cfg.noise_uniform_prob, self.generator)
            target = y - pani.noise_penalty(batch.actions, actions, cfg.noise_penalty)
        losses = {}
        if cfg.pa_alpha > 0:
            a_inf = pars.infeasible_actions(batch.actions.shape, cfg.pa_distance, self.generator, self.device)
            # One batched forward over [data | infeasible] actions instead of two.
            q_both = self.critic(torch.cat([batch.obs, batch.obs], dim=1), torch.cat([actions, a_inf], dim=1))
            q, q_inf = q_both.split(batch.obs.shape[1], dim=-1)
            losses["pa_loss"] = pars.pa_loss(q_inf, self.q_floor)
        else:
            q = self.critic(batch.obs, actions)
        losses["critic_loss"] = (q - target.unsqueeze(1)).square().mean(dim=-1).sum(dim=-1)
        return losses

    def actor_loss(self, batch: Batch) -> torch.Tensor:
        """Per seed: -mean(q)/mean|q| + bc_weight * mean_b(w_b * mean_d (pi - a)^2), or IQL's AWR."""
        cfg = self.cfg
        pi = self.actor(batch.obs)
        bc = (pi - batch.actions).square().mean(dim=-1)  # [K, B]
        if cfg.awr_temperature > 0:
            with torch.no_grad():
                advantage = self.critic_target(batch.obs, batch.actions).min(dim=1).values - self.value(batch.obs)
            bc = bc * dmg.advantage_weights(advantage, cfg.awr_temperature, cfg.awr_max_weight)
        if cfg.algorithm == "iql":
            return bc.mean(dim=-1)
        q = self.actor_q(batch.obs, pi)
        loss = -q.mean(dim=-1) / q.abs().mean(dim=-1).detach()
        if cfg.bc_weight > 0:
            loss = loss + cfg.bc_weight * bc.mean(dim=-1)
        return loss

    def actor_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The actor's objective: min over the ensemble (offline) or the mean of a random subset.
        The critics' weights are frozen meanwhile: the actor needs the gradient with respect to
        the actions only, and skipping the critics' weight gradients saves a third of their backward."""
        cfg = self.cfg
        with frozen(self.critic):
            if cfg.actor_q == "min":
                return self.critic(obs, actions).min(dim=1).values
            draws = torch.rand(self.seeds, cfg.num_critics, generator=self.generator, device=self.device)
            subset = draws.argsort(dim=1)[:, : cfg.actor_q_subset]
            return self.critic(obs, actions, subset).mean(dim=1)

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, per_seed_loss: torch.Tensor) -> torch.Tensor:
        """Seeds share no parameters, so the gradient of the sum is each seed's own gradient."""
        optimizer.zero_grad(set_to_none=True)
        per_seed_loss.sum().backward()
        optimizer.step()
        return per_seed_loss.detach()

    # ----------------------------------------------------------------- state
    def networks(self) -> dict[str, torch.nn.Module]:
        nets = {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target}
        if self.value is not None:
            nets["value"] = self.value
        return nets

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, targets, optimisers, schedule, RNG, step."""
        state = {name: net.state_dict() for name, net in self.networks().items()}
        state["actor_opt"] = self.actor_opt.state_dict()
        state["critic_opt"] = self.critic_opt.state_dict()
        if self.value_opt is not None:
            state["value_opt"] = self.value_opt.state_dict()
        if self.actor_schedule is not None:
            state["actor_schedule"] = self.actor_schedule.state_dict()
        state["generator"] = self.generator.get_state()
        state["steps"] = self.steps
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, net in self.networks().items():
            net.load_state_dict(state[name])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        if self.value_opt is not None:
            self.value_opt.load_state_dict(state["value_opt"])
        if self.actor_schedule is not None:
            self.actor_schedule.load_state_dict(state["actor_schedule"])
        self.generator.set_state(state["generator"])
        self.steps = state["steps"]
