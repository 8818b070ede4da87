import dataclasses
import shutil
import time
import warnings

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer
from minari.dataset._storages import arrow_storage

from rlservice.data.minari_io import (
    D4RL_REF_MAX_SCORES,
    build_random_dataset,
    collect_episodes,
    dataset_id_for,
    list_local_datasets,
    load_offline_data,
    normalized_score,
    write_dataset,
)
from rlservice.errors import DatasetError

HOPPER = "Hopper-v5"
SCORES = {"ref_min_score": -20.0, "ref_max_score": 3000.0}


@pytest.fixture(scope="module")
def hopper_episodes():
    return collect_episodes(HOPPER, None, 400, seed=1)


def write_foreign(dataset_id, episodes, env_id=HOPPER, observation_space=None, **scores):
    """A dataset written by plain Minari, as a third party would, bypassing write_dataset's checks."""
    obs_dtype = (observation_space or gym.make(env_id).observation_space).dtype
    buffers = [
        EpisodeBuffer(observations=ep.observations.astype(obs_dtype), actions=ep.actions, rewards=ep.rewards,
                      terminations=ep.terminations, truncations=ep.truncations)
        for ep in episodes
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari nags about author, code permalink, ...
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env_id, observation_space=observation_space, data_format="arrow", **scores
        )


def with_values(episode, field, index, value):
    array = getattr(episode, field).copy()
    array[index] = value
    return dataclasses.replace(episode, **{field: array})


def assert_one_line(excinfo):
    assert "\n" not in str(excinfo.value)


def test_collect_episodes_exact_steps_cut_marked_and_seeded(hopper_episodes):
    assert sum(len(ep.actions) for ep in hopper_episodes) == 400
    for ep in hopper_episodes:
        assert ep.terminations[-1] or ep.truncations[-1]
        assert not (ep.terminations[:-1] | ep.truncations[:-1]).any()
    last = hopper_episodes[-1]
    assert last.truncations[-1] != last.terminations[-1]  # a cut episode is truncated, not both
    again = collect_episodes(HOPPER, None, 400, seed=1)
    other = collect_episodes(HOPPER, None, 400, seed=2)
    assert np.array_equal(again[0].actions, hopper_episodes[0].actions)
    assert not np.array_equal(other[0].actions, hopper_episodes[0].actions)


def test_round_trip_hopper(minari_root, hopper_episodes):
    dataset_id = dataset_id_for(HOPPER, "test")
    write_dataset(dataset_id, HOPPER, hopper_episodes, **SCORES, metadata={"quality": "test", "budget": 7})

    raw = minari.load_dataset(dataset_id)
    assert (raw.total_steps, raw.total_episodes, raw.env_spec.id) == (400, len(hopper_episodes), HOPPER)
    assert list_local_datasets() == [dataset_id]

    data = load_offline_data(dataset_id, download=False)
    assert data.env_id == HOPPER
    assert data.observations.shape == data.next_observations.shape == (400, 11)
    assert data.actions.shape == (400, 3) and data.rewards.shape == data.terminals.shape == (400,)
    assert data.observations.dtype == data.actions.dtype == data.rewards.dtype == np.float32
    assert (data.ref_min_score, data.ref_max_score) == (-20.0, 3000.0)
    assert data.metadata["quality"] == "test" and data.metadata["budget"] == 7
    with pytest.raises(ValueError, match="reserved by Minari"):
        write_dataset(dataset_id, HOPPER, hopper_episodes, **SCORES, metadata={"total_steps": 1}, overwrite=True)

    def flat(field, part=slice(None)):
        return np.concatenate([getattr(ep, field)[part] for ep in hopper_episodes])

    np.testing.assert_array_equal(data.observations, flat("observations", slice(None, -1)))
    np.testing.assert_array_equal(data.next_observations, flat("observations", slice(1, None)))
    np.testing.assert_array_equal(data.rewards, flat("rewards"))
    np.testing.assert_array_equal(data.terminals, flat("terminations").astype(np.float32))
    np.testing.assert_array_equal(data.timeouts, flat("truncations").astype(np.float32))
    ends = np.cumsum([len(ep.actions) for ep in hopper_episodes]) - 1
    inside = np.setdiff1d(np.arange(399), ends)
    np.testing.assert_array_equal(data.next_observations[inside], data.observations[inside + 1])
    assert data.terminals.sum() > 0 and data.timeouts[-1] == 1.0  # random Hopper falls; the last episode is cut
    np.testing.assert_allclose(data.episode_returns, [ep.rewards.sum() for ep in hopper_episodes], rtol=1e-6)

    assert np.abs(data.actions).max() <= 1.0
    raw_actions = data.action_low + (data.actions + 1) / 2 * (data.action_high - data.action_low)
    np.testing.assert_allclose(raw_actions, flat("actions"), atol=1e-6)


def test_actions_are_normalised_with_the_box(minari_root):
    env_id = "InvertedPendulum-v5"  # action box [-3, 3], so normalising is not the identity
    episodes = collect_episodes(env_id, None, 200, seed=0)
    write_dataset("test/pendulum-v0", env_id, episodes, **SCORES)
    data = load_offline_data("test/pendulum-v0", download=False)
    raw = np.concatenate([ep.actions for ep in episodes])
    assert np.abs(raw).max() > 1.5
    np.testing.assert_array_equal(data.action_low, [-3.0])
    np.testing.assert_allclose(data.actions, raw / 3.0, atol=1e-6)


@pytest.mark.parametrize(
    "field, index", [("observations", np.s_[:3, 0]), ("actions", np.s_[:3, 1]), ("rewards", np.s_[:3])]
)
def test_non_finite_values_refused(minari_root, hopper_episodes, field, index):
    bad = [with_values(hopper_episodes[0], field, index, [np.nan, np.inf, -np.inf]), *hopper_episodes[1:]]
    expected = f"dataset test/bad-v0: {field} contain 3 non-finite values"
    with pytest.raises(DatasetError, match=expected):
        write_dataset("test/bad-v0", HOPPER, bad, **SCORES)
    write_foreign("test/bad-v0", bad, **SCORES)
    with pytest.raises(DatasetError, match=expected) as excinfo:
        load_offline_data("test/bad-v0", download=False)
    assert_one_line(excinfo)


def test_actions_outside_the_box_refused(minari_root, hopper_episodes):
    write_foreign("test/wide-v0", [with_values(hopper_episodes[0], "actions", 0, 1.5)], **SCORES)
    with pytest.raises(DatasetError, match="3 action values lie outside Hopper-v5's action box"):
        load_offline_data("test/wide-v0", download=False)


def test_observation_width_mismatch_refused(minari_root, hopper_episodes):
    pad = ((0, 0), (0, 1))
    wide = [dataclasses.replace(ep, observations=np.pad(ep.observations, pad)) for ep in hopper_episodes[:3]]
    with pytest.raises(DatasetError, match=r"observations have shape \(\d+, 12\), expected \(\d+, 11\) for Hopper-v5"):
        write_dataset("test/wide-v0", HOPPER, wide, **SCORES)
    write_foreign("test/wide-v0", wide, observation_space=gym.spaces.Box(-np.inf, np.inf, (12,)), **SCORES)
    with pytest.raises(DatasetError, match=r"episode 0 observations have shape \(\d+, 12\), expected"):
        load_offline_data("test/wide-v0", download=False)


def test_missing_reference_scores_refused(minari_root, hopper_episodes):
    write_foreign("test/noref-v0", hopper_episodes[:3])
    with pytest.raises(DatasetError, match="dataset test/noref-v0 has no ref_min_score"):
        load_offline_data("test/noref-v0", download=False)


@pytest.mark.parametrize(
    "scores, problem",
    [((np.nan, 1.0), "ref_min_score is nan, not a finite"), ((5.0, 5.0), "must exceed"), ((5.0, 1.0), "must exceed")],
)
def test_bad_reference_scores_refused_at_write(minari_root, hopper_episodes, scores, problem):
    with pytest.raises(DatasetError, match=problem):
        write_dataset("test/ref-v0", HOPPER, hopper_episodes, ref_min_score=scores[0], ref_max_score=scores[1])
    assert list_local_datasets() == []


def test_id_without_version_refused(minari_root):
    with pytest.raises(DatasetError, match="has no version: Minari ids end in -vN"):
        load_offline_data("rlservice/hopper-v5/random")
    with pytest.raises(DatasetError, match="has no version"):
        write_dataset("test/noversion", HOPPER, [], **SCORES)


def test_unknown_dataset_without_download(minari_root):
    with pytest.raises(DatasetError, match=r"test/unknown-v0 not found locally in .*minari \(download disabled\)"):
        load_offline_data("test/unknown-v0", download=False)


def test_unknown_dataset_download_fails_in_one_line(minari_root, monkeypatch):
    # No network here. Without huggingface_hub, Minari fails at once; with it, offline mode keeps it
    # from retrying for ~25 s (honoured only if huggingface_hub is imported after this point).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    expected = "dataset test/unknown-v0 not found locally and could not be downloaded: "
    with pytest.raises(DatasetError, match=expected) as e:
        load_offline_data("test/unknown-v0", download=True)
    assert_one_line(e)
    assert time.monotonic() - started < 20


def test_interrupted_write_leaves_nothing_loadable(minari_root, hopper_episodes, monkeypatch):
    original, calls = arrow_storage.ds.write_dataset, []

    def write_two_episodes_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("disk full")
        original(*args, **kwargs)

    monkeypatch.setattr(arrow_storage.ds, "write_dataset", write_two_episodes_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_dataset("test/partial-v0", HOPPER, hopper_episodes, **SCORES)
    assert len(calls) == 3  # the failure really came mid-write
    assert list_local_datasets() == []
    with pytest.raises(FileNotFoundError):
        minari.load_dataset("test/partial-v0")
    with pytest.raises(DatasetError, match="not found locally"):
        load_offline_data("test/partial-v0", download=False)
    assert not any(p.is_file() for p in (minari_root / ".rlservice-staging").rglob("*"))


def test_overwrite_only_when_told_and_failed_overwrite_keeps_the_old(minari_root, hopper_episodes, monkeypatch):
    write_dataset("test/ds-v0", HOPPER, hopper_episodes[:2], **SCORES)
    steps = sum(len(ep.actions) for ep in hopper_episodes[:2])
    with pytest.raises(DatasetError, match="dataset test/ds-v0 already exists .* overwrite"):
        write_dataset("test/ds-v0", HOPPER, hopper_episodes, **SCORES)

    monkeypatch.setattr(arrow_storage.ds, "write_dataset", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        write_dataset("test/ds-v0", HOPPER, hopper_episodes, **SCORES, overwrite=True)
    assert len(load_offline_data("test/ds-v0", download=False).rewards) == steps
    monkeypatch.undo()

    write_dataset("test/ds-v0", HOPPER, hopper_episodes, **SCORES, overwrite=True)
    assert len(load_offline_data("test/ds-v0", download=False).rewards) == 400


def test_missing_episode_files_refused(minari_root, hopper_episodes):
    write_dataset("test/cut-v0", HOPPER, hopper_episodes, **SCORES)
    shutil.rmtree(minari_root / "test" / "cut-v0" / "data" / "1")  # as after an interrupted download
    with pytest.raises(DatasetError, match="dataset test/cut-v0 could not be read: "):
        load_offline_data("test/cut-v0", download=False)


def test_datasets_list_marks_a_truncated_episode_file_damaged(minari_root, hopper_episodes, capsys):
    import json

    from rlservice.cli import main

    write_dataset("test/whole-v0", HOPPER, hopper_episodes, **SCORES)
    write_dataset("test/torn-v0", HOPPER, hopper_episodes, **SCORES)
    [episode_file] = (minari_root / "test" / "torn-v0" / "data" / "1").glob("*.arrow")
    episode_file.write_bytes(episode_file.read_bytes()[: episode_file.stat().st_size // 2])  # a copy cut short
    assert main(["datasets", "list", "--json"]) == 0
    rows = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["test/whole-v0"]["damaged"] is None
    assert rows["test/torn-v0"]["damaged"]
    with pytest.raises(DatasetError):  # what the mark warns of
        load_offline_data("test/torn-v0", download=False)


def test_normalized_score_by_hand():
    np.testing.assert_allclose(normalized_score([10.0, 60.0, 110.0, 160.0], 10.0, 110.0), [0.0, 50.0, 100.0, 150.0])
    assert normalized_score(35.0, 10.0, 110.0) == pytest.approx(25.0)
    assert isinstance(normalized_score(35.0, 10.0, 110.0), float)
    with pytest.raises(ValueError):
        normalized_score(1.0, 5.0, 5.0)


def test_dataset_id_for():
    assert dataset_id_for("Hopper-v5", "medium-replay") == "rlservice/hopper-v5/medium-replay-v0"
    assert dataset_id_for("HalfCheetah-v5", "random") == "rlservice/halfcheetah-v5/random-v0"
    with pytest.raises(ValueError):
        dataset_id_for("Hopper-v5", "not a quality")


def test_random_dataset_scores_about_zero(hopper_random_dataset):
    assert hopper_random_dataset == "rlservice/hopper-v5/random-v0"
    data = load_offline_data(hopper_random_dataset, download=False)
    assert len(data.rewards) == 3000 and data.metadata["quality"] == "random"
    assert data.ref_max_score == D4RL_REF_MAX_SCORES["Hopper"]
    assert 0.0 < data.ref_min_score < 100.0  # random Hopper earns ~1 per step alive, for ~20 steps
    scores = normalized_score(data.episode_returns, data.ref_min_score, data.ref_max_score)
    assert abs(scores.mean()) < 1.0


def test_random_dataset_needs_a_reference_expert_return(minari_root):
    with pytest.raises(DatasetError, match="no reference expert return for env InvertedPendulum-v5"):
        build_random_dataset("InvertedPendulum-v5", 100)
    assert list_local_datasets() == []


def test_a_dataset_at_a_file_uri_loads_as_the_local_copy_and_stays_out_of_the_minari_root(
        hopper_random_dataset, tmp_path, monkeypatch):
    from minari.storage import get_dataset_path

    local = load_offline_data(hopper_random_dataset, download=False)
    shared = tmp_path / "shared" / "hopper-random-v0"  # "shared storage": outside every Minari root
    shutil.copytree(get_dataset_path(hopper_random_dataset), shared)
    empty_root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(empty_root))
    with pytest.raises(DatasetError, match="not found"):
        load_offline_data(hopper_random_dataset, download=False)

    fetched = load_offline_data(hopper_random_dataset, download=False, uri=shared.as_uri())
    for field in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                  "action_low", "action_high", "episode_returns"):
        np.testing.assert_array_equal(getattr(fetched, field), getattr(local, field), err_msg=field)
    assert (fetched.env_id, fetched.ref_min_score, fetched.ref_max_score) == (local.env_id, local.ref_min_score,
                                                                             local.ref_max_score)
    assert fetched.digest == local.digest and fetched.digest.startswith("sha256:")
    assert not [p for p in empty_root.rglob("*") if p.is_file()]  # read into memory, never installed

    with pytest.raises(DatasetError, match=f"holds dataset '{hopper_random_dataset}', not 'rlservice/hopper-v5/medium-v0'"):
        load_offline_data("rlservice/hopper-v5/medium-v0", uri=shared.as_uri())
    with pytest.raises(DatasetError, match="no Minari dataset there") as missing:
        load_offline_data(hopper_random_dataset, uri=(tmp_path / "nowhere").as_uri())
    assert "\n" not in str(missing.value)
    with pytest.raises(DatasetError, match="could not be read"):
        load_offline_data(hopper_random_dataset, uri="nosuchscheme://bucket/x")
