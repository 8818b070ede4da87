"""Standalone policies out of a checkpoint: a `Policy`, or one file (TorchScript / ONNX) that maps
raw observations to environment actions with the normaliser and the action box inside.

Nothing here calls MLflow: `registry` fetches checkpoints from the registry and calls this module.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from rlservice.agent.policy import Policy
from rlservice.errors import RLServiceError
from rlservice.training.checkpoint import load_checkpoint

FORMATS = ("torchscript", "onnx")


def policy_from_checkpoint(directory: str | Path, seed_index: int = 0) -> Policy:
    """Seed `seed_index`'s policy out of a (possibly multi-seed) trainer checkpoint."""
    state, run_config, _ = load_checkpoint(directory)
    seeds = run_config.train.num_seeds
    if not 0 <= seed_index < seeds:
        raise RLServiceError(f"seed index {seed_index} is outside the checkpoint's {seeds} seeds")
    return _policy(state, run_config, seed_index)


def seed_policies(directory: str | Path) -> tuple[list[Policy], tuple[int, int, bool]]:
    """Every seed's policy of a checkpoint, and the actor's shape (hidden, layers, layernorm)
    that `Policy.from_state_dict` needs to rebuild them elsewhere."""
    state, run_config, _ = load_checkpoint(directory)
    cfg = run_config.agent
    policies = [_policy(state, run_config, k) for k in range(run_config.train.num_seeds)]
    return policies, (cfg.actor_hidden, cfg.actor_layers, cfg.actor_layernorm)


def _policy(state, run_config, seed_index: int) -> Policy:
    cfg = run_config.agent
    flat = {f"actor.{k}": v[seed_index : seed_index + 1] for k, v in state["learner"]["actor"].items()}
    flat.update({f"normalizer.{k}": v for k, v in state["normalizer"].items()})
    flat.update(action_low=state["action_low"], action_high=state["action_high"])
    return Policy.from_state_dict(flat, cfg.actor_hidden, cfg.actor_layers, cfg.actor_layernorm)


class PolicyModule(nn.Module):
    """`Policy.act` as a module: raw observations [B, obs_dim] -> actions [B, act_dim].

    The normalisation runs in float64 and is then rounded to float32, as `Policy.act` does with
    float64 environment observations, so both give the same actions for the same input.
    """

    def __init__(self, policy: Policy):
        super().__init__()
        self.actor = copy.deepcopy(policy.actor).requires_grad_(False)
        self.register_buffer("mean", torch.from_numpy(policy.normalizer.mean).double())
        self.register_buffer("std", torch.from_numpy(policy.normalizer.std).double())
        self.register_buffer("low", torch.from_numpy(policy.action_low))
        self.register_buffer("high", torch.from_numpy(policy.action_high))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        normalized = ((observations.double() - self.mean) / self.std).float()
        unit = self.actor(normalized.unsqueeze(0))[0]
        return self.low + (unit + 1.0) * 0.5 * (self.high - self.low)


def check_output_path(out: str | Path) -> None:
    """A file the user names goes into a directory that exists: a typo must not create directories."""
    if not Path(out).parent.is_dir():
        raise RLServiceError(f"--out {out}: directory {Path(out).parent} does not exist")


def export_policy(policy: Policy, fmt: str, out: str | Path) -> Path:
    """Write `policy` as a TorchScript (`torch.jit.load`) or ONNX file (input `observations`,
    float32 [batch, obs_dim]; output `actions`)."""
    if fmt not in FORMATS:
        raise RLServiceError(f"--format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    check_output_path(out)
    module = PolicyModule(policy).eval()
    example = torch.zeros(2, policy.normalizer.mean.shape[0])
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.trace(module, example.double()).save(str(out))
        else:
            _export_onnx(module, example, out)
    return out


def _export_onnx(module: PolicyModule, example: torch.Tensor, out: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise RLServiceError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        module,
        (example,),
        str(out),
        input_names=["observations"],
        output_names=["actions"],
        dynamic_shapes={"observations": {0: batch}},
        external_data=False,
        verbose=False,
    )
