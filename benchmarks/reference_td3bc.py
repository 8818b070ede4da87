"""A plain TD3+BC training step, written the way single-file implementations usually are, as a
yardstick for the learner (`benchmarks/learner.py --preset td3bc --compare-reference`).

Algorithm (Fujimoto & Gu 2021): TD3 with target policy smoothing, clipped double Q and a
delayed actor whose loss is -lambda * Q(s, pi(s)) + (pi(s) - a)^2, lambda = alpha / mean|Q|.
Typical on purpose: two separate critic modules, batches drawn on the host with numpy indices
and copied in every step, lambda read back to the host with `.item()`, Adam with its default
per-parameter loop, and a Python loop over parameters for the soft target update.

Two choices keep the comparison about implementation, not algorithm: the actor maximises
min(Q1, Q2) as SPEC.md's learner does (the paper's code uses Q1 alone), and the shapes are
the learner's (256-256 MLPs, batch 256). The learner's actor loss is this one divided by alpha.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Actor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(obs_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, act_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.l3(F.relu(self.l2(F.relu(self.l1(obs))))))


class Critic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(obs_dim + act_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=1)
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


class TD3BC:
    def __init__(self, obs_dim: int, act_dim: int, device: str = "cpu", hidden: int = 256, alpha: float = 2.5,
                 discount: float = 0.99, tau: float = 0.005, policy_noise: float = 0.2, noise_clip: float = 0.5,
                 policy_freq: int = 2, lr: float = 3e-4):
        self.device = torch.device(device)
        self.actor = Actor(obs_dim, act_dim, hidden).to(self.device)
        self.critic1 = Critic(obs_dim, act_dim, hidden).to(self.device)
        self.critic2 = Critic(obs_dim, act_dim, hidden).to(self.device)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic1_target = copy.deepcopy(self.critic1)
        self.critic2_target = copy.deepcopy(self.critic2)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam([*self.critic1.parameters(), *self.critic2.parameters()], lr=lr)
        self.alpha, self.discount, self.tau = alpha, discount, tau
        self.policy_noise, self.noise_clip, self.policy_freq = policy_noise, noise_clip, policy_freq
        self.iterations = 0

    def sample(self, data: dict[str, np.ndarray], batch_size: int) -> list[torch.Tensor]:
        idx = np.random.randint(0, len(data["obs"]), size=batch_size)
        keys = ("obs", "actions", "rewards", "next_obs", "dones")
        return [torch.as_tensor(data[k][idx], device=self.device) for k in keys]

    def train_step(self, data: dict[str, np.ndarray], batch_size: int = 256) -> None:
        self.iterations += 1
        obs, actions, rewards, next_obs, dones = self.sample(data, batch_size)

        with torch.no_grad():
            noise = (torch.randn_like(actions) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_actions = (self.actor_target(next_obs) + noise).clamp(-1.0, 1.0)
            q_next = torch.min(self.critic1_target(next_obs, next_actions), self.critic2_target(next_obs, next_actions))
            target = rewards + self.discount * (1.0 - dones) * q_next

        critic_loss = F.mse_loss(self.critic1(obs, actions), target) + F.mse_loss(self.critic2(obs, actions), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        if self.iterations % self.policy_freq == 0:
            pi = self.actor(obs)
            q = torch.min(self.critic1(obs, pi), self.critic2(obs, pi))
            lmbda = self.alpha / q.abs().mean().item()
            actor_loss = -lmbda * q.mean() + F.mse_loss(pi, actions)
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()

            for net, target_net in ((self.actor, self.actor_target), (self.critic1, self.critic1_target),
                                    (self.critic2, self.critic2_target)):
                for param, target_param in zip(net.parameters(), target_net.parameters()):
                    target_param.data.copy_(self.tau * param.data + (1 - self.tau) * target_param.data)


def synthetic_data(size: int, obs_dim: int, act_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Host arrays shaped like an offline dataset; rewards and dones as [size, 1] columns."""
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((size, obs_dim), dtype=np.float32),
        "actions": rng.uniform(-1, 1, (size, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal((size, 1), dtype=np.float32),
        "next_obs": rng.standard_normal((size, obs_dim), dtype=np.float32),
        "dones": (rng.random((size, 1)) < 0.01).astype(np.float32),
    }
