"""`rlservice evaluate`: score a checkpoint or a registered model, online (fresh episodes in its
env) or offline (Fitted Q Evaluation on its own dataset, no environment)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rlservice.config.tuning import CONFIRMATION_SEED_BASE
from rlservice.errors import RLServiceError

# Episodes use env seeds FRESH_SEED + seed + i: the confirmation's fresh seeds, never those of a
# trainer's evaluations (train.seed + i, kept below them by the job checks).
FRESH_SEED = CONFIRMATION_SEED_BASE


def _evaluate(args: argparse.Namespace) -> int:
    if args.episodes < 1 or args.fqe_steps < 1:
        raise RLServiceError(f"--episodes={args.episodes} and --fqe-steps={args.fqe_steps} must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, source = _checkpoint(args, Path(tmp))
        result = _offline(args, checkpoint) if args.offline else _online(args, checkpoint)
    result = {"source": source, **result}
    if args.json:
        print(json.dumps(result))
    elif args.offline:
        low, high = result["fqe_score_interval"]
        print(f"{source}: fqe_score {result['fqe_score']:.1f} [{low:.1f}, {high:.1f}] ({result['interval']}); "
              f"fqe_return {result['fqe_return']:.2f} (discount {result['discount']}) from "
              f"{result['start_states']} start states of {result['dataset']} after {result['fqe_steps']} steps")
    else:
        low, high = result["score_interval"]
        print(f"{source}: normalised score {result['normalized_score']:.1f} [{low:.1f}, {high:.1f}] "
              f"({result['interval']}); mean return {result['mean_return']:.1f} on {result['env_id']}")
    return 0


def _checkpoint(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """A checkpoint directory as given, else a registered model downloaded into `tmp`."""
    if Path(args.target).is_dir():
        return Path(args.target), str(args.target)
    from rlservice.tracking.registry import download_checkpoint, model_uri
    from rlservice.tracking.store import check_reachable, resolve_tracking_uri

    ref = model_uri(args.target)  # one line if it is neither a directory nor a model reference
    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    checkpoint, version = download_checkpoint(uri, ref, tmp)
    return checkpoint, f"models:/{version.name}/{version.version}"


def _online(args: argparse.Namespace, checkpoint: Path) -> dict:
    from rlservice.tracking.export import policy_from_checkpoint
    from rlservice.training.checkpoint import load_checkpoint
    from rlservice.training.evaluation import evaluate
    from rlservice.training.intervals import score_interval

    _, _, info = load_checkpoint(checkpoint)
    policy = policy_from_checkpoint(checkpoint, args.seed_index)
    seed = FRESH_SEED + args.seed
    result = evaluate(policy, info["env_id"], args.episodes, seed, info["ref_min_score"], info["ref_max_score"])
    interval = score_interval(result.normalized)
    return {
        "env_id": info["env_id"], "episodes": args.episodes, "env_seeds": [seed, seed + args.episodes - 1],
        "normalized_score": result.score, "score_interval": [interval.low, interval.high],
        "interval": f"95% stratified bootstrap (rliable) over {args.episodes} episodes", "mean_return": result.mean_return,
        "returns": result.returns.tolist(),
    }


def _offline(args: argparse.Namespace, checkpoint: Path) -> dict:
    from rlservice.data.minari_io import load_offline_data
    from rlservice.tracking.export import policy_from_checkpoint
    from rlservice.training.checkpoint import load_checkpoint
    from rlservice.training.fqe import fit_fqe

    _, run_config, _ = load_checkpoint(checkpoint)
    policy = policy_from_checkpoint(checkpoint, args.seed_index)
    data = load_offline_data(run_config.dataset.id, download=run_config.dataset.download, require_env=False)
    estimate = fit_fqe(policy, data, discount=run_config.agent.discount, steps=args.fqe_steps, seed=args.seed,
                       device=args.device, progress=not args.json)
    return {"dataset": data.dataset_id, **estimate.summary()}


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint or registered model: fresh episodes, or FQE offline")
    p.add_argument("target", metavar="CHECKPOINT_OR_MODEL_URI",
                   help="a checkpoint directory, or NAME@ALIAS, NAME/VERSION, models:/...")
    p.add_argument("--offline", action="store_true",
                   help="Fitted Q Evaluation on the policy's own dataset; needs no environment")
    p.add_argument("--episodes", type=int, default=10, help="online: fresh episodes (default 10)")
    p.add_argument("--fqe-steps", type=int, default=10_000, help="offline: FQE gradient steps (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="online: env seeds start at 1000000 + SEED; offline: FQE's seed")
    p.add_argument("--seed-index", type=int, default=0, help="which seed of a multi-seed checkpoint (default 0)")
    p.add_argument("--device", default="cpu", help="offline: device FQE trains on")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for a model reference")
    p.set_defaults(func=_evaluate)
