"""Minari I/O: write and read offline RL datasets, collect rollouts, reference scores.

Datasets live in Minari's local root (``MINARI_DATASETS_PATH``, default ``~/.minari/datasets``),
or in a Minari dataset directory on shared storage named by a URI (``s3://...``, ``file:///...``),
which is read into memory without being added to the local root.
Ids made here are ``rlservice/<env-id lowercased>/<quality>-v0`` (see :func:`dataset_id_for`).
Anything wrong with a dataset surfaces as a one-line :class:`DatasetError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id
from minari.dataset.minari_storage import MinariStorage
from minari.namespace import create_namespace, list_local_namespaces
from minari.storage import get_dataset_path

from rlservice.errors import DatasetError

# h5py (Minari's default format) is not a dependency; pyarrow is.
DATA_FORMAT = "arrow"

# D4RL's REF_MAX_SCORE (expert returns of the -v2 MuJoCo tasks), keyed by env name without
# version; the -v5 tasks keep the same reward terms, so the scale carries over.
D4RL_REF_MAX_SCORES = {"Hopper": 3234.3, "HalfCheetah": 12135.0, "Walker2d": 4592.3, "Ant": 3879.7}

# Random-policy reference returns use their own fixed seed, so every dataset of an env
# (any quality, any collection seed) shares the same ref_min_score.
REFERENCE_EPISODES = 100  # Minari's default num_episodes_average_score
REFERENCE_SEED = 12345

# Keys Minari itself keeps in a dataset's metadata.json; user metadata may not shadow them.
_MINARI_KEYS = frozenset({
    "dataset_id", "minari_version", "data_format", "jpeg_encoding", "observation_space", "action_space",
    "env_spec", "eval_env_spec", "total_episodes", "total_steps", "dataset_size", "combined_datasets",
    "ref_min_score", "ref_max_score", "num_episodes_average_score", "description", "algorithm_name",
    "author", "author_email", "code_permalink", "requirements",
})

_STAGING_DIR = ".rlservice-staging"  # hidden: Minari's listings skip dot-directories
_ACTION_TOLERANCE = 1e-4  # of the box width; beyond it an action is outside the box


@dataclass(frozen=True)
class Episode:
    observations: np.ndarray  # [T+1, obs_dim] float32
    actions: np.ndarray  # [T, act_dim] float32, in the env's action box
    rewards: np.ndarray  # [T] float32
    terminations: np.ndarray  # [T] bool
    truncations: np.ndarray  # [T] bool


@dataclass(frozen=True)
class OfflineData:
    """Flat transitions of a dataset, ready for a replay buffer."""

    dataset_id: str
    env_id: str  # gymnasium id that rebuilds the env
    observations: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N, act_dim] float32, normalised to [-1, 1] with the action box
    rewards: np.ndarray  # [N] float32, raw
    next_observations: np.ndarray  # [N, obs_dim] float32
    terminals: np.ndarray  # [N] float32, 1.0 where the episode terminated (never for truncations)
    timeouts: np.ndarray  # [N] float32, 1.0 where it was truncated
    action_low: np.ndarray  # [act_dim] float32, the env's action box
    action_high: np.ndarray
    ref_min_score: float
    ref_max_score: float
    episode_returns: np.ndarray  # [num_episodes] float64
    metadata: dict  # the dataset's metadata.json (JSON values only)
    digest: str  # of its data files (see dataset_digest): the same on every machine that reads them


# ---------------------------------------------------------------- ids and scores

NAMESPACE = "rlservice"  # datasets this project builds; never on Minari's remote


def dataset_id_for(env_id: str, quality: str) -> str:
    """``rlservice/<env>/<quality>-v0`` with ``<env>`` the gymnasium id lowercased, e.g. ``hopper-v5``.

    The env version stays in the id because datasets of different env versions are not
    interchangeable; the layout mirrors Minari's own ``mujoco/hopper/medium-v0``.
    """
    env_name = env_id.lower()
    dataset_id = f"{NAMESPACE}/{env_name}/{quality}-v0"
    try:
        parsed = parse_dataset_id(dataset_id)
    except ValueError:
        parsed = None
    if parsed != (f"{NAMESPACE}/{env_name}", quality, 0):
        raise ValueError(f"cannot form a Minari dataset id from env {env_id!r} and quality {quality!r}")
    return dataset_id


def normalized_score(returns, ref_min_score: float, ref_max_score: float) -> np.ndarray | float:
    """D4RL normalised score: 100 * (R - ref_min) / (ref_max - ref_min)."""
    if not ref_max_score > ref_min_score:
        raise ValueError(f"ref_max_score {ref_max_score} must exceed ref_min_score {ref_min_score}")
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min_score) / (ref_max_score - ref_min_score)
    return float(scores) if scores.ndim == 0 else scores


def list_local_datasets() -> list[str]:
    return sorted(minari.list_local_datasets())


def read_metadata(dataset_id: str) -> dict:
    """A local dataset's metadata.json (Minari's keys and ours), without reading its episodes."""
    _check_id(dataset_id)
    try:
        return MinariStorage.read_raw_metadata(get_dataset_path(dataset_id) / "data")
    except ValueError:
        raise DatasetError(f"dataset {dataset_id} not found locally in {get_dataset_path()}") from None


def damage(dataset_id: str) -> str | None:
    """Why a local dataset's episode files cannot be read (missing, truncated), else None. Reads
    each file's structure (an Arrow file's footer, an HDF5 file's superblock), not its data."""
    data = get_dataset_path(dataset_id) / "data"
    episodes = int(read_metadata(dataset_id).get("total_episodes") or 0)
    hdf5 = data / "main_data.hdf5"
    try:
        if hdf5.is_file():
            import h5py

            with h5py.File(hdf5, "r") as f:
                found = len(f.keys())
            if found != episodes:
                return f"{hdf5.name} holds {found} of {episodes} episodes"
            return None
        import pyarrow.ipc

        for i in range(episodes):
            files = sorted((data / str(i)).glob("*.arrow"))
            if not files:
                return f"episode {i} has no file"
            for path in files:
                with pyarrow.ipc.open_file(path):
                    pass
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        return _reason(exc)
    return None


def evaluation_env(dataset_id: str) -> tuple[str, float, float]:
    """(env id, ref_min_score, ref_max_score) of a local dataset, from its metadata alone."""
    metadata = read_metadata(dataset_id)
    ref_min, ref_max = _check_ref_scores(dataset_id, metadata.get("ref_min_score"), metadata.get("ref_max_score"))
    return json.loads(metadata["env_spec"])["id"], ref_min, ref_max


# ---------------------------------------------------------------- environments and rollouts


def make_env(env_id: str, seed: int | None = None) -> gym.Env:
    """A fresh env, reset once with `seed` (later resets continue its RNG) and its action space seeded."""
    env = gym.make(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def _rollout(env: gym.Env, policy: Callable[[np.ndarray], np.ndarray], max_steps: float) -> Episode:
    """One episode from a reset; cut after `max_steps` steps, the cut marked as a truncation."""
    obs, _ = env.reset()
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = np.asarray(policy(obs), dtype=np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        truncated = truncated or (not terminated and len(actions) + 1 >= max_steps)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
    return Episode(
        observations=np.asarray(observations, dtype=np.float32),
        actions=np.asarray(actions, dtype=np.float32),
        rewards=np.asarray(rewards, dtype=np.float32),
        terminations=np.asarray(terminations, dtype=bool),
        truncations=np.asarray(truncations, dtype=bool),
    )


def collect_episodes(
    env_id: str, policy: Callable[[np.ndarray], np.ndarray] | None, num_steps: int, seed: int
) -> list[Episode]:
    """Exactly `num_steps` transitions of whole episodes; the last one may be cut (marked truncated).

    `policy` maps an observation to an action in the env's box; None means uniform random actions.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    env = make_env(env_id, seed)
    act = policy if policy is not None else (lambda _obs: env.action_space.sample())
    episodes, steps = [], 0
    try:
        while steps < num_steps:
            episodes.append(_rollout(env, act, num_steps - steps))
            steps += len(episodes[-1].actions)
    finally:
        env.close()
    return episodes


def random_policy_score(env_id: str, num_episodes: int = REFERENCE_EPISODES, seed: int = REFERENCE_SEED) -> float:
    """Mean undiscounted return of the uniform random policy over whole episodes: D4RL's ref_min_score."""
    env = make_env(env_id, seed)
    try:
        returns = [_rollout(env, lambda _obs: env.action_space.sample(), math.inf).rewards.sum(dtype=np.float64)
                   for _ in range(num_episodes)]
    finally:
        env.close()
    return float(np.mean(returns))


def d4rl_ref_max_score(env_id: str) -> float:
    name = env_id.split("-v")[0]
    if name not in D4RL_REF_MAX_SCORES:
        raise DatasetError(
            f"no reference expert return for env {env_id} (known: {', '.join(D4RL_REF_MAX_SCORES)}); "
            "its ref_max_score must come from a trained expert"
        )
    return D4RL_REF_MAX_SCORES[name]


def build_random_dataset(
    env_id: str, num_steps: int, seed: int = 0, *, dataset_id: str | None = None, overwrite: bool = False
) -> str:
    """Build the D4RL "random" dataset of `env_id` (uniform random actions) and return its id."""
    dataset_id = dataset_id or dataset_id_for(env_id, "random")
    ensure_writable(dataset_id, overwrite=overwrite)
    ref_max_score = d4rl_ref_max_score(env_id)
    write_dataset(
        dataset_id,
        env_id,
        collect_episodes(env_id, None, num_steps, seed),
        ref_min_score=random_policy_score(env_id),
        ref_max_score=ref_max_score,
        metadata={"quality": "random", "behaviour_policy": "uniform random", "collection_seed": seed,
                  "ref_min_episodes": REFERENCE_EPISODES},
        description=f"{num_steps} transitions of a uniform random policy in {env_id} (D4RL 'random').",
        overwrite=overwrite,
    )
    return dataset_id


# ---------------------------------------------------------------- writing


def ensure_writable(dataset_id: str, *, overwrite: bool = False) -> None:
    """Raise DatasetError unless `dataset_id` is well formed and free (or `overwrite`); check before costly builds."""
    _check_id(dataset_id)
    if not overwrite and get_dataset_path(dataset_id).exists():
        raise DatasetError(f"dataset {dataset_id} already exists in {get_dataset_path()}; pass overwrite to replace it")


def write_dataset(
    dataset_id: str,
    env_id: str,
    episodes: Sequence[Episode],
    *,
    ref_min_score: float,
    ref_max_score: float,
    metadata: dict | None = None,
    description: str = "",
    overwrite: bool = False,
) -> None:
    """Write a Minari dataset into the local root, all or nothing.

    The dataset is built in a hidden staging directory of the root and renamed into place, so an
    interrupted write leaves nothing under `dataset_id`; a replaced dataset stays until the rename.
    """
    ensure_writable(dataset_id, overwrite=overwrite)
    metadata = dict(metadata or {})
    if clash := sorted(metadata.keys() & _MINARI_KEYS):
        raise ValueError(f"metadata keys {clash} are reserved by Minari")
    _check_ref_scores(dataset_id, ref_min_score, ref_max_score)
    env = gym.make(env_id)
    env.close()
    obs_space = _box(dataset_id, env_id, "observation", env.observation_space)
    act_space = _box(dataset_id, env_id, "action", env.action_space)
    _check_episodes(dataset_id, env_id, episodes, obs_space, act_space)

    root = get_dataset_path()
    (root / _STAGING_DIR).mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=dataset_id.replace("/", "__") + ".", dir=root / _STAGING_DIR))
    try:
        (staging / "dataset").mkdir()
        storage = MinariStorage.new(
            staging / "dataset" / "data",
            observation_space=obs_space,
            action_space=act_space,
            env_spec=gym.spec(env_id),
            data_format=DATA_FORMAT,
        )
        storage.update_metadata({
            **metadata, "dataset_id": dataset_id, "minari_version": minari.__version__,
            "ref_min_score": float(ref_min_score), "ref_max_score": float(ref_max_score), "description": description,
        })
        _write_episodes(storage, episodes)
        _ensure_namespace(parse_dataset_id(dataset_id)[0])
        final = get_dataset_path(dataset_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and final.exists():
            final.rename(staging / "replaced")  # removed with the staging directory
        try:
            (staging / "dataset").rename(final)
        except OSError as exc:  # another writer got there first
            raise DatasetError(f"dataset {dataset_id} could not be put in place at {final}: {_reason(exc)}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_episodes(storage: MinariStorage, episodes: Sequence[Episode]) -> None:
    # ArrowStorage re-measures the whole dataset on disk after every episode, which makes a write
    # quadratic in the episode count (~30 s for 1000 episodes); measure once at the end instead.
    storage.get_size = lambda: 0.0
    storage.update_episodes(
        EpisodeBuffer(
            observations=ep.observations.astype(storage.observation_space.dtype),
            actions=ep.actions.astype(storage.action_space.dtype),
            rewards=ep.rewards,
            terminations=ep.terminations,
            truncations=ep.truncations,
        )
        for ep in episodes
    )
    del storage.get_size
    storage.update_metadata({"dataset_size": storage.get_size()})


def _ensure_namespace(namespace: str | None) -> None:
    if namespace is None or namespace in list_local_namespaces():
        return
    try:
        create_namespace(namespace)
    except ValueError:  # created meanwhile by a concurrent writer
        if namespace not in list_local_namespaces():
            raise


# ---------------------------------------------------------------- reading


def load_offline_data(dataset_id: str, *, download: bool = True, uri: str | None = None,
                      require_env: bool = True) -> OfflineData:
    """Load and validate a dataset: from `uri` when given (see :func:`fetch_dataset`), else the
    local copy, else (with `download`) Minari's remote.

    With `require_env=False` (offline evaluation and selection) the env is never created: the
    dataset is checked against the spaces it records itself, so its env need not be installed."""
    if uri is not None:
        with tempfile.TemporaryDirectory(prefix="rlservice-fetch-") as local:
            return _read(dataset_id, _open_fetched(dataset_id, uri, Path(local)), require_env)
    return _read(dataset_id, _open(dataset_id, download), require_env)


def _read(dataset_id: str, dataset: minari.MinariDataset, require_env: bool) -> OfflineData:
    metadata = MinariStorage.read_raw_metadata(dataset.storage.data_path)
    ref_min_score, ref_max_score = _check_ref_scores(
        dataset_id, metadata.get("ref_min_score"), metadata.get("ref_max_score")
    )
    if dataset.env_spec is None:
        raise DatasetError(f"dataset {dataset_id} records no environment spec, so its env cannot be rebuilt")
    env_id = dataset.env_spec.id
    if require_env:
        try:
            env = gym.make(dataset.env_spec)
        except Exception as exc:
            raise DatasetError(f"dataset {dataset_id}: its env {env_id} cannot be created: {_reason(exc)}") from exc
        env.close()
        obs_space = _box(dataset_id, env_id, "observation", env.observation_space)
        act_space = _box(dataset_id, env_id, "action", env.action_space)
    data_obs = _box(dataset_id, "the dataset", "observation", dataset.observation_space)
    data_act = _box(dataset_id, "the dataset", "action", dataset.action_space)
    if not require_env:
        obs_space, act_space = data_obs, data_act

    episodes = _read_episodes(dataset_id, dataset)
    _check_episodes(dataset_id, env_id, episodes, obs_space, act_space)

    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    actions = np.concatenate([ep.actions for ep in episodes])
    return OfflineData(
        dataset_id=dataset_id,
        env_id=env_id,
        observations=np.concatenate([ep.observations[:-1] for ep in episodes]),
        actions=np.clip(2.0 * (actions - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32),
        rewards=np.concatenate([ep.rewards for ep in episodes]),
        next_observations=np.concatenate([ep.observations[1:] for ep in episodes]),
        terminals=np.concatenate([ep.terminations for ep in episodes]).astype(np.float32),
        timeouts=np.concatenate([ep.truncations for ep in episodes]).astype(np.float32),
        action_low=low,
        action_high=high,
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
        episode_returns=np.array([ep.rewards.sum(dtype=np.float64) for ep in episodes]),
        metadata=metadata,
        digest=digest_of(Path(dataset.storage.data_path)),
    )


def dataset_digest(dataset_id: str) -> str:
    """The digest of a local dataset's data files (see :func:`digest_of`)."""
    data = Path(get_dataset_path(dataset_id)) / "data"
    if not data.is_dir():
        raise DatasetError(f"dataset {dataset_id} not found locally in {get_dataset_path()}")
    return digest_of(data)


def digest_of(data: Path) -> str:
    """sha256 over the names and bytes of the files under a dataset's `data` directory: two runs
    with the same digest trained on the same data, whatever machine or storage it came from."""
    digest = hashlib.sha256()
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        digest.update(path.relative_to(data).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def fetch_dataset(uri: str, destination: Path) -> Path:
    """Copy the Minari dataset directory at `uri` (the directory holding `data/`, e.g.
    ``s3://bucket/datasets/hopper-medium-v0`` or ``file:///mnt/datasets/hopper-medium-v0``) into
    `destination` with pyarrow's filesystems; returns its `data` directory. Credentials come from
    the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, the GCS
    default credentials, ...), never from the URI."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        data = path.rstrip("/") + "/data"
        if filesystem.get_file_info(data).type != fs.FileType.Directory:
            raise DatasetError(f"dataset URI {uri}: no Minari dataset there (expected a directory with data/ in it)")
        fs.copy_files(data, str(destination / "data"), source_filesystem=filesystem,
                      destination_filesystem=fs.LocalFileSystem())
    except (OSError, ValueError) as exc:  # pyarrow's errors: not found, no credentials, unknown scheme
        raise DatasetError(f"dataset URI {uri} could not be read: {_reason(exc)}") from exc
    return destination / "data"


def _open_fetched(dataset_id: str, uri: str, local: Path) -> minari.MinariDataset:
    data = fetch_dataset(uri, local)
    try:
        recorded = MinariStorage.read_raw_metadata(data).get("dataset_id")
        dataset = minari.MinariDataset(data)
    except Exception as exc:
        raise DatasetError(f"dataset {dataset_id} at {uri} could not be read: {_reason(exc)}") from exc
    if recorded != dataset_id:
        raise DatasetError(f"dataset URI {uri} holds dataset {recorded!r}, not {dataset_id!r}")
    return dataset


def _open(dataset_id: str, download: bool) -> minari.MinariDataset:
    _check_id(dataset_id)
    local = get_dataset_path(dataset_id).joinpath("data").is_dir()
    if not local and dataset_id.startswith(f"{NAMESPACE}/"):
        # Our own datasets exist only where they were built: Minari's remote never has them.
        raise DatasetError(
            f"dataset {dataset_id} not found in {get_dataset_path()}: "
            "build it with `rlservice datasets build --env ENV --quality QUALITY`"
        )
    if not local and not download:
        raise DatasetError(f"dataset {dataset_id} not found locally in {get_dataset_path()} (download disabled)")
    try:
        # Minari reads the local copy when there is one and contacts the remote only otherwise;
        # the remote client's retry warnings would break the one-line error, so they are muted.
        with _quiet_logger("huggingface_hub"):
            return minari.load_dataset(dataset_id, download=download)
    except Exception as exc:
        problem = "could not be read" if local else "not found locally and could not be downloaded"
        raise DatasetError(f"dataset {dataset_id} {problem}: {_reason(exc)}") from exc


@contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_episodes(dataset_id: str, dataset: minari.MinariDataset) -> list[Episode]:
    try:
        return [
            Episode(
                observations=np.asarray(ep.observations, dtype=np.float32),
                actions=np.asarray(ep.actions, dtype=np.float32),
                rewards=np.asarray(ep.rewards, dtype=np.float32).reshape(-1),
                terminations=np.asarray(ep.terminations, dtype=bool).reshape(-1),
                truncations=np.asarray(ep.truncations, dtype=bool).reshape(-1),
            )
            for ep in dataset.iterate_episodes()
        ]
    except Exception as exc:  # e.g. files missing after an interrupted download
        raise DatasetError(f"dataset {dataset_id} could not be read: {_reason(exc)}") from exc


# ---------------------------------------------------------------- validation


def _check_id(dataset_id: str) -> None:
    # Minari's own parser fails with a TypeError on ids without a version.
    if not re.search(r"-v\d+$", dataset_id):
        raise DatasetError(f"dataset id {dataset_id!r} has no version: Minari ids end in -vN, e.g. {dataset_id}-v0")
    try:
        parse_dataset_id(dataset_id)
    except ValueError:
        raise DatasetError(f"dataset id {dataset_id!r} is malformed: expected (namespace/)name-vN") from None


def _check_ref_scores(dataset_id: str, ref_min, ref_max) -> tuple[float, float]:
    scores = {"ref_min_score": ref_min, "ref_max_score": ref_max}
    for name, value in scores.items():
        if value is None:
            raise DatasetError(f"dataset {dataset_id} has no {name}, needed for normalised scores")
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise DatasetError(f"dataset {dataset_id}: {name} is {value!r}, not a finite number")
    if not ref_max > ref_min:
        raise DatasetError(f"dataset {dataset_id}: ref_max_score {ref_max} must exceed ref_min_score {ref_min}")
    return float(ref_min), float(ref_max)


def _box(dataset_id: str, owner: str, kind: str, space: gym.Space) -> gym.spaces.Box:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise DatasetError(f"dataset {dataset_id}: {owner} has {kind} space {space}; only flat Box spaces work")
    if kind == "action" and not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise DatasetError(f"dataset {dataset_id}: {owner} has an unbounded action space {space}")
    return space


def _check_episodes(
    dataset_id: str, env_id: str, episodes: Sequence[Episode], obs_space: gym.spaces.Box, act_space: gym.spaces.Box
) -> None:
    if not episodes:
        raise DatasetError(f"dataset {dataset_id} has no episodes")
    for i, ep in enumerate(episodes):
        steps = len(ep.actions)
        expected = {
            "observations": (steps + 1, *obs_space.shape),
            "actions": (steps, *act_space.shape),
            "rewards": (steps,),
            "terminations": (steps,),
            "truncations": (steps,),
        }
        for field, shape in expected.items():
            actual = np.shape(getattr(ep, field))
            if actual != shape:
                raise DatasetError(
                    f"dataset {dataset_id}: episode {i} {field} have shape {actual}, expected {shape} for {env_id}"
                )
    for field in ("observations", "actions", "rewards"):
        bad = sum(int(np.size(v) - np.isfinite(v).sum()) for v in (getattr(ep, field) for ep in episodes))
        if bad:
            raise DatasetError(f"dataset {dataset_id}: {field} contain {bad} non-finite values (NaN or inf)")
    tolerance = _ACTION_TOLERANCE * (act_space.high - act_space.low)
    outside = sum(
        int(((ep.actions < act_space.low - tolerance) | (ep.actions > act_space.high + tolerance)).sum())
        for ep in episodes
    )
    if outside:
        raise DatasetError(
            f"dataset {dataset_id}: {outside} action values lie outside {env_id}'s action box "
            f"[{act_space.low.min()}, {act_space.high.max()}]"
        )


def _reason(exc: BaseException) -> str:
    """A short one-line account of an exception from a library."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
