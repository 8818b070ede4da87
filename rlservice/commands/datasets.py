"""`rlservice datasets`: build and inspect local Minari datasets."""

from __future__ import annotations

import argparse

from rlservice.errors import RLServiceError


def _datasets_build(args: argparse.Namespace) -> int:
    from rlservice.data.minari_io import build_random_dataset, dataset_id_for

    if args.quality != "random":
        raise RLServiceError(f"--quality {args.quality!r} is not available yet; only 'random' can be built")
    dataset_id = build_random_dataset(
        args.env, args.dataset_steps, args.seed, dataset_id=dataset_id_for(args.env, args.quality), overwrite=args.overwrite
    )
    print(dataset_id)
    return 0


def register(sub) -> None:
    p = sub.add_parser("datasets", help="build and inspect local Minari datasets")
    dsub = p.add_subparsers(dest="datasets_command", required=True)
    b = dsub.add_parser("build", help="build a D4RL-style dataset locally")
    b.add_argument("--env", required=True, help="gymnasium id, e.g. Hopper-v5")
    b.add_argument("--quality", required=True, choices=["random", "medium", "medium-replay", "expert", "medium-expert"])
    b.add_argument("--dataset-steps", type=int, default=100_000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=_datasets_build)
