"""Fixtures of the tracking tests: a real `mlflow server` on 127.0.0.1 (started and stopped through
cluster/mlflow-server.sh, in its own process group) and a few tiny trained trials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlservice.config.run import build_run_config
from rlservice.tracking import runs
from rlservice.training.trainer import Trainer

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "mlflow-server.sh"
MLFLOW_BIN = str(Path(sys.executable).with_name("mlflow"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server run by cluster/mlflow-server.sh; `stop` and `start` keep the port and the store."""

    port: int
    store: Path
    env: dict
    flags: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _script(self, command: str, *flags: str) -> None:
        subprocess.run([str(SCRIPT), command, "--port", str(self.port), "--store", str(self.store), *flags],
                       env=self.env, check=True, timeout=240, capture_output=True)

    def start(self) -> None:
        self._script("start", "--workers", "1", *self.flags)

    def stop(self) -> None:
        self._script("stop")


@pytest.fixture(scope="session")
def free_port():
    """`free_port()`: a port nothing listens on at the moment, on 127.0.0.1."""
    return _free_port


@pytest.fixture(scope="session")
def new_server():
    """`new_server(store, *flags, drop_env=())`: a Server on a free port, not started yet; the
    environment variables starting with a prefix in `drop_env` are not passed to the script."""

    def make(store: Path, *flags: str, drop_env: tuple[str, ...] = ()) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env)} if drop_env else dict(os.environ)
        return Server(_free_port(), store, {**env, "MLFLOW_BIN": MLFLOW_BIN}, flags)

    return make


@pytest.fixture(scope="session", autouse=True)
def _tracking_home(tmp_path_factory):
    """rlservice's home (embedded store, runs) in a temporary directory, and no inherited URI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLSERVICE_HOME", str(tmp_path_factory.mktemp("rlservice-home")))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="session")
def mlflow_server(new_server, tmp_path_factory):
    server = new_server(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


def _tiny_run_config(dataset_id: str, seed: int = 0, **agent):
    overrides = {"train.steps": 100, "train.eval_every": 50, "train.eval_episodes": 1, "train.log_every": 25,
                 "train.seed": seed, "critic_hidden": 32, "actor_hidden": 32, **agent}
    return build_run_config(dataset_id, "td3bc", None, overrides, action_dim=3)


@pytest.fixture(scope="session")
def tiny_run_config(hopper_random_dataset):
    """td3bc on the Hopper dataset for a few seconds: small networks, 100 steps, two one-episode
    evaluations; `tiny_run_config(seed=..., **agent_knobs)`."""
    return lambda seed=0, **agent: _tiny_run_config(hopper_random_dataset, seed, **agent)


@contextmanager
def one_torch_thread():
    """Tiny networks on a busy machine: torch's thread pool then spends its time waiting (30x
    slower here under load), one thread does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def one_thread():
    return one_torch_thread


@pytest.fixture(scope="session")
def trained(tiny_run_config, tmp_path_factory):
    """A trained tiny trainer whose best checkpoint the registry and export tests use."""
    trainer = Trainer(tiny_run_config(), tmp_path_factory.mktemp("trained"))
    with one_torch_thread():
        trainer.run(progress=False)
    return trainer


@pytest.fixture(scope="session")
def hopper_observations() -> np.ndarray:
    """64 raw float64 observations of the real Hopper-v5 under random actions."""
    env = gym.make("Hopper-v5")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    out = []
    for _ in range(64):
        out.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.array(out)


@pytest.fixture(scope="session")
def register_job(mlflow_server, trained, hopper_random_dataset):
    """`register_job(model, score, dataset=..., confirmed=...)`: a job of one trial, with `trained`'s
    best checkpoint and the given selection score (and, when given, a confirmed score with a +-1
    interval on 50 episodes), finished by `finish_job` into registered model `model`; returns its summary."""
    uri, best = mlflow_server.uri, trained.run_dir / "best"

    def run(model: str, score: float, dataset: str = hopper_random_dataset, confirmed: float | None = None) -> dict:
        parent = runs.start_job_run(uri, "registry-test", f"{model}-{score}", {"dataset": dataset})
        trial = runs.TrialRun(uri, "registry-test", parent, "only-trial", {"dataset.id": dataset})
        trial.log_checkpoint(best)
        trial.finish("completed", [], score=score)
        row = {"trial": "only-trial", "run_id": trial.run_id, "status": "completed", "score": score,
               "score_std": 0.0, "final_score": score, "config": {}, "checkpoint": str(best)}
        candidates = None if confirmed is None else [{
            "trial": "only-trial", "run_id": trial.run_id, "checkpoint_kind": "best", "checkpoint": str(best),
            "selection_score": score, "confirmed_seeds": [10**9, 10**9 + 49],
            "confirmed": {"mean": confirmed, "low": confirmed - 1, "high": confirmed + 1, "seeds": 1, "episodes": 50}}]
        return runs.finish_job(uri, parent, [row], model_name=model, dataset_id=dataset, preset="td3bc", searched=[],
                               confirmed=candidates)

    return run


@pytest.fixture(scope="session")
def registered(register_job):
    """Model "policy-under-test", version 1 = champion = `trained`'s best checkpoint."""
    summary = register_job("policy-under-test", 50.0, confirmed=45.0)
    assert summary["champion"]
    return summary
