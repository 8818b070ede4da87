"""The deployable policy: one seed's actor, the observation normaliser and the action box.

`act` takes raw environment observations and returns actions in the environment's units, so
whoever holds a Policy needs nothing else from rlservice's training state.
"""

from __future__ import annotations

import numpy as np
import torch

from rlservice.agent.networks import Actor
from rlservice.agent.normalizer import ObservationNormalizer


class Policy:
    def __init__(self, actor: Actor, normalizer: ObservationNormalizer, action_low: np.ndarray, action_high: np.ndarray):
        self.actor = actor.eval()
        self.normalizer = normalizer
        self.action_low = np.asarray(action_low, np.float32)
        self.action_high = np.asarray(action_high, np.float32)

    @classmethod
    def from_learner(cls, learner, seed_index: int, normalizer, action_low, action_high) -> "Policy":
        """Slice seed `seed_index` out of the learner's stacked actor into a standalone one."""
        cfg = learner.cfg
        actor = Actor(1, learner.obs_dim, learner.act_dim, cfg.actor_hidden, cfg.actor_layers, cfg.actor_layernorm)
        state = {k: v[seed_index : seed_index + 1].detach().cpu().clone() for k, v in learner.actor.state_dict().items()}
        actor.load_state_dict(state)
        return cls(actor, normalizer, action_low, action_high)

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """observations [B, obs_dim] (or [obs_dim]) raw -> actions [B, act_dim] in the env's box."""
        single = observations.ndim == 1
        obs = torch.from_numpy(self.normalizer(np.atleast_2d(observations))).unsqueeze(0)
        unit = self.actor(obs)[0].numpy()
        actions = self.action_low + (unit + 1.0) * 0.5 * (self.action_high - self.action_low)
        return actions[0] if single else actions

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            **{f"actor.{k}": v for k, v in self.actor.state_dict().items()},
            **{f"normalizer.{k}": v for k, v in self.normalizer.state_dict().items()},
            "action_low": torch.from_numpy(self.action_low),
            "action_high": torch.from_numpy(self.action_high),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], hidden: int, layers: int, layernorm: bool) -> "Policy":
        obs_dim = state["normalizer.mean"].shape[0]
        act_dim = state["action_low"].shape[0]
        actor = Actor(1, obs_dim, act_dim, hidden, layers, layernorm)
        actor.load_state_dict({k.removeprefix("actor."): v for k, v in state.items() if k.startswith("actor.")})
        normalizer = ObservationNormalizer(state["normalizer.mean"].numpy(), state["normalizer.std"].numpy())
        return cls(actor, normalizer, state["action_low"].numpy(), state["action_high"].numpy())
