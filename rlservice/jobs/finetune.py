"""Offline-to-online fine-tuning of a registered model (SPEC.md, Offline-to-online fine-tuning).

The learner comes back whole from the registry (actor, critics, targets, V, optimisers,
normaliser, config, dataset id). Ray rollout workers step the env with the current policy plus
exploration noise; the learner applies `utd` updates per env step received, each batch drawing a
fraction `offline_ratio` of its rows from the offline dataset and the rest from the online buffer.

Every `eval_every` env steps the policy is evaluated and the run checkpointed. Rollouts never run
past that point: there the workers are drained and the learner catches up, so a checkpoint holds
a whole number of env steps, exactly `utd` updates for each, and every transition collected so
far (`--resume` then loses no experience; the workers start fresh episodes).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from rlservice.agent import dmg
from rlservice.agent.learner import Batch
from rlservice.config.presets import domain_of
from rlservice.config.run import AgentConfig, first_error
from rlservice.data.buffer import ReplayBuffer
from rlservice.data.online_buffer import OnlineReplayBuffer
from rlservice.errors import ConfigError, RLServiceError
from rlservice.paths import home
from rlservice.runtime.evaluators import RayEvaluator
from rlservice.runtime.rollout import Rollout, RolloutPool
from rlservice.runtime.session import ray_session
from rlservice.tracking import registry, runs, store
from rlservice.training.trainer import Trainer, evaluation_record

FINETUNED = "finetuned"  # the alias of the latest fine-tuned version
LATEST, PROGRESS, ONLINE_BUFFER = "latest", "finetune.json", "online.pt"
# The network shapes come from the registered model: its weights would not fit other ones.
FIXED_KNOBS = {"algorithm", "num_critics", "critic_hidden", "critic_layers", "critic_layernorm",
               "actor_hidden", "actor_layers", "actor_layernorm", "normalize_observations"}


class FinetuneSettings(BaseModel):
    """How the online phase runs; saved with every checkpoint, so `resume` runs the same way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    online_steps: int = Field(ge=1)
    utd: int = Field(20, ge=1, description="learner updates per env step")
    offline_ratio: float = Field(0.5, ge=0, le=1, description="expected fraction of each batch from the offline data")
    rollout_workers: int = Field(1, ge=1)
    steps_per_call: int = Field(50, ge=1, description="env steps a worker collects per request")
    exploration_std: float | None = Field(None, ge=0, description="default 0.1 on MuJoCo, 0.05 elsewhere")
    eval_every: int = Field(5000, ge=1, description="env steps between evaluations and checkpoints")
    eval_episodes: int = Field(10, ge=1)
    dmg_decay: bool | None = Field(None, description="DMG's lambda/nu decay; default on when V enters the target")
    lam_end: float = Field(0.5, ge=0, le=1)
    nu_end_ratio: float = Field(0.005, ge=0)
    overrides: dict[str, Any] = Field(default_factory=dict, description="agent knobs for the online phase")
    seed: int = Field(0, ge=0)
    experiment: str = "rlservice-finetune"


@dataclass
class FinetuneResult:
    status: str  # completed | interrupted | diverged
    model: str
    parent_version: str
    new_version: str | None
    online_steps: int  # env steps done so far
    updates: int
    score_before: float | None
    score_after: float | None
    wall_time_s: float
    run_dir: str
    mlflow_run_id: str


def settings(online_steps: int, **values) -> FinetuneSettings:
    """Validated settings (one-line ConfigError); agent knobs in `overrides` are checked by name
    here and by value once the model's config is known."""
    try:
        s = FinetuneSettings(online_steps=online_steps, **values)
    except ValidationError as exc:
        raise ConfigError(first_error(exc)) from None
    for key, value in s.overrides.items():
        if key not in AgentConfig.model_fields:
            raise ConfigError(f"unknown agent knob {key!r} (value {value!r})")
        if key in FIXED_KNOBS:
            raise ConfigError(f"{key}={value!r}: the network shapes come from the registered model and cannot change")
    return s


def online_agent_config(offline: AgentConfig, s: FinetuneSettings) -> AgentConfig:
    """The offline config with the online defaults of SPEC.md (actor on the mean of a random critic
    subset when there are more than two critics; constant learning rates) and the overrides."""
    values = {"actor_lr_schedule": "constant", **({"actor_q": "subset_mean"} if offline.num_critics > 2 else {}), **s.overrides}
    try:
        cfg = AgentConfig.model_validate({**offline.model_dump(), **values})
    except ValidationError as exc:
        raise ConfigError(first_error(exc)) from None
    if cfg.has_value_net != offline.has_value_net:
        raise ConfigError("the overrides would add or remove the value network V, which the registered model fixes")
    return cfg


def mixed_batch(offline: ReplayBuffer, online: OnlineReplayBuffer, generator: torch.Generator, seeds: int,
                batch_size: int, offline_ratio: float) -> Batch:
    """Each row from the offline data with probability `offline_ratio`, else from the online buffer."""
    off = offline.sample(generator, seeds, batch_size)
    on = online.sample(generator, seeds, batch_size)
    from_offline = torch.rand((seeds, batch_size), generator=generator, device=off.obs.device) < offline_ratio

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(from_offline.view(seeds, batch_size, *([1] * (a.dim() - 2))), a, b)

    return Batch(*(pick(getattr(off, f.name), getattr(on, f.name)) for f in fields(Batch)))


def finetune(model_ref: str, online_steps: int, *, tracking_uri: str | None = None, run_dir: str | Path | None = None,
             stop_at: int | None = None, progress: bool = True, **values) -> FinetuneResult:
    """Fine-tune registered model `model_ref` (models:/NAME@ALIAS or models:/NAME/VERSION) online
    for `online_steps` env steps; `values` are `FinetuneSettings` fields. With `stop_at`, stop
    (checkpointed, status "interrupted") after that many env steps."""
    s = settings(online_steps, **values)
    uri = store.resolve_tracking_uri(tracking_uri)
    store.check_reachable(uri)
    name, version = _parse_ref(model_ref)
    run_dir = Path(run_dir) if run_dir else home() / "finetune" / f"{name}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    loaded, parent = registry.load_registered_trainer(model_ref, tracking_uri=uri, run_dir=run_dir)
    cfg = online_agent_config(loaded.config.agent, s)
    trainer = Trainer(loaded.config.model_copy(update={"agent": cfg}), run_dir, data=loaded.data)
    trainer.restore(parent["checkpoint"])
    learner = trainer.learner
    # The optimisers restart at the configured rates (an offline cosine schedule has annealed the actor's to ~0).
    for opt, lr in ((learner.actor_opt, cfg.actor_lr), (learner.critic_opt, cfg.critic_lr), (learner.value_opt, cfg.value_lr)):
        if opt is not None:
            opt.lr = lr
    parent = {k: str(parent[k]) for k in ("model_uri", "name", "version", "run_id", "dataset")}
    progress_state = {"settings": s.model_dump(), "parent": parent, "tracking_uri": uri, "env_steps": 0,
                      "updates": 0, "history": [], "mlflow_run_ids": []}
    return _Session(trainer, progress_state, None).run(stop_at, progress)


def resume(run_dir: str | Path, *, stop_at: int | None = None, progress: bool = True) -> FinetuneResult:
    """Continue an interrupted fine-tuning from its last checkpoint in `run_dir`, online buffer included."""
    checkpoint = Path(run_dir) / LATEST
    if not (checkpoint / PROGRESS).is_file():
        raise RLServiceError(f"{str(run_dir)!r} holds no fine-tuning checkpoint (expected {LATEST}/{PROGRESS})")
    state = json.loads((checkpoint / PROGRESS).read_text())
    store.check_reachable(state["tracking_uri"])
    trainer = Trainer.from_checkpoint(checkpoint, run_dir=run_dir)
    buffer = torch.load(checkpoint / ONLINE_BUFFER, weights_only=True)
    return _Session(trainer, state, buffer).run(stop_at, progress)


def _parse_ref(ref: str) -> tuple[str, str]:
    """(name, alias or version) of a model reference, checked before anything is loaded."""
    uri = registry.model_uri(ref).removeprefix("models:/")
    name, _, version = uri.replace("@", "/").partition("/")
    return name, version


class _Session:
    """One process's part of a fine-tuning run: from its state (fresh or resumed) to `stop_at`."""

    def __init__(self, trainer: Trainer, state: dict[str, Any], buffer_state: dict | None):
        self.trainer, self.state = trainer, state
        self.s = s = FinetuneSettings.model_validate(state["settings"])
        self.parent = state["parent"]
        self.learner, d = trainer.learner, trainer.data
        self.online = OnlineReplayBuffer(d.observations.shape[1], d.actions.shape[1], s.online_steps,
                                         self.learner.device, normalizer=trainer.normalizer)
        if buffer_state is not None:
            self.online.load_state_dict(buffer_state)
        self.env_steps, self.updates, self.history = state["env_steps"], state["updates"], state["history"]
        self.base_cfg = cfg = self.learner.cfg
        self.decay = s.dmg_decay if s.dmg_decay is not None else (cfg.algorithm == "td3" and cfg.dmg_lambda < 1)
        self.exploration_std = s.exploration_std
        if self.exploration_std is None:
            self.exploration_std = 0.1 if domain_of(self.parent["dataset"]) == "mujoco" else 0.05
        self.actor_shape = (cfg.actor_hidden, cfg.actor_layers, cfg.actor_layernorm)
        self.metrics: dict[str, torch.Tensor] = {}

    def run(self, stop_at: int | None, progress: bool) -> FinetuneResult:
        s, started = self.s, time.monotonic()
        target = s.online_steps if stop_at is None else min(stop_at, s.online_steps)
        uri = self.state["tracking_uri"]
        self.mlflow = self._start_run(uri)
        status = "interrupted" if target < s.online_steps else "completed"
        with ray_session():
            cpus = min(1.0, ray.cluster_resources().get("CPU", 1.0) / (s.rollout_workers + 1))
            d = self.trainer.data
            evaluator = RayEvaluator(1, cpus, d.env_id, s.eval_episodes, s.seed, d.ref_min_score, d.ref_max_score,
                                     self.actor_shape)
            # A resumed run's workers draw other noise than the first ones did.
            pool = RolloutPool(d.env_id, s.rollout_workers, s.seed + self.env_steps, exploration_std=self.exploration_std,
                               start_steps=0, actor_shape=self.actor_shape, num_cpus=cpus)
            self.bar = tqdm(total=s.online_steps, initial=self.env_steps, desc="finetune", unit="env step",
                            disable=not progress, dynamic_ncols=True)
            try:
                if self.env_steps == 0:
                    evaluator.submit(0, self.trainer.policies())  # the registered policy: the score before
                while self.env_steps < target:
                    boundary = min(target, (self.env_steps // s.eval_every + 1) * s.eval_every)
                    if not self._advance(pool, boundary):
                        status = "diverged"
                        break
                    evaluator.submit(self.env_steps, self.trainer.policies())
                    self._collect(evaluator.finished())
                    self._save()
            except BaseException:
                self.mlflow.finish("failed", self.history)
                raise
            finally:
                self.bar.close()
                pool.close()
            self._collect(evaluator.wait())
            evaluator.close()
        self._save()
        new_version = self._register() if status == "completed" else None
        after = self.history[-1] if self.history and self.history[-1]["step"] == self.env_steps else None
        self.mlflow.finish(status, self.history, score=after and after["normalized_score"],
                           score_std=after and after["normalized_score_std"])
        before = self.history[0] if self.history and self.history[0]["step"] == 0 else None
        return FinetuneResult(
            status=status, model=self.parent["name"], parent_version=self.parent["version"], new_version=new_version,
            online_steps=self.env_steps, updates=self.updates,
            score_before=before and before["normalized_score"], score_after=after and after["normalized_score"],
            wall_time_s=round(time.monotonic() - started, 1), run_dir=str(self.trainer.run_dir),
            mlflow_run_id=self.mlflow.run_id,
        )

    # ----------------------------------------------------------------- collecting and learning
    def _advance(self, pool: RolloutPool, boundary: int) -> bool:
        """Collect up to env step `boundary` while updating; return with the learner caught up
        (False if it diverged). Workers run at most one call each ahead of the learner."""
        s, lead = self.s, self.s.rollout_workers * self.s.steps_per_call
        submitted, sent = self.env_steps, None
        while self.env_steps < boundary or self.updates < s.utd * self.env_steps:
            for rollout in pool.poll():
                self._receive(rollout)
            while pool.idle and submitted < min(boundary, self.updates / s.utd + lead):
                if sent != self.learner.steps:
                    pool.set_policy(self.trainer.policies()[0].state_dict())
                    sent = self.learner.steps
                steps = min(s.steps_per_call, boundary - submitted)
                pool.submit(steps)
                submitted += steps
            if self.updates < s.utd * self.env_steps:
                if not self._update():
                    return False
            elif pool.in_flight:
                for rollout in pool.wait():
                    self._receive(rollout)
        return True

    def _receive(self, rollout: Rollout) -> None:
        self.online.add(rollout.transitions)
        self.env_steps += len(rollout.transitions)
        self.bar.update(len(rollout.transitions))
        if len(rollout.episode_returns):
            mean = float(np.mean(rollout.episode_returns))
            self.mlflow.log_metrics(self.env_steps, {"episode_return": mean})
            self.bar.set_postfix(updates=self.updates, episode_return=f"{mean:.0f}", refresh=False)

    def _update(self) -> bool:
        learner, trainer, s = self.learner, self.trainer, self.s
        if self.decay:
            lam, nu = dmg.finetune_decay(self.updates, self.base_cfg.dmg_lambda, self.base_cfg.bc_weight,
                                         s.lam_end, s.nu_end_ratio)
            if lam != learner.cfg.dmg_lambda:
                learner.cfg = self.base_cfg.model_copy(update={"dmg_lambda": lam, "bc_weight": nu})
        t = trainer.config.train
        batch = mixed_batch(trainer.buffer, self.online, learner.generator, t.num_seeds, t.batch_size, s.offline_ratio)
        self.metrics.update(learner.update(batch))  # actor_loss is only there on actor steps: keep the last
        self.updates += 1
        if self.updates % t.log_every:
            return True
        logged = trainer.read_metrics(self.metrics)
        logged.update(updates=self.updates, dmg_lambda=learner.cfg.dmg_lambda, bc_weight=learner.cfg.bc_weight)
        self.mlflow.log_metrics(self.env_steps, logged)
        return not logged["diverged"]

    # ----------------------------------------------------------------- evaluations, checkpoints, tracking
    def _collect(self, results) -> None:
        for step, evaluations in results:
            record = evaluation_record(step, evaluations)
            self.history.append(record)
            self.mlflow.log_metrics(step, record)
            if not self.bar.disable:
                self.bar.write(f"env step {step}: normalised score {record['normalized_score']:.1f}")

    def _save(self) -> None:
        """Replace `latest` with the trainer, the online buffer and the progress, all at once."""
        run_dir = self.trainer.run_dir
        tmp, old, latest = run_dir / f".{LATEST}-new", run_dir / f".{LATEST}-old", run_dir / LATEST
        shutil.rmtree(tmp, ignore_errors=True)
        self.trainer.save(tmp.name)
        torch.save(self.online.state_dict(), tmp / ONLINE_BUFFER)
        self.state.update(env_steps=self.env_steps, updates=self.updates, history=self.history)
        (tmp / PROGRESS).write_text(json.dumps(self.state, indent=2))
        if latest.exists():
            latest.rename(old)
        tmp.rename(latest)
        shutil.rmtree(old, ignore_errors=True)

    def _start_run(self, uri: str) -> runs.TrialRun:
        t = self.trainer
        params = {**runs.run_params(t.config, action_dim=int(t.data.actions.shape[1]), digest=t.data.digest),
                  "finetune": {k: v for k, v in self.s.model_dump().items() if k != "overrides"},
                  "finetune.overrides": json.dumps(self.s.overrides), "parent": self.parent}
        tags = {runs.KIND_TAG: "finetune", "parent_model": self.parent["name"],
                "parent_version": self.parent["version"], "run_dir": str(t.run_dir)}
        if self.state["mlflow_run_ids"]:
            tags["resumed_from_run"] = self.state["mlflow_run_ids"][-1]
        run = runs.TrialRun(uri, self.s.experiment, None, f"{t.run_dir.name}", params, tags)
        self.state["mlflow_run_ids"].append(run.run_id)
        return run

    def _register(self) -> str:
        """The fine-tuned policy as a new version of the parent's registered model, aliased `finetuned`."""
        uri, p, t = self.state["tracking_uri"], self.parent, self.trainer
        final = t.save("final")
        self.mlflow.log_checkpoint(final)
        last = self.history[-1] if self.history else {}
        tags = {"parent_model": p["name"], "parent_version": p["version"], "online_steps": self.env_steps,
                "run_id": self.mlflow.run_id, "dataset": p["dataset"], "preset": t.config.preset or "none",
                "score": repr(last.get("normalized_score")), "utd": self.s.utd, "offline_ratio": self.s.offline_ratio}
        version = registry.register_policy(uri, self.mlflow.run_id, final, p["name"], tags).version
        store.client(uri).set_registered_model_alias(p["name"], FINETUNED, version)
        return str(version)

