"""Checkpoints: plain state_dicts (`state.pt`, loaded with weights_only=True, so loading never
runs code) plus the resolved config and shapes as JSON (`config.json`)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

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
    config_file, state_file = directory / CONFIG, directory / STATE
    try:
        info = json.loads(config_file.read_text())
        run_config = RunConfig.model_validate(info.pop("run"))
    except json.JSONDecodeError as exc:
        raise RLServiceError(f"checkpoint file {config_file} is not JSON ({exc.msg} at line {exc.lineno})") from None
    except (TypeError, KeyError, AttributeError, ValidationError) as exc:
        raise RLServiceError(f"checkpoint file {config_file} is not a checkpoint's config: {_first_line(exc)}") from None
    try:
        state = torch.load(state_file, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, i.e. running whatever code the file holds: never.
        raise RLServiceError(f"checkpoint file {state_file} holds something other than tensors and "
                             "plain containers; it will not be loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = "is empty" if state_file.stat().st_size == 0 else f"is damaged or truncated ({_first_line(exc)})"
        raise RLServiceError(f"checkpoint file {state_file} {reason}") from None
    if not isinstance(state, dict) or "learner" not in state:
        raise RLServiceError(f"checkpoint file {state_file} holds no learner state")
    return state, run_config, info


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
