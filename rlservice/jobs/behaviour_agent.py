"""The behaviour agent of the dataset factory: TD3 trained online, cached per (env, seed, budget).

Why TD3 and not SAC: TD3 is exactly the project's own `Learner` with the offline terms switched
off (no BC term, no LayerNorm, two critics, target policy smoothing, delayed actor updates), so
no second algorithm has to be written and kept correct; and its actor is deterministic, so a
checkpoint is one network whose evaluation return is the return of the policy that collects the
data (up to the small, documented collection noise of the factory). One difference from the TD3
paper: the Learner divides the actor loss by mean |Q| (its TD3+BC form); under Adam, which is
nearly invariant to the scale of the loss, that changes little.

Training follows TD3: uniform random actions for the first `start_steps` env steps, then one
gradient step per env step, exploration noise 0.1 in normalised action units, no observation
normalisation (TD3 learns the MuJoCo tasks on raw observations, and a running normaliser would
shift the critic's inputs while it learns). Experience comes from Ray rollout workers
(`rlservice.runtime.rollout`) while the learner trains; the two are paced against each other
only loosely: neither may run more than `num_workers * steps_per_call` steps ahead of the other.
Because of that asynchrony, training is not bit-reproducible; the datasets built from a cached
agent are.

Cache entry `home()/behaviour/<env>-s<seed>-b<budget>/`:
- `checkpoints/<env_step>.pt`: the actor (a `Policy` state dict) at every evaluation point; the
  last one, at `budget` env steps and after the last update, is the final (expert) agent;
- `buffer.pt`: the replay buffer (every transition of training, in arrival order);
- `agent.json`: config, and per checkpoint its env step (= its position in the buffer), learner
  updates and evaluation return over `eval_episodes` deterministic episodes; also how many
  updates the learner made while rollouts were in flight (`updates_while_collecting`) and how
  long it waited for experience (`learner_wait_seconds`: only at the start, or when the
  learner is faster than the workers and would otherwise exceed one update per env step).
An entry is written in a hidden temporary directory and renamed into place when complete, so an
interrupted training leaves nothing that loads as an agent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from rlservice.agent.learner import Learner
from rlservice.agent.normalizer import ObservationNormalizer
from rlservice.agent.policy import Policy
from rlservice.config.run import AgentConfig
from rlservice.data.online_buffer import OnlineReplayBuffer
from rlservice.errors import DatasetError
from rlservice.paths import home
from rlservice.runtime.rollout import Rollout, RolloutPool
from rlservice.runtime.session import ray_session
from rlservice.training.evaluation import evaluate

ALGORITHM = "td3"
TD3 = AgentConfig(algorithm="td3", num_critics=2, critic_layernorm=False, bc_weight=0.0, normalize_observations=False)
EVAL_SEED_OFFSET = 10_000  # evaluation episodes use seeds apart from the rollout workers'


class BehaviourConfig(BaseModel):
    """How the behaviour agent is trained; None fields are derived from the budget (`resolve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentConfig = TD3
    num_workers: int = Field(2, ge=1)
    steps_per_call: int = Field(250, ge=1, description="env steps a worker collects per request")
    start_steps: int | None = Field(None, ge=0, description="uniform random steps first; default min(10000, budget/10)")
    exploration_std: float = Field(0.1, ge=0)
    eval_every: int | None = Field(None, ge=1, description="env steps between checkpoints; default budget/50")
    eval_episodes: int = Field(10, ge=10)
    batch_size: int = Field(256, ge=1)
    updates_per_step: float = Field(1.0, gt=0)
    device: str = "cpu"

    def resolve(self, budget: int) -> "BehaviourConfig":
        return self.model_copy(update={
            "start_steps": min(10_000, budget // 10) if self.start_steps is None else self.start_steps,
            "eval_every": max(1, budget // 50) if self.eval_every is None else self.eval_every,
        })


@dataclass(frozen=True)
class Checkpoint:
    env_step: int  # transitions collected when it was taken: its position in the replay buffer
    updates: int
    return_mean: float
    return_std: float


class BehaviourAgent:
    """A complete cache entry."""

    def __init__(self, directory: Path):
        info = json.loads((directory / "agent.json").read_text())
        self.directory = directory
        self.env_id, self.seed, self.budget = info["env_id"], info["seed"], info["budget"]
        self.config = BehaviourConfig.model_validate(info["config"])
        self.checkpoints = [Checkpoint(**c) for c in info["checkpoints"]]
        self.info = info

    @property
    def expert(self) -> Checkpoint:
        return self.checkpoints[-1]

    def medium(self, ref_min_score: float) -> Checkpoint:
        """The checkpoint whose return is closest to a third of the way from random to expert."""
        target = ref_min_score + (self.expert.return_mean - ref_min_score) / 3
        return min(self.checkpoints, key=lambda c: abs(c.return_mean - target))

    def policy(self, checkpoint: Checkpoint) -> Policy:
        state = torch.load(self.directory / "checkpoints" / f"{checkpoint.env_step}.pt", weights_only=True)
        a = self.config.agent
        return Policy.from_state_dict(state, a.actor_hidden, a.actor_layers, a.actor_layernorm)

    def buffer(self) -> OnlineReplayBuffer:
        state = torch.load(self.directory / "buffer.pt", weights_only=True)
        buffer = OnlineReplayBuffer(state["obs"].shape[1], state["actions"].shape[1], state["capacity"])
        buffer.load_state_dict(state)
        return buffer


def cache_dir(env_id: str, seed: int, budget: int) -> Path:
    return home() / "behaviour" / f"{env_id}-s{seed}-b{budget}"


def load_or_train(
    env_id: str, seed: int, budget: int, config: BehaviourConfig | None = None, progress: bool = True
) -> BehaviourAgent:
    """The cached agent of (env, seed, budget), trained first if there is none."""
    config = (config or BehaviourConfig()).resolve(budget)
    directory = cache_dir(env_id, seed, budget)
    if not directory.exists():
        _train_into(directory, env_id, seed, budget, config, progress)
    if not (directory / "agent.json").is_file():
        raise DatasetError(f"behaviour agent cache {directory} is incomplete (no agent.json); remove it to retrain")
    agent = BehaviourAgent(directory)
    if agent.config != config:
        raise DatasetError(
            f"behaviour agent cache {directory} was trained with another config; remove it to retrain with this one"
        )
    return agent


def _train_into(directory: Path, env_id: str, seed: int, budget: int, config: BehaviourConfig, progress: bool) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        info = train(env_id, seed, budget, config, staging, progress)
        (staging / "agent.json").write_text(json.dumps(info, indent=2))
        try:
            staging.rename(directory)
        except OSError:
            if not (directory / "agent.json").is_file():  # not just a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train(env_id: str, seed: int, budget: int, config: BehaviourConfig, out: Path, progress: bool = True) -> dict:
    """Train online for `budget` env steps; write checkpoints and the buffer to `out`; return agent.json's content."""
    started = time.monotonic()
    with ray_session(), _learner_threads(config):
        run = _Run(env_id, seed, budget, config, out)
        try:
            run.loop(progress)
        finally:
            run.pool.close()
    torch.save(run.buffer.state_dict(), out / "buffer.pt")
    return {
        "env_id": env_id,
        "seed": seed,
        "budget": budget,
        "algorithm": ALGORITHM,
        "config": config.model_dump(mode="json"),
        "checkpoints": [asdict(c) for c in run.checkpoints],
        "updates_while_collecting": run.overlapped,
        "learner_wait_seconds": round(run.wait_seconds, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
    }


class _Run:
    """One training run: learner, replay buffer and rollout pool, paced against each other."""

    def __init__(self, env_id: str, seed: int, budget: int, config: BehaviourConfig, out: Path):
        env = gym.make(env_id)
        env.close()
        self.low, self.high = env.action_space.low, env.action_space.high
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        self.env_id, self.seed, self.budget, self.config, self.out = env_id, seed, budget, config, out
        # reward_min only sets PARS's Q floor, which TD3 (pa_alpha 0) does not use.
        self.learner = Learner(config.agent, obs_dim, act_dim, reward_min=0.0, seed=seed, total_steps=budget,
                               device=config.device)
        self.buffer = OnlineReplayBuffer(obs_dim, act_dim, capacity=budget, device=config.device)
        self.normalizer = ObservationNormalizer.identity(obs_dim)
        a = config.agent
        # At most one CPU per worker, fewer if the cluster is smaller, so that every worker gets placed.
        cpus = min(1.0, ray.cluster_resources().get("CPU", 1.0) / config.num_workers)
        self.pool = RolloutPool(env_id, config.num_workers, seed, exploration_std=config.exploration_std,
                                start_steps=config.start_steps, actor_shape=(a.actor_hidden, a.actor_layers, a.actor_layernorm),
                                num_cpus=cpus)
        self.lead = config.num_workers * config.steps_per_call
        self.total_updates = self._updates_due(budget)
        self.submitted = self.overlapped = 0
        self.wait_seconds = 0.0
        self.sent_policy_of = -1  # learner step whose policy the pool has
        self.checkpoints: list[Checkpoint] = []
        self.recent_returns: deque[float] = deque(maxlen=20)  # of exploration episodes, for the progress bar
        (out / "checkpoints").mkdir()

    def _updates_due(self, collected: int) -> int:
        """TD3's schedule: `updates_per_step` gradient steps per env step after the random start."""
        return int(self.config.updates_per_step * max(0, collected - self.config.start_steps))

    def loop(self, progress: bool) -> None:
        cfg, learner = self.config, self.learner
        next_eval = cfg.eval_every
        bar = tqdm(total=self.budget, desc=f"behaviour agent {self.env_id}", unit="step", disable=not progress,
                   dynamic_ncols=True)
        with bar:
            while True:
                for rollout in self.pool.poll():
                    self._receive(rollout, bar)
                if next_eval <= self.buffer.added < self.budget:
                    self._checkpoint(bar)
                    next_eval = (self.buffer.added // cfg.eval_every + 1) * cfg.eval_every
                self._submit()
                due = self._updates_due(self.buffer.added)
                allowed = min(self.total_updates, due + self.lead) if due > 0 else 0
                if learner.steps < allowed:
                    learner.update(self.buffer.sample(learner.generator, 1, cfg.batch_size))
                    self.overlapped += self.pool.in_flight > 0
                elif self.pool.in_flight:  # ahead of TD3's one update per env step: wait for experience
                    waited = time.monotonic()
                    for rollout in self.pool.wait():
                        self._receive(rollout, bar)
                    self.wait_seconds += time.monotonic() - waited
                else:
                    break
            self._checkpoint(bar)

    def _receive(self, rollout: Rollout, bar: tqdm) -> None:
        self.buffer.add(rollout.transitions)
        self.recent_returns.extend(rollout.episode_returns)
        bar.update(len(rollout.transitions))
        if self.recent_returns:
            bar.set_postfix(updates=self.learner.steps, episode_return=f"{np.mean(self.recent_returns):.0f}", refresh=False)

    def _submit(self) -> None:
        """Keep idle workers busy while collection is at most `lead` steps ahead of the learner."""
        cfg = self.config
        ahead_limit = cfg.start_steps + self.learner.steps / cfg.updates_per_step + self.lead
        while self.pool.idle and self.submitted < self.budget and self.submitted < ahead_limit:
            if self.sent_policy_of != self.learner.steps:
                self.pool.set_policy(self._policy().state_dict())
                self.sent_policy_of = self.learner.steps
            steps = min(cfg.steps_per_call, self.budget - self.submitted)
            self.pool.submit(steps)
            self.submitted += steps

    def _checkpoint(self, bar: tqdm) -> None:
        policy = self._policy()
        step = self.buffer.added
        # Only the returns are wanted; the reference scores (0, 1) just satisfy evaluate's normalisation.
        returns = evaluate(policy, self.env_id, self.config.eval_episodes, self.seed + EVAL_SEED_OFFSET, 0.0, 1.0).returns
        torch.save(policy.state_dict(), self.out / "checkpoints" / f"{step}.pt")
        self.checkpoints.append(Checkpoint(step, self.learner.steps, float(returns.mean()), float(returns.std())))
        if not bar.disable:
            bar.write(f"env step {step}: evaluation return {returns.mean():.1f} +- {returns.std():.1f}")

    def _policy(self) -> Policy:
        return Policy.from_learner(self.learner, 0, self.normalizer, self.low, self.high)


@contextmanager
def _learner_threads(config: BehaviourConfig):
    """On CPU, leave a core to each rollout worker: with intra-op threads competing with the
    workers for the same cores, an update gets several times slower, not faster."""
    previous = torch.get_num_threads()
    if config.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - config.num_workers))
    try:
        yield
    finally:
        torch.set_num_threads(previous)

