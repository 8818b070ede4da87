"""A job's dataset, read once by its driver: found locally, downloaded from Minari's remote,
fetched from a storage URI, or (random ones) built. The driver hands the arrays to the trials
through Ray's object store, so no other node needs a copy."""

from __future__ import annotations

import gymnasium as gym
from minari.storage import get_dataset_path

from rlservice.config.tuning import DatasetSpec
from rlservice.data.minari_io import (
    OfflineData,
    build_random_dataset,
    load_offline_data,
)
from rlservice.errors import ConfigError, DatasetError


def ensure_dataset(spec: DatasetSpec, build_steps: int | None = None, require_env: bool = True) -> OfflineData:
    """The job's data; a missing dataset that may be built is built first (`build_steps` from
    the CLI, else the job's `dataset.build_steps`). `require_env=False`: the dataset's env need
    not be installed (offline selection)."""
    steps = build_steps or spec.build_steps
    if steps and spec.uri is not None:
        raise ConfigError(f"--build-dataset {steps}: the dataset comes from {spec.uri}; it cannot be built here")
    if steps and not get_dataset_path(spec.id).joinpath("data").is_dir():
        env_id = _env_of(spec.id)
        build_random_dataset(env_id, steps, dataset_id=spec.id)
    return load_offline_data(spec.id, download=spec.download, uri=spec.uri, require_env=require_env)


def _env_of(dataset_id: str) -> str:
    """`rlservice/hopper-v5/random-v0` -> the registered gymnasium id `Hopper-v5`."""
    parts = dataset_id.split("/")
    if len(parts) != 3 or parts[0] != "rlservice" or parts[2] != "random-v0":
        raise DatasetError(f"dataset {dataset_id} is missing and only rlservice/<env>/random-v0 datasets can be built here")
    matches = [env_id for env_id in gym.registry if env_id.lower() == parts[1]]
    if not matches:
        raise DatasetError(f"dataset {dataset_id} is missing and no gymnasium environment is called {parts[1]!r}")
    return matches[0]
