"""The model registry: register a checkpoint's policy, move the `champion` alias, and get
policies and full learners back out of registered versions.

A registered version is a pyfunc "models from code" model (`rlservice/tracking/pyfunc_model.py`) whose only
artifact is the trainer checkpoint (state.pt + config.json), so the same version serves
`mlflow.pyfunc.load_model(...).predict`, fine-tuning (`load_registered_trainer`) and export.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from rlservice.errors import RLServiceError
from rlservice.paths import home
from rlservice.tracking.export import policy_from_checkpoint
from rlservice.tracking.store import client, error_line, resolve_tracking_uri

CHAMPION = "champion"
MODEL_NAME_IN_RUN = "policy"
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # a file, not imported here: it is the model
CHECKPOINT_ARTIFACT = "checkpoint"
_REF = re.compile(r"^(?:models:/)?(?P<name>[^@/]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def _parse(ref: str) -> re.Match:
    match = _REF.match(ref)
    if not match:
        raise RLServiceError(f"model {ref!r} is not of the form NAME@ALIAS, NAME/VERSION or models:/NAME@ALIAS")
    return match


def model_uri(ref: str) -> str:
    """`NAME@ALIAS`, `NAME/VERSION` or a `models:/` URI -> the `models:/` URI."""
    match = _parse(ref)
    suffix = f"@{match['alias']}" if match["alias"] else f"/{match['version']}"
    return f"models:/{match['name']}{suffix}"


@contextmanager
def fluent_uri(uri: str):
    """MLflow's model logging reads the process-wide tracking URI: point it at `uri` for the
    duration, then put back what was set (`set_tracking_uri` mirrors it in MLFLOW_TRACKING_URI)."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)


def register_policy(uri: str, run_id: str, checkpoint_dir: str | Path, name: str, tags: dict[str, str]):
    """Log the checkpoint's policy as a model of run `run_id` and register it as a new version of
    `name` with `tags`; returns the ModelVersion."""
    policy = policy_from_checkpoint(checkpoint_dir)
    obs_dim, act_dim = policy.normalizer.mean.shape[0], policy.action_low.shape[0]
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    with fluent_uri(uri):
        experiment_id = mlflow.get_run(run_id).info.experiment_id
        logged = mlflow.initialize_logged_model(name=MODEL_NAME_IN_RUN, source_run_id=run_id, experiment_id=experiment_id)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            model_id=logged.model_id,
            python_model=str(MODEL_CODE),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
            model_config={"seed_index": 0},
            metadata={"input": f"raw observations [batch, {obs_dim}]", "output": f"env actions [batch, {act_dim}]"},
            pip_requirements=requirements,  # given, so MLflow need not load the model to infer them
        )
        return mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items()})


def promote_if_better(uri: str, name: str, version: str, confirmed_score: float | None, dataset_id: str) -> bool:
    """Move `champion` to `version` when there is no champion yet, or when `confirmed_score` beats
    the champion's confirmed score on the same dataset. Selection scores never move it: a
    candidate without a confirmed score, or a champion without one, leaves the champion where it
    is (the tuning driver confirms such a champion first), and a champion of another dataset is
    not comparable and stays."""
    c = client(uri)
    current = _champion(c, name)
    if current is not None:
        if current.tags.get("dataset") != dataset_id or confirmed_score is None:
            return False
        if "confirmed_score" not in current.tags or confirmed_score <= float(current.tags["confirmed_score"]):
            return False
    c.set_registered_model_alias(name, CHAMPION, version)
    return True


def unconfirmed_champion(uri: str, name: str, dataset_id: str):
    """The champion of `name` on `dataset_id` when it has no confirmed score (registered before
    confirmation, or by a job that turned it off), else None."""
    current = _champion(client(uri), name)
    if current is None or current.tags.get("dataset") != dataset_id or "confirmed_score" in current.tags:
        return None
    return current


def set_version_tags(uri: str, name: str, version: str, tags: dict[str, Any]) -> None:
    c = client(uri)
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, str(value))


def _champion(c: mlflow.MlflowClient, name: str):
    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _version(c: mlflow.MlflowClient, ref: str):
    match = _parse(ref)
    try:
        if match["alias"]:
            return c.get_model_version_by_alias(match["name"], match["alias"])
        return c.get_model_version(match["name"], match["version"])
    except MlflowException as exc:
        raise RLServiceError(f"model {ref!r} not found in the registry: {error_line(exc)}") from None


def download_checkpoint(uri: str, ref: str, dst: str | Path) -> tuple[Path, Any]:
    """Download the checkpoint of registered model `ref` into `dst`; returns (checkpoint dir, ModelVersion)."""
    version = _version(client(uri), ref)
    return _download(uri, version, dst), version


def _download(uri: str, version, dst: str | Path) -> Path:
    with fluent_uri(uri):
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(dst))
    artifacts = Model.load(local).flavors["python_function"]["artifacts"]
    return Path(local) / artifacts[CHECKPOINT_ARTIFACT]["path"]


def load_registered_trainer(ref: str, *, tracking_uri: str | None = None, run_dir: str | Path | None = None,
                            **train_overrides):
    """The full learner of a registered version (actor, critics, targets, V, optimisers, normaliser,
    config, dataset id), ready to continue training in `run_dir`; returns (Trainer, info).
    `train_overrides` (e.g. steps=...) change the training budget, as in `Trainer.from_checkpoint`."""
    from rlservice.training.trainer import Trainer

    tracking_uri = resolve_tracking_uri(tracking_uri)
    version = _version(client(tracking_uri), ref)
    if run_dir is None:
        run_dir = home() / "runs" / f"{version.name}-v{version.version}-{time.strftime('%Y%m%d-%H%M%S')}"
    checkpoint = _download(tracking_uri, version, Path(run_dir) / "registered")
    trainer = Trainer.from_checkpoint(checkpoint, run_dir=run_dir, **train_overrides)
    info = {
        "model_uri": f"models:/{version.name}/{version.version}",
        "name": version.name,
        "version": version.version,
        "run_id": version.tags.get("run_id", version.run_id),
        "dataset": trainer.config.dataset.id,
        "tags": dict(version.tags),
        "checkpoint": str(checkpoint),
    }
    return trainer, info


def list_models(uri: str) -> list[dict[str, Any]]:
    c = client(uri)
    return [
        {
            "name": m.name,
            "latest_version": max((int(v.version) for v in m.latest_versions), default=None),
            "aliases": dict(m.aliases),
            "description": m.description or "",
        }
        for m in c.search_registered_models(max_results=1000)
    ]


def show_model(uri: str, name: str) -> dict[str, Any]:
    """A registered model's versions with their aliases and lineage tags, newest first.
    (`search_model_versions` leaves aliases empty, so they come from the registered model.)"""
    c = client(uri)
    try:
        model = c.get_registered_model(name)
    except MlflowException as exc:
        raise RLServiceError(f"registered model {name!r} not found: {error_line(exc)}") from None
    aliases_of: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases_of.setdefault(str(version), []).append(alias)
    versions = c.search_model_versions(f"name = '{name}'", max_results=1000)
    return {
        "name": name,
        "aliases": dict(model.aliases),
        "versions": [
            {
                "version": v.version,
                "aliases": sorted(aliases_of.get(str(v.version), [])),
                "created": v.creation_timestamp,
                "run_id": v.run_id,
                "tags": dict(v.tags),
            }
            for v in sorted(versions, key=lambda v: -int(v.version))
        ],
    }

