"""The online replay buffer: experience from rollout workers, kept on the training device.

Unlike the fixed offline `ReplayBuffer`, it grows as transitions arrive (storage doubles up to
`capacity`, then the oldest transitions are overwritten) and keeps what is needed to give the
experience back as whole episodes: terminations and truncations apart, the first transition of
each episode, and the stream (rollout worker) each transition came from, since the batches of
several workers interleave in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from rlservice.agent.learner import Batch
from rlservice.agent.normalizer import ObservationNormalizer
from rlservice.data.minari_io import Episode


@dataclass(frozen=True)
class Transitions:
    """n consecutive transitions of one stream; every field has n rows."""

    obs: np.ndarray  # [n, obs_dim] float32, raw
    actions: np.ndarray  # [n, act_dim] float32, normalised to [-1, 1]
    rewards: np.ndarray  # [n] float32, raw
    next_obs: np.ndarray  # [n, obs_dim] float32, raw
    terminated: np.ndarray  # [n] bool
    truncated: np.ndarray  # [n] bool
    episode_start: np.ndarray  # [n] bool: the transition follows a reset
    source: np.ndarray  # [n] int64: the stream (rollout worker) that produced it

    def __len__(self) -> int:
        return len(self.rewards)


_FIELDS = tuple(f.name for f in fields(Transitions))
_DTYPES = {"terminated": torch.bool, "truncated": torch.bool, "episode_start": torch.bool, "source": torch.int64}
_INITIAL_ROWS = 1024


class OnlineReplayBuffer:
    """Transitions in arrival order. Transition number g (counting every one ever added) lives in
    row g % capacity, so the rows held are always those numbered [added - size, added)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        capacity: int,
        device: str | torch.device = "cpu",
        normalizer: ObservationNormalizer | None = None,
    ):
        """`normalizer`, if given, is applied to the observations of sampled batches (the stored
        ones stay raw, so exported episodes hold what the env returned)."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self.device = torch.device(device)
        self.normalizer = normalizer
        if normalizer is not None:
            self._obs_mean = torch.as_tensor(normalizer.mean, device=self.device)
            self._obs_std = torch.as_tensor(normalizer.std, device=self.device)
        self.added = 0
        self.size = 0
        self._storage = self._allocate(min(capacity, _INITIAL_ROWS))

    def __len__(self) -> int:
        return self.size

    def add(self, transitions: Transitions) -> None:
        n = len(transitions)
        rows = self._rows(self.added, n)
        self._reserve(min(self.capacity, self.size + n))
        keep = slice(max(0, n - self.capacity), n)  # a batch larger than the buffer keeps its end
        for name in _FIELDS:
            value = torch.tensor(getattr(transitions, name), device=self.device)  # a copy: Ray's arrays are read-only
            self._storage[name][rows[keep]] = value[keep].to(self._storage[name].dtype)
        self.added += n
        self.size = min(self.capacity, self.size + n)

    def sample(self, generator: torch.Generator, seeds: int, batch_size: int) -> Batch:
        """[seeds, batch_size] transitions drawn uniformly on the device; `dones` are terminations only."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer")
        idx = torch.randint(0, self.size, (seeds, batch_size), generator=generator, device=self.device)
        s = self._storage
        obs, next_obs = s["obs"][idx], s["next_obs"][idx]
        if self.normalizer is not None:
            obs = (obs - self._obs_mean) / self._obs_std
            next_obs = (next_obs - self._obs_mean) / self._obs_std
        return Batch(obs, s["actions"][idx], s["rewards"][idx], next_obs, s["terminated"][idx].float())

    # ----------------------------------------------------------------- export
    def transitions(self, end: int | None = None) -> Transitions:
        """The transitions still held whose number is below `end` (default: all), oldest first."""
        end = self.added if end is None else min(end, self.added)
        start = self.added - self.size
        rows = self._rows(start, max(0, end - start))
        return Transitions(**{name: self._storage[name][rows].cpu().numpy() for name in _FIELDS})

    def episodes(self, action_low: np.ndarray, action_high: np.ndarray, end: int | None = None) -> list[Episode]:
        """`transitions(end)` regrouped into episodes (actions back in the env's box), ordered by
        their first transition. An episode cut by `end`, by the buffer's start or by the end of
        its stream's data is kept, its last transition marked truncated."""
        t = self.transitions(end)
        low, high = np.asarray(action_low, np.float32), np.asarray(action_high, np.float32)
        pieces = []
        for source in np.unique(t.source):
            rows = np.flatnonzero(t.source == source)
            pieces += np.split(rows, np.flatnonzero(t.episode_start[rows][1:]) + 1)
        pieces.sort(key=lambda rows: rows[0])
        return [_episode(t, rows, low, high) for rows in pieces]

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The contents (oldest first) and counters: loading it restores the buffer exactly."""
        held = self.transitions()
        return {
            **{name: torch.as_tensor(getattr(held, name)) for name in _FIELDS},
            "added": self.added,
            "capacity": self.capacity,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or state["obs"].shape[1:] != (self.obs_dim,):
            raise ValueError(
                f"buffer state of capacity {state['capacity']} and obs shape {tuple(state['obs'].shape[1:])} does not fit "
                f"this buffer (capacity {self.capacity}, obs dim {self.obs_dim})"
            )
        size = len(state["rewards"])
        self.added, self.size = state["added"] - size, 0
        self._storage = self._allocate(min(self.capacity, max(size, _INITIAL_ROWS)))
        self.add(Transitions(**{name: state[name].numpy() for name in _FIELDS}))

    # ----------------------------------------------------------------- storage
    def _rows(self, first: int, n: int) -> torch.Tensor:
        return torch.arange(first, first + n, device=self.device) % self.capacity

    def _allocate(self, rows: int) -> dict[str, torch.Tensor]:
        shapes = {"obs": (self.obs_dim,), "next_obs": (self.obs_dim,), "actions": (self.act_dim,)}
        return {
            name: torch.zeros((rows, *shapes.get(name, ())), dtype=_DTYPES.get(name, torch.float32), device=self.device)
            for name in _FIELDS
        }

    def _reserve(self, rows: int) -> None:
        """Grow the storage (doubling, at most to `capacity`) to hold `rows` rows; rows below
        `capacity` are only ever filled in order, so existing rows keep their place."""
        allocated = len(self._storage["rewards"])
        if rows <= allocated:
            return
        grown = self._allocate(min(self.capacity, max(rows, 2 * allocated)))
        for name, old in self._storage.items():
            grown[name][:allocated] = old
        self._storage = grown


def _episode(t: Transitions, rows: np.ndarray, low: np.ndarray, high: np.ndarray) -> Episode:
    terminations, truncations = t.terminated[rows].copy(), t.truncated[rows].copy()
    truncations[-1] |= not terminations[-1]
    return Episode(
        observations=np.concatenate([t.obs[rows], t.next_obs[rows[-1:]]]),
        actions=(low + (t.actions[rows] + 1.0) * 0.5 * (high - low)).astype(np.float32),
        rewards=t.rewards[rows],
        terminations=terminations,
        truncations=truncations,
    )
