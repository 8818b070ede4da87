"""`rlservice train`: one offline agent on a Minari dataset."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlservice.errors import RLServiceError
from rlservice.paths import home

_TRAIN_FLAGS = {"steps": "train.steps", "seed": "train.seed", "num_seeds": "train.num_seeds", "device": "train.device",
                "eval_every": "train.eval_every", "eval_episodes": "train.eval_episodes", "log_every": "train.log_every"}


def _train(args: argparse.Namespace) -> int:
    from rlservice.config.run import build_run_config, load_yaml, parse_overrides
    from rlservice.data.minari_io import load_offline_data
    from rlservice.training.trainer import Trainer, check_device

    uri = None
    if not args.no_tracking:
        from rlservice.tracking.store import check_reachable, resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri)
        check_reachable(uri)  # an unreachable server fails before any data is read
    budget = {key.removeprefix("train."): getattr(args, flag) for flag, key in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.resume:
        if args.set or args.preset or args.dataset or args.dataset_uri or args.config:
            raise RLServiceError("--resume continues a run as it was: only --steps, --eval-*, --log-every and --device may change")
        if args.device:
            check_device(args.device)
        trainer = Trainer.from_checkpoint(args.resume, **budget)
    else:
        spec = load_yaml(args.config) if args.config else {}
        overrides = {**parse_overrides(args.set), **{f"train.{k}": v for k, v in budget.items()},
                     **({"dataset.uri": args.dataset_uri} if args.dataset_uri else {})}
        checked = build_run_config(args.dataset, args.preset, spec, overrides)  # bad input fails before any data is read
        check_device(checked.train.device)
        data = load_offline_data(checked.dataset.id, download=checked.dataset.download, uri=checked.dataset.uri)
        run_config = build_run_config(args.dataset, args.preset, spec, overrides, action_dim=data.actions.shape[1])
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{run_config.dataset.id.replace('/', '_')}-{run_config.preset or 'custom'}-s{run_config.train.seed}-{stamp}"
        trainer = Trainer(run_config, Path(args.out) if args.out else home() / "runs" / name, data=data)
    if uri is None:
        result, run_id = trainer.run(progress=not args.no_progress), None
    else:
        from rlservice.tracking.runs import log_training_run

        result, run_id = log_training_run(uri, args.experiment, trainer, progress=not args.no_progress)
    if args.json:
        print(json.dumps({**result.summary(), **({"mlflow_run_id": run_id} if run_id else {})}))
    else:
        score = "n/a" if result.normalized_score is None else f"{result.normalized_score:.1f}"
        tracked = f"; MLflow run {run_id} in experiment {args.experiment}" if run_id else ""
        print(
            f"{result.status}: {result.steps} steps, normalised score {score}, "
            f"{result.steps_per_second:.0f} steps/s; checkpoint {result.checkpoint}{tracked}"
        )
    return 0 if result.status == "completed" else 3


def register(sub) -> None:
    p = sub.add_parser("train", help="train one offline agent on a Minari dataset")
    p.add_argument("--dataset", help="Minari dataset id, e.g. rlservice/hopper-v5/medium-v0")
    p.add_argument("--dataset-uri", metavar="URI",
                   help="read dataset --dataset from this Minari dataset directory on shared storage (s3://..., "
                        "file:///...) instead of the local copy; credentials come from the environment")
    p.add_argument("--preset", help="td3bc | pars | pani | dmg | iql")
    p.add_argument("--config", help="YAML run spec (dataset, preset, agent, train sections)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a knob (repeatable)")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-seeds", type=int, help="independent seeds trained together, vectorised")
    p.add_argument("--device")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-episodes", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--out", help="run directory (default: $RLSERVICE_HOME/runs/NAME)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store)")
    p.add_argument("--experiment", default="rlservice-train", help="MLflow experiment (default rlservice-train)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=_train)
