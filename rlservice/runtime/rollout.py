"""Rollout workers: Ray actors that collect online experience for a learner in another process.

The interface is the same for the dataset factory's behaviour agent and for online fine-tuning:
- in: an env id and a seed (each worker holds its own env), the exploration noise, and policy
  weights as `Policy` state dicts (tensors only), sent as often as the learner likes;
- out: `Rollout`s, batches of consecutive `Transitions` (actions normalised to [-1, 1],
  terminations and truncations apart, episode starts and the worker's index as the stream).

A worker acts with its latest policy plus Gaussian noise of std `exploration_std` in normalised
action units (0.1 is TD3's 0.1 * max_action), clipped to the box; for its first `start_steps`
steps, and as long as it has no policy, it acts uniformly at random in the box.

`RolloutPool` drives N workers from the learner's process and never makes the learner wait:
`submit` returns at once, and `poll` hands back only the batches already finished (ray.wait with
timeout 0), so the learner keeps stepping on its buffer while rollouts are in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import ray
import torch

from rlservice.agent.policy import Policy
from rlservice.data.online_buffer import Transitions


@dataclass(frozen=True)
class Rollout:
    transitions: Transitions
    episode_returns: np.ndarray  # undiscounted returns of the episodes that ended in this batch


def to_unit(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.clip(2.0 * (actions - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)


def to_env(unit_actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (low + (unit_actions + 1.0) * 0.5 * (high - low)).astype(np.float32)


def explore(policy: Policy, obs: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """The policy's action plus N(0, std^2) noise per dimension, in normalised units, clipped to [-1, 1]."""
    unit = to_unit(policy.act(obs), policy.action_low, policy.action_high)
    return np.clip(unit + std * rng.standard_normal(unit.shape), -1.0, 1.0).astype(np.float32)


@ray.remote
class RolloutWorker:
    """One env, stepped on demand; episodes continue across `collect` calls."""

    def __init__(
        self,
        env_id: str,
        seed: int,
        worker_index: int,
        exploration_std: float,
        start_steps: int,
        actor_shape: tuple[int, int, bool],
    ):
        """`actor_shape` is (hidden, layers, layernorm) of the actor whose weights will be sent."""
        torch.set_num_threads(1)
        self.env = gym.make(env_id)
        self.env.action_space.seed(seed)
        self.low = self.env.action_space.low.astype(np.float32)
        self.high = self.env.action_space.high.astype(np.float32)
        self.rng = np.random.default_rng(seed)
        self.worker_index, self.exploration_std, self.start_steps = worker_index, exploration_std, start_steps
        self.actor_shape = actor_shape
        self.policy: Policy | None = None
        self.steps = 0
        self.obs, _ = self.env.reset(seed=seed)
        self.episode_start, self.episode_return = True, 0.0

    def set_policy(self, policy_state: dict[str, torch.Tensor]) -> None:
        self.policy = Policy.from_state_dict(policy_state, *self.actor_shape)

    def collect(self, num_steps: int) -> Rollout:
        """The next `num_steps` (>= 1) steps; an episode still running goes on in the next call."""
        steps, finished = [], []
        for _ in range(num_steps):
            if self.policy is None or self.steps < self.start_steps:
                unit = self.rng.uniform(-1.0, 1.0, self.low.shape).astype(np.float32)
            else:
                unit = explore(self.policy, self.obs, self.exploration_std, self.rng)
            next_obs, reward, terminated, truncated, _ = self.env.step(to_env(unit, self.low, self.high))
            steps.append((self.obs, unit, reward, next_obs, terminated, truncated, self.episode_start))
            self.steps += 1
            self.episode_return += float(reward)
            self.episode_start = terminated or truncated
            if self.episode_start:
                finished.append(self.episode_return)
                self.episode_return = 0.0
                self.obs, _ = self.env.reset()
            else:
                self.obs = next_obs
        obs, actions, rewards, next_obs, terminated, truncated, starts = zip(*steps)
        transitions = Transitions(
            obs=np.asarray(obs, np.float32),
            actions=np.asarray(actions, np.float32),
            rewards=np.asarray(rewards, np.float32),
            next_obs=np.asarray(next_obs, np.float32),
            terminated=np.asarray(terminated, bool),
            truncated=np.asarray(truncated, bool),
            episode_start=np.asarray(starts, bool),
            source=np.full(num_steps, self.worker_index, np.int64),
        )
        return Rollout(transitions, np.asarray(finished))


class RolloutPool:
    """N rollout workers driven without blocking: `submit` work to idle workers, `poll` for results."""

    def __init__(
        self,
        env_id: str,
        num_workers: int,
        seed: int,
        *,
        exploration_std: float,
        start_steps: int,
        actor_shape: tuple[int, int, bool],
        num_cpus: float = 1,
    ):
        """`start_steps` counts for the whole pool: each worker acts randomly for its share."""
        seeds = np.random.SeedSequence(seed).generate_state(num_workers)
        share = -(-start_steps // num_workers)
        self.workers = [
            RolloutWorker.options(num_cpus=num_cpus).remote(
                env_id, int(seeds[i]), i, exploration_std, share, actor_shape
            )
            for i in range(num_workers)
        ]
        self.idle = list(range(num_workers))
        self._in_flight: dict[ray.ObjectRef, int] = {}
        self._policy: ray.ObjectRef | None = None
        self._stale = set()  # workers that have not been sent the latest policy yet

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def set_policy(self, policy_state: dict[str, torch.Tensor]) -> None:
        """Workers pick it up with their next `submit` (a batch already running keeps its policy)."""
        self._policy = ray.put(policy_state)
        self._stale = set(range(len(self.workers)))

    def submit(self, num_steps: int) -> bool:
        """Start a batch of `num_steps` steps on an idle worker; False if none is idle."""
        if not self.idle:
            return False
        i = self.idle.pop(0)
        if i in self._stale:
            self.workers[i].set_policy.remote(self._policy)  # an actor runs its calls in order
            self._stale.discard(i)
        self._in_flight[self.workers[i].collect.remote(num_steps)] = i
        return True

    def poll(self) -> list[Rollout]:
        """The batches finished by now, without waiting."""
        return self._take(timeout=0)

    def wait(self) -> list[Rollout]:
        """Block until at least one batch is finished (for a learner that has nothing to train on)."""
        return self._take(timeout=None)

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self._in_flight.clear()

    def _take(self, timeout: float | None) -> list[Rollout]:
        if not self._in_flight:
            return []
        refs = list(self._in_flight)
        ready, _ = ray.wait(refs, num_returns=len(refs) if timeout == 0 else 1, timeout=timeout)
        if timeout is None:  # then take whatever else has finished too
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            self.idle.append(self._in_flight.pop(ref))
        return ray.get(ready)
