"""Checkpoints: plain state_dicts (`state.pt`, loaded with weights_only=True, so loading never
runs code) plus the resolved config and shapes as JSON (`config.json`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rlservice.config.run import RunConfig
from rlservice.errors import RLServiceError

STATE, CONFIG = "state.pt", "config.json"


def save_checkpoint(directory: str | Path, state: dict[str, Any], run_config: RunConfig, info: dict[str, Any]) -> Path:
    """Write atomically: a reader never sees a half-written checkpoint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp_state = directory / f".{STATE}.tmp"
    torch.save(state, tmp_state)
    os.replace(tmp_state, directory / STATE)
    tmp_config = directory / f".{CONFIG}.tmp"
    tmp_config.write_text(json.dumps({"run": run_config.model_dump(mode="json"), **info}, indent=2))
    os.replace(tmp_config, directory / CONFIG)
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[dict[str, Any], RunConfig, dict[str, Any]]:
    directory = Path(directory)
    if not (directory / STATE).is_file() or not (directory / CONFIG).is_file():
        raise RLServiceError(f"checkpoint {str(directory)!r} not found (expected {STATE} and {CONFIG} in it)")
    info = json.loads((directory / CONFIG).read_text())
    run_config = RunConfig.model_validate(info.pop("run"))
    state = torch.load(directory / STATE, map_location=device, weights_only=True)
    return state, run_config, info
