"""Where a job runs, its dataset is found, or built when it is a random one and may be built."""

import shutil

import pytest

from rlservice.config.tuning import DatasetSpec
from rlservice.errors import DatasetError
from rlservice.jobs.tune_dataset import ensure_dataset


def test_a_missing_random_dataset_is_built_when_the_job_allows_it(minari_root):
    spec = DatasetSpec(id="rlservice/hopper-v5/random-v0", build_steps=300, download=False)
    assert ensure_dataset(spec).actions.shape == (300, 3)  # Hopper's action dimension
    assert (minari_root / "rlservice" / "hopper-v5" / "random-v0" / "data").is_dir()
    assert ensure_dataset(spec).actions.shape == (300, 3)  # found the second time


def test_a_missing_dataset_that_may_not_be_built_fails_with_one_line(minari_root):
    with pytest.raises(DatasetError, match="not found") as raised:
        ensure_dataset(DatasetSpec(id="rlservice/hopper-v5/medium-v0", download=False))
    assert "\n" not in str(raised.value)
    with pytest.raises(DatasetError, match="only rlservice/<env>/random-v0 datasets can be built"):
        ensure_dataset(DatasetSpec(id="rlservice/hopper-v5/medium-v0", download=False), build_steps=300)


def test_a_dataset_uri_is_read_by_the_driver_and_never_built(hopper_random_dataset, tmp_path, monkeypatch):
    from minari.storage import get_dataset_path

    from rlservice.errors import ConfigError

    shared = tmp_path / "shared" / "hopper-random-v0"
    shutil.copytree(get_dataset_path(hopper_random_dataset), shared)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty"))
    spec = DatasetSpec(id=hopper_random_dataset, uri=shared.as_uri(), download=False)
    assert ensure_dataset(spec).actions.shape == (3000, 3)
    with pytest.raises(ConfigError, match="it cannot be built here"):
        ensure_dataset(spec, build_steps=300)
