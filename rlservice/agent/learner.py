"""The actor-critic learner of SPEC.md: one update covers TD3+BC, PARS, PANI, DMG, IQL and
any combination, switched by `AgentConfig`.

Every tensor carries a leading seed dimension K (K independent agents trained in lock-step
with stacked weights; K = 1 is the ordinary learner). Losses are computed per seed and
summed: the seeds share no parameters, so each one receives exactly its own gradient, and
Adam, being element-wise, keeps them independent too.

The seeds may run in groups (`seed_group`): each group's forward and backward runs on
networks whose parameters are views of the K-seed ones, its gradients land in their slices
of the K-seed gradients, and one optimiser step then updates all seeds. On a CPU this keeps
the activations in cache, and a K-seed run no slower than K one-seed runs (`seed_group_size`).

The update never reads a value back to the host: there is no `.item()`, no data-dependent
Python branch, and the returned metrics are device tensors that the caller reads when it
chooses to (every `log_every` steps).
"""

from __future__ import annotations

import copy
import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Callable

import torch

from rlservice.agent import dmg, pani, pars
from rlservice.agent.adam import FusedAdam, cosine_lr
from rlservice.agent.allocator import retain_freed_memory
from rlservice.agent.matmul import Choice, Kernel, onednn_available
from rlservice.agent.networks import (
    Actor,
    CriticEnsemble,
    ValueNet,
    seed_view,
    use_matmul,
)
from rlservice.config.run import AgentConfig, TrainConfig

# Seeds per group on a CPU: as many as keep the widest activation (the critics' hidden layer)
# under this size. Measured on a 2-core CPU with a 32 MiB L3 (`benchmarks/learner.py --preset
# pars --num-seeds 5 --seed-group G`, 5 MiB a seed, median of paired repeats): against 5 one-seed
# runs, 5 seeds in groups of 1 ran 0.99-1.02x, all at once 0.92-0.99x. (Before
# rlservice/agent/allocator.py, 1.05x against 0.75x: most of that gap was page faults.)
CPU_GROUP_BYTES = 6 * 2**20


@dataclass(frozen=True)
class Batch:
    """Transitions shaped [K, B, ...]; actions normalised to [-1, 1]; rewards raw."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor  # 1.0 where the episode terminated (never for time-outs)

    def select(self, seeds: slice) -> "Batch":
        return Batch(*(getattr(self, f.name)[seeds] for f in fields(self)))


@dataclass(frozen=True)
class Nets:
    """The networks a loss runs on: those of all seeds, or views of one group's."""

    seeds: int
    actor: Actor
    critic: CriticEnsemble
    value: ValueNet | None
    actor_target: Actor
    critic_target: CriticEnsemble

    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks by field name; V only where there is one."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "seeds" and getattr(self, f.name) is not None}

    @cached_property
    def critic_parameters(self) -> list[torch.nn.Parameter]:
        """Listed once for the actor step to freeze: walking the module tree to freeze and thaw
        them took 18 us per actor step, the list takes 1 us."""
        return list(self.critic.parameters())


Objective = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (per-seed loss to minimise, per-seed metrics)


def _named(name: str, loss: torch.Tensor) -> Objective:
    return loss, {name: loss}


def seed_group_size(cfg: AgentConfig, train: TrainConfig) -> int:
    """`train.seed_group` if set; else all seeds at once on a GPU, and on a CPU as many as fit
    CPU_GROUP_BYTES (at least one)."""
    if train.seed_group is not None:
        return train.seed_group
    if torch.device(train.device).type != "cpu":
        return train.num_seeds
    per_seed = 4 * cfg.critic_rows(train.batch_size) * cfg.num_critics * cfg.critic_hidden
    return max(1, min(train.num_seeds, CPU_GROUP_BYTES // per_seed))


def matmul_kernel(choice: Choice, device: str | torch.device) -> Kernel:
    """The kernel to run: ATen off the CPU or without oneDNN; for "auto" the faster one here."""
    if torch.device(device).type != "cpu" or not onednn_available():
        return "aten"
    return fastest_cpu_kernel() if choice == "auto" else choice


@functools.cache
def fastest_cpu_kernel(hidden: int = 256, repeats: int = 3) -> Kernel:
    """Times whole learner steps (AgentConfig's defaults, a TD3+BC step, at HalfCheetah's sizes)
    on each kernel in interleaved repeats and returns the one with the lower best time: what
    the learner runs, dispatch overhead included (oneDNN's matmuls alone are faster on the
    development machine; its steps were not). Once per process; ~0.1 s on an idle 2-core CPU."""
    cfg = AgentConfig(critic_hidden=hidden, actor_hidden=hidden)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(1, 256, 17, generator=g), torch.rand(1, 256, 6, generator=g) * 2 - 1,
                  torch.randn(1, 256, generator=g), torch.randn(1, 256, 17, generator=g), torch.zeros(1, 256))
    learners = {kernel: Learner(cfg, 17, 6, reward_min=-1.0, matmul=kernel) for kernel in ("aten", "onednn")}
    best = dict.fromkeys(learners, float("inf"))
    for learner in learners.values():
        learner.update(batch)  # first calls build oneDNN's primitives
    for _ in range(repeats):
        for kernel, learner in learners.items():
            start = time.perf_counter()
            learner.update(batch)  # steps 2, 4, ...: with the actor and the targets
            learner.update(batch)
            best[kernel] = min(best[kernel], time.perf_counter() - start)
    return min(best, key=best.get)


@contextmanager
def frozen(params: list[torch.nn.Parameter]):
    """Differentiate through these parameters without computing their gradients."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


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
        seed_group: int | None = None,
        reward_factor: float = 1.0,
        matmul: Choice = "aten",
    ):
        """`reward_min` is the raw minimum reward (config `reward_min` wins over it); `reward_factor`
        multiplies the rewards besides `reward_scale` (IQL's return-range normalisation); `total_steps`
        sets the horizon of the cosine actor schedule; `compile` runs the networks through
        `torch.compile` (same results to float tolerance, a slow first few steps); `seed_group`
        seeds run their forward and backward together (default all); `matmul` is the kernel of the
        networks' matmuls (rlservice.agent.matmul; "auto": the faster here, see `matmul_kernel`)."""
        retain_freed_memory()  # any process that runs steps; else each step re-faults its activations' pages
        self.cfg, self.seeds, self.device = cfg, seeds, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(seeds, obs_dim, act_dim, cfg.actor_hidden, cfg.actor_layers, cfg.actor_layernorm)
            self.critic = CriticEnsemble(
                seeds, cfg.num_critics, obs_dim, act_dim, cfg.critic_hidden, cfg.critic_layers, cfg.critic_layernorm
            )
            self.value = ValueNet(seeds, obs_dim, cfg.critic_hidden, cfg.critic_layers) if cfg.has_value_net else None
        self.matmul = matmul_kernel(matmul, self.device)
        for net in (self.actor, self.critic, self.value):
            if net is not None:
                use_matmul(net.to(self.device), self.matmul)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.nets = Nets(seeds, self.actor, self.critic, self.value, self.actor_target, self.critic_target)
        self.groups = self._seed_groups(self.nets, seed_group or seeds)
        if compile:
            # Fuses LayerNorm, ReLU and their backward; compiled in place, so state_dict keys stay.
            for _, nets in self.groups:
                for net in nets.modules().values():
                    net.compile(dynamic=False)

        self.actor_opt = FusedAdam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = FusedAdam(self.critic.parameters(), cfg.critic_lr)
        self.value_opt = FusedAdam(self.value.parameters(), cfg.value_lr) if self.value else None
        self.actor_updates = max(1, total_steps // cfg.policy_freq)  # the cosine schedule's horizon
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        raw_min = cfg.reward_min if cfg.reward_min is not None else reward_min
        self.reward_factor = reward_factor
        self.q_floor = cfg.q_min if cfg.q_min is not None else pars.q_min(
            cfg.reward_scale * reward_factor, raw_min + cfg.reward_shift, cfg.discount)
        self.steps = 0
        self._targets = list(self.actor_target.parameters()) + list(self.critic_target.parameters())
        self._onlines = list(self.actor.parameters()) + list(self.critic.parameters())

    @staticmethod
    def _seed_groups(nets: Nets, size: int) -> list[tuple[slice | None, Nets]]:
        """(seeds, networks) per group; one group of all seeds runs on the networks themselves.
        Otherwise each group's trained parameters get as `.grad` a view of the K-seed `.grad`,
        which backward accumulates into in place."""
        k = nets.seeds
        if size >= k:
            return [(None, nets)]
        trained = {name: net for name, net in nets.modules().items() if not name.endswith("_target")}
        for net in trained.values():
            for p in net.parameters():
                p.grad = torch.zeros_like(p)
        groups = []
        for start in range(0, k, size):
            stop = min(k, start + size)
            views = {name: seed_view(net, k, start, stop) for name, net in nets.modules().items()}
            for name, net in trained.items():
                for full, part in zip(net.parameters(), views[name].parameters()):
                    members = full.shape[0] // k
                    part.grad = full.grad[start * members : stop * members]
            groups.append((slice(start, stop), Nets(seeds=stop - start, value=views.pop("value", None), **views)))
        return groups

    # ----------------------------------------------------------------- the update
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on every network that is due; returns per-seed losses [K]."""
        cfg = self.cfg
        self.steps += 1
        metrics: dict[str, torch.Tensor] = {}

        # 1. V(s): expectile regression towards min_i Q'_i(s, a) (DMG's in-sample maximum, IQL).
        if self.value is not None:
            metrics |= self._step(self.value_opt, lambda b, n: _named("value_loss", self.value_loss(b, n)), batch)

        # 2. Critic: TD regression (on PANI's perturbed actions) plus PARS's PA term.
        metrics |= self._step(self.critic_opt, self._critic_objective, batch)

        # 3. Actor and targets, every `policy_freq` critic steps.
        if self.steps % cfg.policy_freq == 0:
            metrics |= self._step(self.actor_opt, lambda b, n: _named("actor_loss", self.actor_loss(b, n)), batch)
            if cfg.actor_lr_schedule == "cosine":
                self.actor_opt.lr = cosine_lr(cfg.actor_lr, self.steps // cfg.policy_freq, self.actor_updates)
            with torch.no_grad():  # else autograd chains every update onto the targets: a graph that grows each step
                torch._foreach_lerp_(self._targets, self._onlines, cfg.tau)
        return metrics

    def _critic_objective(self, batch: Batch, nets: Nets) -> Objective:
        with torch.no_grad():
            y = self.critic_target_value(batch, nets)
        losses = self.critic_losses(batch, y, nets)
        total = losses["critic_loss"] + self.cfg.pa_alpha * losses["pa_loss"] if self.cfg.pa_alpha > 0 else losses["critic_loss"]
        return total, losses

    def _step(self, optimizer: FusedAdam, objective: Callable[[Batch, Nets], Objective],
              batch: Batch) -> dict[str, torch.Tensor]:
        """Minimise the per-seed loss of `objective`, group by group, then step once; returns
        its per-seed metrics. Seeds share no parameters, so the gradient of the sum is each
        seed's own gradient."""
        optimizer.zero_grad(set_to_none=len(self.groups) == 1)  # groups write into views of the .grad
        parts = []
        for seeds, nets in self.groups:
            loss, metrics = objective(batch if seeds is None else batch.select(seeds), nets)
            loss.sum().backward()
            parts.append({k: v.detach() for k, v in metrics.items()})
        optimizer.step()
        return parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def value_loss(self, batch: Batch, nets: Nets | None = None) -> torch.Tensor:
        n = nets or self.nets
        with torch.no_grad():
            q_data = n.critic_target(batch.obs, batch.actions).min(dim=1).values
        return dmg.expectile_loss(q_data - n.value(batch.obs), self.cfg.expectile)

    def critic_target_value(self, batch: Batch, nets: Nets | None = None) -> torch.Tensor:
        """y = c * r + gamma * (1 - done) * (lambda * Qnext + (1 - lambda) * V(s')), shape [K, B]."""
        cfg, n = self.cfg, nets or self.nets
        q_next = v_next = None
        if cfg.dmg_lambda > 0:
            noise = (cfg.policy_noise * torch.randn(batch.actions.shape, generator=self.generator, device=self.device))
            next_actions = (n.actor_target(batch.next_obs) + noise.clamp(-cfg.noise_clip, cfg.noise_clip)).clamp(-1, 1)
            subset = None
            if cfg.target_subset < cfg.num_critics:
                draws = torch.rand(n.seeds, cfg.num_critics, generator=self.generator, device=self.device)
                subset = draws.argsort(dim=1)[:, : cfg.target_subset]
            q_next = n.critic_target(batch.next_obs, next_actions, subset).min(dim=1).values
        if cfg.dmg_lambda < 1:
            v_next = n.value(batch.next_obs)
        bootstrap = dmg.mixed_bootstrap(q_next, v_next, cfg.dmg_lambda)
        rewards = (cfg.reward_scale * self.reward_factor) * (batch.rewards + cfg.reward_shift)
        return rewards + cfg.discount * (1.0 - batch.dones) * bootstrap

    def critic_losses(self, batch: Batch, y: torch.Tensor, nets: Nets | None = None) -> dict[str, torch.Tensor]:
        """Per-seed TD loss sum_i mean((Q_i(s, a_hat) - y_hat)^2) and, when on, PARS's L_PA."""
        cfg, n = self.cfg, nets or self.nets
        actions, target = batch.actions, y
        if cfg.noise_sigma > 0:
            actions = pani.noisy_actions(batch.actions, cfg.noise_sigma, cfg.noise_kind, cfg.noise_uniform_prob, self.generator)
            target = y - pani.noise_penalty(batch.actions, actions, cfg.noise_penalty)
        losses = {}
        if cfg.pa_alpha > 0:
            obs_inf = batch.obs[:, : cfg.pa_samples]  # every state by default
            a_inf = pars.infeasible_actions((*obs_inf.shape[:-1], actions.shape[-1]), cfg.pa_distance, self.generator, self.device)
            # One batched forward over [data | infeasible] actions instead of two.
            q_both = n.critic(torch.cat([batch.obs, obs_inf], dim=1), torch.cat([actions, a_inf], dim=1))
            q, q_inf = q_both.split([batch.obs.shape[1], obs_inf.shape[1]], dim=-1)
            losses["pa_loss"] = pars.pa_loss(q_inf, self.q_floor)
        else:
            q = n.critic(batch.obs, actions)
        losses["critic_loss"] = (q - target.unsqueeze(1)).square().mean(dim=-1).sum(dim=-1)
        return losses

    def actor_loss(self, batch: Batch, nets: Nets | None = None) -> torch.Tensor:
        """Per seed: -mean(q)/mean|q| + bc_weight * mean_b(w_b * mean_d (pi - a)^2), or IQL's AWR."""
        cfg, n = self.cfg, nets or self.nets
        pi = n.actor(batch.obs)
        bc = (pi - batch.actions).square().mean(dim=-1)  # [K, B]
        if cfg.awr_temperature > 0:
            with torch.no_grad():
                advantage = n.critic_target(batch.obs, batch.actions).min(dim=1).values - n.value(batch.obs)
            bc = bc * dmg.advantage_weights(advantage, cfg.awr_temperature, cfg.awr_max_weight)
        if cfg.algorithm == "iql":
            return bc.mean(dim=-1)
        q = self.actor_q(batch.obs, pi, n)
        loss = -q.mean(dim=-1) / q.abs().mean(dim=-1).detach()
        if cfg.bc_weight > 0:
            loss = loss + cfg.bc_weight * bc.mean(dim=-1)
        return loss

    def actor_q(self, obs: torch.Tensor, actions: torch.Tensor, nets: Nets | None = None) -> torch.Tensor:
        """The actor's objective: Q_1 (TD3+BC, PANI), the min over the ensemble (PARS, DMG offline)
        or the mean of a random subset (fine-tuning). The critics' weights are frozen meanwhile:
        the actor needs the gradient with respect to the actions only, and skipping the critics'
        weight gradients saves a third of their backward."""
        cfg, n = self.cfg, nets or self.nets
        with frozen(n.critic_parameters):
            if cfg.actor_q == "min":
                return n.critic(obs, actions).min(dim=1).values
            if cfg.actor_q == "first":  # only the first critic runs
                first = torch.zeros(n.seeds, 1, dtype=torch.long, device=obs.device)
                return n.critic(obs, actions, first).squeeze(1)
            draws = torch.rand(n.seeds, cfg.num_critics, generator=self.generator, device=self.device)
            subset = draws.argsort(dim=1)[:, : cfg.actor_q_subset]
            return n.critic(obs, actions, subset).mean(dim=1)

    # ----------------------------------------------------------------- state
    def networks(self) -> dict[str, torch.nn.Module]:
        return self.nets.modules()

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, targets, optimisers (with the actor's current lr), RNG, step."""
        state = {name: net.state_dict() for name, net in self.networks().items()}
        state["actor_opt"] = self.actor_opt.state_dict()
        state["critic_opt"] = self.critic_opt.state_dict()
        if self.value_opt is not None:
            state["value_opt"] = self.value_opt.state_dict()
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
        self.generator.set_state(state["generator"])
        self.steps = state["steps"]
