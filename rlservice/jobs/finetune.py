"""Offline-to-online fine-tuning of a registered model (SPEC.md, Offline-to-online fine-tuning).

The learner comes back whole from the registry (actor, critics, targets, V, optimisers,
normaliser, config, dataset id). Ray rollout workers step the env with the current policy plus
exploration noise; the learner applies `utd` updates per env step received, each batch drawing a
fraction `offline_ratio` of its rows from the offline dataset and the rest from the online buffer
("uniform": offline and online transitions as one buffer, sampled uniformly).

Each method fine-tunes in its own regime (`regime`): the registered model's preset and dataset
give the defaults (PARS: UTD 20, symmetric sampling, the online alpha/beta/actor subset of its
tables; DMG: its official train_finetune.py), and every setting given explicitly overrides them.

Every `eval_every` env steps the policy is evaluated and the run checkpointed. Rollouts never run
past that point: there the workers are drained and the learner catches up, so a checkpoint holds
a whole number of env steps, exactly `utd` updates for each, and every transition collected so
far (`--resume` then loses no experience; the workers start fresh episodes).

Ctrl-C or SIGTERM stops at the next update: the rollouts in flight are received, the evaluation
in flight is waited for, and `latest` is saved with the online buffer (its learner may then be
short of `utd` updates per env step: a resumed run catches up first). The run ends `interrupted`
(MLflow KILLED); `--resume` continues in a new MLflow run tagged `resumed_from_run`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from rlservice.agent import dmg
from rlservice.agent.learner import Batch
from rlservice.config.presets import Knob, default_eval_episodes, domain_of, resolve
from rlservice.config.run import AgentConfig, first_error
from rlservice.data.buffer import ReplayBuffer
from rlservice.data.online_buffer import OnlineReplayBuffer
from rlservice.errors import ConfigError, RLServiceError
from rlservice.paths import home
from rlservice.runtime.evaluators import RayEvaluator
from rlservice.runtime.rollout import Rollout, RolloutPool
from rlservice.runtime.session import ray_session
from rlservice.tracking import registry, runs, store
from rlservice.training.trainer import Trainer, evaluation_record, stop_on_signals

FINETUNED = "finetuned"  # the alias of the latest fine-tuned version
LATEST, PROGRESS, ONLINE_BUFFER = "latest", "finetune.json", "online.pt"
# The network shapes come from the registered model: its weights would not fit other ones.
FIXED_KNOBS = {"algorithm", "num_critics", "critic_hidden", "critic_layers", "critic_layernorm",
               "actor_hidden", "actor_layers", "actor_layernorm", "normalize_observations"}


class FinetuneSettings(BaseModel):
    """How the online phase runs; saved with every checkpoint, so `resume` runs the same way."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: from the registered model's method and dataset (`regime`).
    online_steps: int = Field(ge=1)
    utd: int | None = Field(None, ge=1, description="learner updates per env step")
    offline_ratio: Annotated[float, Field(ge=0, le=1)] | Literal["uniform"] | None = Field(
        None, description="expected fraction of each batch from the offline data; uniform: one buffer")
    rollout_workers: int = Field(1, ge=1)
    steps_per_call: int = Field(50, ge=1, description="env steps a worker collects per request")
    exploration_std: float | None = Field(None, ge=0, description="default 0.1 on MuJoCo, 0.05 elsewhere")
    eval_every: int = Field(5000, ge=1, description="env steps between evaluations and checkpoints")
    eval_episodes: int | None = Field(None, ge=1, description="default 100 on AntMaze, 10 elsewhere")
    dmg_decay: bool | None = Field(None, description="DMG's lambda/nu decay; default on when V enters the target")
    lam_end: float = Field(0.5, ge=0, le=1)
    nu_end: float = Field(0.005, ge=0, description="DMG's final nu (an absolute value)")
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
    regime: dict[str, Any]  # setting or knob -> {"value", "source"}


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


_SETTINGS = ("utd", "offline_ratio", "exploration_std", "dmg_decay", "lam_end", "nu_end", "eval_episodes")


def regime(s: FinetuneSettings, preset: str | None, dataset_id: str, offline: AgentConfig,
           action_dim: int) -> tuple[FinetuneSettings, dict[str, Any], dict[str, dict[str, Any]]]:
    """The fine-tuning regime of the method the model continues: (settings with every default filled
    in, online agent knobs, {name: {"value", "source"}} of both). Explicit settings and overrides win."""
    known: dict[str, Knob] = {}
    if preset is not None:
        known = {k.removeprefix("finetune."): v for k, v in resolve(preset, dataset_id, action_dim).knobs.items()
                 if k.startswith("finetune.") and v.value is not None}
    elif offline.num_critics > 2:
        known["actor_q"] = Knob("subset_mean", "SPEC.md fine-tuning (no preset): the mean of a random critic subset")
    fallback = {"utd": 20, "offline_ratio": 0.5, "exploration_std": 0.1 if domain_of(dataset_id) == "mujoco" else 0.05,
                "dmg_decay": offline.algorithm == "td3" and offline.dmg_lambda < 1,
                "eval_episodes": default_eval_episodes(dataset_id)}
    table: dict[str, dict[str, Any]] = {}
    values: dict[str, Any] = {}
    explicit = s.model_fields_set
    for name in _SETTINGS:
        if name in explicit and getattr(s, name) is not None:
            value, source = getattr(s, name), "given"
        elif name in known:
            value, source = known[name].value, known[name].source
        elif name in fallback:
            value, source = fallback[name], "project default"
        else:
            value, source = getattr(s, name), "field default"
        values[name] = value
        table[name] = {"value": value, "source": source}
    online = {"actor_lr_schedule": "constant"}
    table["actor_lr_schedule"] = {"value": "constant", "source": "project: the online phase runs at constant rates"}
    for name, knob in known.items():
        if name in AgentConfig.model_fields:
            # A paper's subset of "all 10 critics" on a smaller ensemble: all of them.
            value = min(knob.value, offline.num_critics) if name == "actor_q_subset" else knob.value
            online[name] = value
            table[name] = {"value": value, "source": knob.source}
    for name, value in s.overrides.items():
        online[name] = value
        table[name] = {"value": value, "source": "given (--set)"}
    return s.model_copy(update=values), online, table


def online_agent_config(offline: AgentConfig, online: dict[str, Any]) -> AgentConfig:
    """The offline config with the regime's online knobs (`regime`)."""
    try:
        cfg = AgentConfig.model_validate({**offline.model_dump(), **online})
    except ValidationError as exc:
        raise ConfigError(first_error(exc)) from None
    if cfg.has_value_net != offline.has_value_net:
        raise ConfigError("the overrides would add or remove the value network V, which the registered model fixes")
    return cfg


def mixed_batch(offline: ReplayBuffer, online: OnlineReplayBuffer, generator: torch.Generator, seeds: int,
                batch_size: int, offline_ratio: float | str) -> Batch:
    """Each row from the offline data with probability `offline_ratio`, else from the online buffer;
    "uniform": uniformly from both together."""
    if offline_ratio == "uniform":  # one buffer: each row offline in proportion to the offline share
        offline_ratio = len(offline) / (len(offline) + len(online))
    off = offline.sample(generator, seeds, batch_size)
    on = online.sample(generator, seeds, batch_size)
    from_offline = torch.rand((seeds, batch_size), generator=generator, device=off.obs.device) < offline_ratio

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(from_offline.view(seeds, batch_size, *([1] * (a.dim() - 2))), a, b)

    return Batch(*(pick(getattr(off, f.name), getattr(on, f.name)) for f in fields(Batch)))


def decayed_config(base: AgentConfig, current: AgentConfig, updates: int, lam_end: float, nu_end: float) -> AgentConfig:
    """DMG's online schedule after `updates` gradient steps (dmg.finetune_decay): lambda and nu
    (bc_weight) move together, also when lambda starts at lam_end; `current` back when nothing changed."""
    lam, nu = dmg.finetune_decay(updates, base.dmg_lambda, base.bc_weight, lam_end, nu_end)
    if (lam, nu) == (current.dmg_lambda, current.bc_weight):
        return current
    return base.model_copy(update={"dmg_lambda": lam, "bc_weight": nu})


def finetune(model_ref: str, online_steps: int, *, tracking_uri: str | None = None, run_dir: str | Path | None = None,
             stop_at: int | None = None, progress: bool = True, announce=None, **values) -> FinetuneResult:
    """Fine-tune registered model `model_ref` (models:/NAME@ALIAS or models:/NAME/VERSION) online
    for `online_steps` env steps; `values` are `FinetuneSettings` fields (unset ones follow the
    model's method, `regime`). With `stop_at`, stop (checkpointed, status "interrupted") after that
    many env steps. `announce(line)` hears the regime used."""
    s = settings(online_steps, **values)
    uri = store.resolve_tracking_uri(tracking_uri)
    store.check_reachable(uri)
    name, version = _parse_ref(model_ref)
    run_dir = Path(run_dir) if run_dir else home() / "finetune" / f"{name}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    loaded, parent = registry.load_registered_trainer(model_ref, tracking_uri=uri, run_dir=run_dir)
    d = loaded.data
    s, online, table = regime(s, loaded.config.preset, loaded.config.dataset.id, loaded.config.agent,
                              int(d.actions.shape[1]))
    if announce is not None:
        announce(f"fine-tuning regime ({loaded.config.preset or 'no preset'} on {loaded.config.dataset.id}):")
        for name, knob in table.items():
            announce(f"  {name} {knob['value']}  ({knob['source']})")
    cfg = online_agent_config(loaded.config.agent, online)
    trainer = Trainer(loaded.config.model_copy(update={"agent": cfg}), run_dir, data=loaded.data)
    trainer.restore(parent["checkpoint"])
    learner = trainer.learner
    # The optimisers restart at the configured rates (an offline cosine schedule has annealed the actor's to ~0).
    for opt, lr in ((learner.actor_opt, cfg.actor_lr), (learner.critic_opt, cfg.critic_lr), (learner.value_opt, cfg.value_lr)):
        if opt is not None:
            opt.lr = lr
    parent = {k: str(parent[k]) for k in ("model_uri", "name", "version", "run_id", "dataset")}
    progress_state = {"settings": s.model_dump(), "regime": table, "parent": parent, "tracking_uri": uri, "env_steps": 0,
                      "updates": 0, "history": [], "mlflow_run_ids": []}
    return _Session(trainer, progress_state, None).run(stop_at, progress)


def resume(run_dir: str | Path, *, stop_at: int | None = None, progress: bool = True) -> FinetuneResult:
    """Continue an interrupted fine-tuning from its last checkpoint in `run_dir`, online buffer included."""
    checkpoint = Path(run_dir) / LATEST
    if not (checkpoint / PROGRESS).is_file():
        raise RLServiceError(f"{str(run_dir)!r} holds no fine-tuning checkpoint (expected {LATEST}/{PROGRESS})")
    state = json.loads((checkpoint / PROGRESS).read_text())
    total = state["settings"]["online_steps"]
    if stop_at is not None and not state["env_steps"] < stop_at <= total:
        raise ConfigError(f"--online-steps {stop_at}: the run is at env step {state['env_steps']} of the "
                          f"{total} it was started with (its online buffer holds no more)")
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
        self.decay, self.exploration_std = s.dmg_decay, s.exploration_std  # filled in by `regime`
        self.actor_shape = (cfg.actor_hidden, cfg.actor_layers, cfg.actor_layernorm)
        self.metrics: dict[str, torch.Tensor] = {}
        self.stop_requested = False

    def request_stop(self) -> None:
        self.stop_requested = True

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
                with stop_on_signals(self.request_stop):  # set after Ray's start, whose handlers it replaces
                    while self.env_steps < target:
                        boundary = min(target, (self.env_steps // s.eval_every + 1) * s.eval_every)
                        if not self._advance(pool, boundary):
                            status = "diverged"
                            break
                        if self.stop_requested and self.env_steps < boundary:
                            status = "interrupted"
                            break
                        evaluator.submit(self.env_steps, self.trainer.policies())
                        self._collect(evaluator.finished())
                        self._save()
                        if self.stop_requested:
                            status = "interrupted" if self.env_steps < s.online_steps else status
                            break
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
            mlflow_run_id=self.mlflow.run_id, regime=self.state.get("regime", {}),
        )

    # ----------------------------------------------------------------- collecting and learning
    def _advance(self, pool: RolloutPool, boundary: int) -> bool:
        """Collect up to env step `boundary` while updating; return with the learner caught up
        (False if it diverged), or short of the boundary once a stop is requested. Workers run at
        most one call each ahead of the learner."""
        s, lead = self.s, self.s.rollout_workers * self.s.steps_per_call
        submitted, sent = self.env_steps, None
        while self.env_steps < boundary or self.updates < s.utd * self.env_steps:
            if self.stop_requested and pool.in_flight:  # keep what was collected, submit no more
                for rollout in pool.wait():
                    self._receive(rollout)
                continue
            if self.stop_requested and self.env_steps < boundary:
                return True  # the updates these env steps are owed come after a resume
            # (at the boundary itself the learner catches up and the boundary is evaluated as usual)
            for rollout in pool.poll():
                self._receive(rollout)
            while pool.idle and not self.stop_requested and submitted < min(boundary, self.updates / s.utd + lead):
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
            learner.cfg = decayed_config(self.base_cfg, learner.cfg, self.updates, s.lam_end, s.nu_end)
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

