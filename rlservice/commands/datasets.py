"""`rlservice datasets`: build D4RL-style datasets locally, list them, describe one."""

from __future__ import annotations

import argparse
import json
import sys

# The same as rlservice.jobs.dataset_factory.QUALITIES, repeated so that the CLI starts without importing torch and Ray.
QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")


def _build(args: argparse.Namespace) -> int:
    from rlservice.jobs.dataset_factory import build_dataset

    try:
        dataset_id = build_dataset(
            args.env, args.quality, budget_steps=args.budget_steps, dataset_steps=args.dataset_steps, seed=args.seed,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print("error: interrupted; nothing half-written was kept (no dataset, no behaviour-agent cache entry)",
              file=sys.stderr)
        return 130
    print(dataset_id)
    return 0


def _list(args: argparse.Namespace) -> int:
    from rlservice.data.minari_io import damage, list_local_datasets, read_metadata

    rows = []
    for dataset_id in list_local_datasets():
        metadata = read_metadata(dataset_id)
        rows.append({"id": dataset_id, "episodes": metadata.get("total_episodes"), "steps": metadata.get("total_steps"),
                     "damaged": damage(dataset_id)})
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max([len(r["id"]) for r in rows] + [2])
    print(f"{'ID':<{width}}  {'EPISODES':>9}  {'STEPS':>10}  STATUS")
    for r in rows:
        status = f"damaged: {r['damaged']}" if r["damaged"] else "ok"
        print(f"{r['id']:<{width}}  {r['episodes']:>9}  {r['steps']:>10}  {status}")
    return 0


def describe(dataset_id: str) -> dict:
    """What `datasets info` shows: size, returns, normalised mean return, reference scores, provenance."""
    from rlservice.data.minari_io import load_offline_data, normalized_score

    data = load_offline_data(dataset_id, download=False)
    returns = data.episode_returns
    agent = data.metadata.get("behaviour_agent")
    return {
        "id": dataset_id,
        "env": data.env_id,
        "quality": data.metadata.get("quality"),
        "episodes": len(returns),
        "steps": len(data.rewards),
        "return_mean": float(returns.mean()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "normalized_return_mean": normalized_score(float(returns.mean()), data.ref_min_score, data.ref_max_score),
        "ref_min_score": data.ref_min_score,
        "ref_max_score": data.ref_max_score,
        "behaviour_agent": agent,
        "budget_steps": agent["budget_steps"] if agent else None,
    }


def _info(args: argparse.Namespace) -> int:
    info = describe(args.dataset_id)
    if args.json:
        print(json.dumps(info))
        return 0
    agent = info["behaviour_agent"]
    if agent:
        points = ", ".join(f"step {c['env_step']} (return {c['return_mean']:.1f})" for c in agent["checkpoints"])
        behaviour = (f"{agent['algorithm']}, seed {agent['seed']}, budget {agent['budget_steps']} steps, expert return "
                     f"{agent['expert_return']:.1f}" + (f"; checkpoints {points}" if points else ""))
    else:
        behaviour = "none recorded"
    lines = [
        ("env", info["env"]),
        ("quality", info["quality"] or "not recorded"),
        ("episodes", info["episodes"]),
        ("steps", info["steps"]),
        ("return", f"mean {info['return_mean']:.1f}, min {info['return_min']:.1f}, max {info['return_max']:.1f}"),
        ("normalised", f"{info['normalized_return_mean']:.1f}"),
        ("ref scores", f"min {info['ref_min_score']:.1f}, max {info['ref_max_score']:.1f}"),
        ("behaviour", behaviour),
    ]
    print(info["id"])
    for name, value in lines:
        print(f"  {name:<11} {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("datasets", help="build and inspect local Minari datasets")
    dsub = p.add_subparsers(dest="datasets_command", required=True)

    b = dsub.add_parser("build", help="build a D4RL-style dataset locally (trains or reuses the behaviour agent)")
    b.add_argument("--env", required=True, help="gymnasium id with a Box action space, e.g. Hopper-v5")
    b.add_argument("--quality", required=True, choices=QUALITIES)
    b.add_argument("--budget-steps", type=int, help="env steps of behaviour-agent training (default 1000000); "
                   "for random: sets ref_max_score from that agent instead of D4RL's table")
    b.add_argument("--dataset-steps", type=int, help="transitions to collect (default 1000000; medium-expert: per part; "
                   "not for medium-replay)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same id")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_build)

    ls = dsub.add_parser("list", help="local datasets with their episodes and steps")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    i = dsub.add_parser("info", help="episodes, steps, returns, normalised return, reference scores, behaviour agent")
    i.add_argument("dataset_id")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_info)
