"""Fixtures of the tuning-service tests: tiny job files and an isolated environment for the CLI
and Ray (own token, storage, MLflow SQLite store)."""

import os
import secrets

import pytest
import yaml
from tune_helpers import QUICKSTART

# A few hundred gradient steps of tiny networks: seconds per trial on two cores.
TINY = {
    "fixed": {"critic_hidden": 32, "actor_hidden": 32, "batch_size": 64, "log_every": 100},
    "steps": 400,
    "eval_every": 100,
    "eval_episodes": 1,
    "scheduler": {"type": "asha", "grace_period": 100, "reduction_factor": 2},
    "sampler": {"startup_trials": 3},
}


@pytest.fixture
def tiny_job(tmp_path, hopper_random_dataset):
    """tiny_job(**changes) -> path of a small variant of tuning/quickstart.yaml on the session's dataset."""

    def write(**changes):
        spec = yaml.safe_load(QUICKSTART.read_text())
        spec["dataset"] = {"id": hopper_random_dataset}
        spec.update(TINY)
        spec.update(changes)
        path = tmp_path / f"job-{secrets.token_hex(3)}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def service_env(tmp_path):
    """Environment for `rlservice` subprocesses: storage, home, MLflow store and a Ray token of the test's own."""
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    (tmp_path / "mlflow").mkdir()
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    create_store(tracking_uri)
    env = {
        **os.environ,
        "RLSERVICE_HOME": str(tmp_path / "home"),
        "RLSERVICE_STORAGE_PATH": str(tmp_path / "tune"),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        # Tiny trials checkpoint every second; Tune's warning about frequent snapshots is noise here.
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        "RAY_DEDUP_LOGS": "0",
    }
    return env


def create_store(uri):
    """Create the SQLite store up front: a test watching it while a job creates it would race the
    job's schema migration."""
    from mlflow import MlflowClient

    from rlservice.tracking import store

    store.check_reachable(uri)
    MlflowClient(uri).search_experiments()
