"""Offline training: dataset -> replay buffer -> learner steps -> evaluations -> checkpoints.

No Ray and no MLflow here: the CLI, the Ray trial and the fine-tuning job drive a `Trainer`
and hear about its progress through the `on_log` / `on_eval` callbacks. Evaluation goes
through an `Evaluator`, which runs in-process here and in Ray actors in a tuning trial.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from rlservice.agent.diagnostics import diagnostics, diverged, q_bound
from rlservice.agent.learner import Learner, seed_group_size
from rlservice.agent.normalizer import ObservationNormalizer
from rlservice.agent.policy import Policy
from rlservice.config.run import RunConfig, TrainConfig, first_error
from rlservice.data.buffer import ReplayBuffer
from rlservice.data.minari_io import OfflineData, load_offline_data
from rlservice.errors import ConfigError
from rlservice.training.checkpoint import load_checkpoint, save_checkpoint
from rlservice.training.evaluation import Evaluation, evaluate

DIAGNOSTIC_BATCH = 1024


class Evaluator(Protocol):
    """Evaluates the policies of every seed at a step; may finish later than it is asked.
    Results come back in the order they were submitted; `wait(keep)` blocks until at most
    `keep` evaluations are unfinished and returns the finished ones."""

    def submit(self, step: int, policies: list[Policy]) -> None: ...
    def finished(self) -> list[tuple[int, list[Evaluation]]]: ...
    def wait(self, keep: int = 0) -> list[tuple[int, list[Evaluation]]]: ...


class InlineEvaluator:
    """Evaluates at once, in this process."""

    def __init__(self, env_id: str, episodes: int, seed: int, ref_min: float, ref_max: float):
        self.args = (env_id, episodes, seed, ref_min, ref_max)
        self._done: list[tuple[int, list[Evaluation]]] = []

    def submit(self, step: int, policies: list[Policy]) -> None:
        env_id, episodes, seed, ref_min, ref_max = self.args
        self._done.append((step, [evaluate(p, env_id, episodes, seed, ref_min, ref_max) for p in policies]))

    def finished(self) -> list[tuple[int, list[Evaluation]]]:
        done, self._done = self._done, []
        return done

    def wait(self, keep: int = 0) -> list[tuple[int, list[Evaluation]]]:
        return self.finished()


@dataclass
class TrainResult:
    dataset: str
    preset: str | None
    steps: int
    seed: int
    num_seeds: int
    status: str  # completed | diverged | interrupted
    normalized_score: float | None  # final evaluation, mean over seeds
    normalized_score_std: float | None  # std over seeds
    mean_return: float | None
    best_normalized_score: float | None
    steps_per_second: float
    checkpoint: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("history")
        return out


def check_device(device: str) -> None:
    """Fail with one line when `device` is not a torch device this machine has."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"train.device={device}: not a torch device (cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        if torch.version.cuda is None:
            raise ConfigError(f"train.device={device}: this torch build has no CUDA (torch {torch.__version__})")
        if torch.cuda.device_count() <= (parsed.index or 0):
            raise ConfigError(f"train.device={device}: {torch.cuda.device_count()} CUDA device(s) visible")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={device}: MPS is not available here")


class Trainer:
    def __init__(self, run_config: RunConfig, run_dir: str | Path, data: OfflineData | None = None):
        self.config = run_config
        self.run_dir = Path(run_dir)
        t = run_config.train
        check_device(t.device)
        ds = run_config.dataset
        self.data = data if data is not None else load_offline_data(ds.id, download=ds.download, uri=ds.uri)
        d = self.data
        self.normalizer = (
            ObservationNormalizer.fit(d.observations)
            if run_config.agent.normalize_observations
            else ObservationNormalizer.identity(d.observations.shape[1])
        )
        held_out = held_out_rows(len(d.rewards), t.seed + 1)  # the diagnostics' batch, never trained on
        columns = (self.normalizer(d.observations), d.actions, d.rewards, self.normalizer(d.next_observations), d.terminals)
        self.buffer = ReplayBuffer(*(c[~held_out] for c in columns), device=t.device)
        diag_rows = ReplayBuffer(*(c[held_out] for c in columns), device=t.device)
        self.learner = Learner(
            run_config.agent,
            d.observations.shape[1],
            d.actions.shape[1],
            reward_min=float(d.rewards.min()),
            seeds=t.num_seeds,
            seed=t.seed,
            total_steps=t.steps,
            device=t.device,
            compile=t.compile,
            seed_group=seed_group_size(run_config.agent, t),
            reward_factor=reward_factor(run_config.agent, d),
            matmul=t.matmul,
        )
        cfg = run_config.agent
        max_abs_reward = float(np.abs(d.rewards + cfg.reward_shift).max())
        self.q_limit = cfg.divergence_factor * q_bound(cfg.reward_scale * self.learner.reward_factor, max_abs_reward,
                                                       cfg.discount)
        self.diag_batch = diag_rows.gather(torch.arange(len(diag_rows), device=t.device).expand(t.num_seeds, -1))
        self.diag_rng = torch.Generator(device=t.device).manual_seed(t.seed + 1)  # the diagnostics' own stream
        self.best_score: float | None = None
        self.history: list[dict[str, Any]] = []
        self._pending: dict[int, dict[str, Any]] = {}
        self._evaluated: dict[str, Any] | None = None  # the state of the step last evaluated
        self._stop_requested = False

    def request_stop(self) -> None:
        """Stop after the current step (used by SIGINT/SIGTERM and by callers): the state saved
        is then always that of a whole number of steps."""
        self._stop_requested = True

    # ----------------------------------------------------------------- policies and state
    def policies(self) -> list[Policy]:
        return [
            Policy.from_learner(self.learner, k, self.normalizer, self.data.action_low, self.data.action_high)
            for k in range(self.config.train.num_seeds)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "action_low": torch.from_numpy(self.data.action_low.astype(np.float32)),
            "action_high": torch.from_numpy(self.data.action_high.astype(np.float32)),
            "diag_rng": self.diag_rng.get_state(),
        }

    def info(self) -> dict[str, Any]:
        return {
            "step": self.learner.steps,
            "best_normalized_score": self.best_score,
            "history": self.history,
            "env_id": self.data.env_id,
            "obs_dim": self.learner.obs_dim,
            "act_dim": self.learner.act_dim,
            "ref_min_score": self.data.ref_min_score,
            "ref_max_score": self.data.ref_max_score,
        }

    def save(self, name: str, state: dict[str, Any] | None = None, info: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(self.run_dir / name, state or self.state_dict(), self.config, info or self.info())

    def save_evaluated(self, name: str) -> Path:
        """Save the state of the step whose evaluation came back last (weights, optimisers, RNG,
        history up to and including it): training has moved on since, but a checkpoint reported
        with an evaluation must hold the step that was evaluated."""
        assert self._evaluated is not None, "no evaluation has come back yet"
        return self.save(name, self._evaluated["state"], self._evaluated["info"])

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, run_dir: str | Path | None = None,
                        data: OfflineData | None = None, **train_overrides) -> "Trainer":
        """Rebuild a trainer (data, learner, normaliser, history) from a checkpoint directory; with
        `train_overrides` (e.g. steps=...) the training budget can be extended. `data` is the
        dataset when the caller has it already (a Tune trial gets it from the driver); else it
        is read as the checkpoint's config says."""
        _, run_config, _ = load_checkpoint(checkpoint_dir)
        if train_overrides:
            try:
                train = TrainConfig.model_validate({**run_config.train.model_dump(), **train_overrides})
            except ValidationError as exc:
                raise ConfigError(first_error(exc)) from None
            run_config = run_config.model_copy(update={"train": train})
        trainer = cls(run_config, run_dir or Path(checkpoint_dir).parent, data=data)
        trainer.restore(checkpoint_dir)
        return trainer

    def restore(self, checkpoint_dir: str | Path) -> None:
        """Continue exactly where the checkpoint stopped (weights, optimisers, RNG, step, history)."""
        state, _, info = load_checkpoint(checkpoint_dir, device=str(self.learner.device))
        self.learner.load_state_dict(state["learner"])
        self.normalizer = ObservationNormalizer.from_state_dict(state["normalizer"])
        self.diag_rng.set_state(state["diag_rng"])
        self.best_score = info["best_normalized_score"]
        self.history = info["history"]

    # ----------------------------------------------------------------- the loop
    def run(
        self,
        evaluator: Evaluator | None = None,
        on_log: Callable[[int, dict[str, float]], None] | None = None,
        on_eval: Callable[[int, dict[str, Any]], None] | None = None,
        progress: bool = True,
    ) -> TrainResult:
        t = self.config.train
        d = self.data
        evaluator = evaluator or InlineEvaluator(d.env_id, t.eval_episodes, t.seed, d.ref_min_score, d.ref_max_score)
        status, train_time, start = "completed", 0.0, self.learner.steps
        self._stop_requested = False
        bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
        metrics: dict[str, torch.Tensor] = {}
        with stop_on_signals(self.request_stop):
            tick = time.perf_counter()
            while self.learner.steps < t.steps:
                if self._stop_requested:
                    status = "interrupted"
                    break
                batch = self.buffer.sample(self.learner.generator, t.num_seeds, t.batch_size)
                metrics.update(self.learner.update(batch))
                step = self.learner.steps
                if step % t.log_every == 0 or step == t.steps:
                    train_time += time.perf_counter() - tick
                    logged = self._log(step, metrics, train_time, start)
                    bar.update(step - bar.n)
                    bar.set_postfix(critic=f"{logged['critic_loss']:.3g}", best=self.best_score)
                    if on_log:
                        on_log(step, logged)
                    if logged["diverged"]:
                        status = "diverged"
                        break
                    self._collect(evaluator.finished(), on_eval)
                    tick = time.perf_counter()
                if step % t.eval_every == 0 or step == t.steps:
                    train_time += time.perf_counter() - tick
                    self._submit(evaluator, step)
                    # Never train more than one period past the oldest unfinished evaluation: its
                    # report must reach the caller (a scheduler may stop here) before training is far past it.
                    self._collect(evaluator.wait(keep=1), on_eval)
                    tick = time.perf_counter()
        bar.close()
        self._collect(evaluator.wait(), on_eval)
        self.save("latest")
        last = self.history[-1] if self.history else {}
        return TrainResult(
            dataset=self.config.dataset.id,
            preset=self.config.preset,
            steps=self.learner.steps,
            seed=t.seed,
            num_seeds=t.num_seeds,
            status=status,
            normalized_score=last.get("normalized_score"),
            normalized_score_std=last.get("normalized_score_std"),
            mean_return=last.get("return_mean"),
            best_normalized_score=self.best_score,
            steps_per_second=(self.learner.steps - start) / train_time if train_time > 0 else 0.0,
            checkpoint=str(self.run_dir / ("best" if (self.run_dir / "best").exists() else "latest")),
            history=self.history,
        )

    def read_metrics(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's device tensors plus the diagnostics on the fixed batch, read to the host
        (the only host synchronisation of training), with the divergence verdict."""
        diag = diagnostics(self.learner, self.diag_batch, self.diag_rng)
        logged = {k: float(v.mean()) for k, v in {**metrics, **diag}.items()}
        logged["diverged"] = diverged(diag["q_abs_max"], metrics, self.q_limit)
        return logged

    def _log(self, step: int, metrics: dict[str, torch.Tensor], train_time: float, start: int) -> dict[str, float]:
        logged = self.read_metrics(metrics)
        logged["steps_per_second"] = (step - start) / train_time if train_time > 0 else 0.0
        return logged

    def _submit(self, evaluator: Evaluator, step: int) -> None:
        # The weights move on while an evaluation runs elsewhere: keep this step's state, so
        # that the best checkpoint holds the weights that were actually evaluated.
        self._pending[step] = {"state": _detached_copy(self.state_dict()), "info": self.info()}
        evaluator.submit(step, self.policies())

    def _collect(self, results: list[tuple[int, list[Evaluation]]], on_eval) -> None:
        for step, evaluations in sorted(results, key=lambda r: r[0]):
            record = evaluation_record(step, evaluations)
            self.history.append(record)
            snapshot = self._pending.pop(step)
            is_best = self.best_score is None or record["normalized_score"] > self.best_score
            if is_best:
                self.best_score = record["normalized_score"]
            snapshot["info"].update(best_normalized_score=self.best_score, history=list(self.history))
            self._evaluated = snapshot
            if is_best:
                self.save("best", snapshot["state"], snapshot["info"])
            record["normalized_score_best_so_far"] = self.best_score
            if on_eval:
                on_eval(step, record)


def held_out_rows(n: int, seed: int) -> np.ndarray:
    """Mask of the dataset rows kept out of training for the diagnostics (SPEC.md, Diagnostics):
    a tenth of the dataset, at most DIAGNOSTIC_BATCH rows, chosen at random from `seed`."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: max(1, min(DIAGNOSTIC_BATCH, n // 10))]] = True
    return mask


def reward_factor(cfg, data: OfflineData) -> float:
    """IQL's MuJoCo reward convention: 1000 / (max - min episode return over the dataset's episodes)."""
    if cfg.reward_normalization == "none":
        return 1.0
    spread = float(data.episode_returns.max() - data.episode_returns.min())
    if spread <= 0:
        raise ConfigError(f"reward_normalization={cfg.reward_normalization!r}: the dataset's episode returns are all equal")
    return 1000.0 / spread


def evaluation_record(step: int, evaluations: list[Evaluation]) -> dict[str, Any]:
    """One evaluation of every seed: the mean and std of the normalised score over seeds, and of
    the returns over all episodes; each episode's score per seed (for intervals) and the
    environment seeds the episodes started from."""
    scores = np.array([e.score for e in evaluations])
    returns = np.concatenate([e.returns for e in evaluations])
    return {
        "step": step,
        "normalized_score": float(scores.mean()),
        "normalized_score_std": float(scores.std()),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "episode_scores": [[float(x) for x in e.normalized] for e in evaluations],
        "episode_seeds": sorted({s for e in evaluations for s in e.seeds}),
        "score_unit": evaluations[0].unit,  # what episode_scores' columns are
    }


@contextmanager
def stop_on_signals(stop: Callable[[], None]):
    """Turn SIGINT/SIGTERM into a stop at the next step boundary (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = lambda signum, frame: stop()  # noqa: E731
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _detached_copy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_detached_copy(v) for v in value]
    return value
