"""Presets: the agent knobs of each published method (SPEC.md, Presets), by task family."""

from __future__ import annotations

from typing import Any, Literal

from rlservice.errors import ConfigError

Domain = Literal["mujoco", "antmaze", "adroit"]


def domain_of(dataset_id: str) -> Domain:
    """The task family decides a few preset values (SPEC.md gives MuJoCo/AntMaze/Adroit ones)."""
    lowered = dataset_id.lower()
    if "antmaze" in lowered:
        return "antmaze"
    if any(task in lowered for task in ("adroit", "pen-", "hammer", "door", "relocate")):
        return "adroit"
    return "mujoco"


def preset_values(name: str, domain: Domain, action_dim: int) -> dict[str, Any]:
    """Agent knobs of a published method (SPEC.md, Presets)."""
    antmaze = domain == "antmaze"
    td3bc = {"algorithm": "td3", "num_critics": 2, "critic_layernorm": False, "bc_weight": 0.4}
    presets = {
        "td3bc": td3bc,
        "pars": {
            "critic_layernorm": True,
            "reward_scale": 10.0,
            "pa_alpha": 1e-3,
            "pa_distance": 1000.0 if antmaze else 100.0,
            "num_critics": 4 if antmaze else 10,
            # PARS's beta is summed over action dims; MuJoCo uses no BC term at all.
            "bc_weight": 0.0 if domain == "mujoco" else 0.01 * action_dim,
        },
        "pani": {
            **td3bc,
            "critic_layernorm": True,
            "actor_layernorm": True,
            "noise_kind": "hybrid",
            "noise_sigma": 0.1,
        },
        "dmg": {
            "critic_layernorm": False,
            "num_critics": 2,
            "dmg_lambda": 0.25,
            "bc_weight": 0.5 if antmaze else 0.1,
            "awr_temperature": 10.0 if antmaze else 3.0,
            "awr_max_weight": 100.0 if antmaze else 3.0,
            "expectile": 0.9 if antmaze else 0.7,
            "actor_lr_schedule": "cosine",
        },
        "iql": {
            "algorithm": "iql",
            "critic_layernorm": False,
            "dmg_lambda": 0.0,
            "expectile": 0.9 if antmaze else 0.7,
            "awr_temperature": 10.0 if antmaze else 3.0,
            "awr_max_weight": 100.0,
            "policy_freq": 1,
        },
    }
    if name not in presets:
        raise ConfigError(f"preset={name!r} is unknown; choose one of {', '.join(sorted(presets))}")
    values = dict(presets[name])
    if antmaze and (values.get("algorithm") == "iql" or values.get("dmg_lambda", 1.0) < 1):
        values["reward_shift"] = -1.0
    return values


PRESETS = ("td3bc", "pars", "pani", "dmg", "iql")
