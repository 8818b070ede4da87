"""Shared fixtures. Every test runs against a temporary Minari root and a temporary rlservice
home (runs, embedded MLflow store): nothing touches ~/.minari or ~/.rlservice."""

import os

import pytest

# No test may reach outside this machine: Minari's remote client must fail at once, not look
# up its host. Set before anything imports huggingface_hub, which reads it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"

from rlservice.data.minari_io import build_random_dataset


@pytest.fixture(scope="session", autouse=True)
def _session_minari_root(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("minari")
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        mp.setenv("RLSERVICE_HOME", str(tmp_path_factory.mktemp("rlservice_home")))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    """An empty Minari root for this test only (datasets of the session root are not visible in it)."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture(scope="session")
def hopper_random_dataset(_session_minari_root):
    """Id of a ~3000-step Hopper-v5 random dataset, built once per session in the session root."""
    return build_random_dataset("Hopper-v5", 3000, seed=0)
