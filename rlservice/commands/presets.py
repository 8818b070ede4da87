"""`rlservice presets show|list`: what a preset sets on a dataset, and where each value comes from."""

from __future__ import annotations

import argparse
import json
from typing import Any


def describe(preset: str, dataset_id: str, action_dim: int | None = None) -> dict[str, Any]:
    """{"preset", "dataset", "row", "knobs": {name: {"value", "source"}}}: every agent knob (the
    preset's, else the field default), `train.eval_episodes` and the `finetune.*` regime."""
    from rlservice.config.presets import default_eval_episodes, resolve
    from rlservice.config.run import AgentConfig, build_run_config

    resolved = resolve(preset, dataset_id, action_dim)
    agent = build_run_config(dataset_id, preset, action_dim=action_dim).agent  # the values `train` would use
    knobs: dict[str, dict[str, Any]] = {}
    for name in AgentConfig.model_fields:
        knob = resolved.knobs.get(name)
        if knob is None:
            knobs[name] = {"value": getattr(agent, name), "source": "field default"}
        else:
            knobs[name] = {"value": knob.value if knob.value is None else getattr(agent, name), "source": knob.source}
    knobs["train.eval_episodes"] = {"value": default_eval_episodes(dataset_id),
                                    "source": "SPEC.md Evaluation: 100 on AntMaze, 10 elsewhere"}
    for name, knob in resolved.knobs.items():
        if name.startswith("finetune."):
            knobs[name] = {"value": knob.value, "source": knob.source}
    return {"preset": preset, "dataset": dataset_id, "row": resolved.row, "knobs": knobs, "notes": resolved.notes}


def _local_action_dim(dataset_id: str) -> int | None:
    """The action dim of a dataset on this machine (from its metadata), else None."""
    from minari.serialization import deserialize_space

    from rlservice.data.minari_io import list_local_datasets, read_metadata

    if dataset_id not in list_local_datasets():
        return None
    return int(deserialize_space(read_metadata(dataset_id)["action_space"]).shape[0])


def _show(args: argparse.Namespace) -> int:
    from rlservice.config.presets import resolve

    resolve(args.preset, args.dataset)  # an unknown preset fails before any dataset is looked up
    action_dim = args.action_dim if args.action_dim is not None else _local_action_dim(args.dataset)
    out = describe(args.preset, args.dataset, action_dim)
    notes = out.pop("notes")
    if args.json:
        print(json.dumps(out))
        return 0
    row = f"row {out['row']}" if out["row"] else "no row of the paper's tables: general values only"
    print(f"preset {out['preset']} on {out['dataset']}: {row}")
    for note in notes:
        print(f"  note: {note}")
    width = max(len(k) for k in out["knobs"])
    for name, knob in out["knobs"].items():
        value = "(needs the dataset)" if knob["value"] is None and "needs" in knob["source"] else knob["value"]
        print(f"  {name:<{width}}  {value!s:<12}  {knob['source']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from rlservice.config.presets import table_rows

    rows = table_rows()
    if args.json:
        print(json.dumps(rows))
        return 0
    for preset, tables in rows.items():
        print(f"{preset}:" + ("" if tables else " general values only (no per-dataset table)"))
        for table, names in tables.items():
            print(f"  {table}: {', '.join(names)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("presets", help="what a preset sets on a dataset, with the source of each value")
    actions = p.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="every knob a preset resolves to on a dataset, and where it comes from")
    show.add_argument("--preset", required=True, help="td3bc | pars | pani | dmg | iql")
    show.add_argument("--dataset", required=True, help="dataset id (need not be on this machine), e.g. D4RL/pen/cloned-v2")
    show.add_argument("--action-dim", type=int, help="the dataset's action dim, for knobs that scale with it (PARS's beta x d); "
                                                    "default: read from the dataset when it is on this machine")
    show.add_argument("--json", action="store_true", help='print {"preset", "dataset", "row", "knobs": {name: {"value", "source"}}}')
    show.set_defaults(func=_show)
    lst = actions.add_parser("list", help="the paper rows each preset knows")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_list)
