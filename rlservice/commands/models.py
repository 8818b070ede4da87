"""`rlservice models`: the registered policies: list, show (versions, aliases, lineage), export."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile

from rlservice.commands._output import output_to
from rlservice.paths import home


def _uri(args: argparse.Namespace) -> str:
    from rlservice.tracking.store import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    return uri


def _list(args: argparse.Namespace) -> int:
    from rlservice.tracking.registry import list_models

    rows = list_models(_uri(args))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<32} {'latest':>6}  aliases")
    for row in rows:
        aliases = " ".join(f"{a}=v{v}" for a, v in sorted(row["aliases"].items())) or "-"
        print(f"{row['name']:<32} {row['latest_version'] or '-':>6}  {aliases}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from rlservice.tracking.registry import show_model

    model = show_model(_uri(args), args.name)
    if args.json:
        print(json.dumps(model))
        return 0
    print(f"{model['name']}: {len(model['versions'])} versions")
    print(f"{'version':>7}  {'aliases':<12} {'confirmed [95% CI]':<24} {'episodes':>8} {'checkpoint':<10} "
          f"{'selection':>9} {'trials':>6}  {'dataset':<36} {'preset':<7} {'run id':<32}  parent run")
    for v in model["versions"]:
        tags = v["tags"]
        confirmed = (f"{_score(tags['confirmed_score'])} [{_score(tags.get('confirmed_ci_low'))}, "
                     f"{_score(tags.get('confirmed_ci_high'))}]" if "confirmed_score" in tags else "-")
        episodes = (f"{tags.get('confirmed_seeds', '1')}x{tags['confirmed_episodes']}"
                    if "confirmed_episodes" in tags else "-")
        print(
            f"{v['version']:>7}  {','.join(v['aliases']) or '-':<12} {confirmed:<24} {episodes:>8} "
            f"{tags.get('confirmed_checkpoint', '-'):<10} {_score(tags.get('selection_score', tags.get('score'))):>9} "
            f"{tags.get('trials', '-'):>6}  {tags.get('dataset', '-'):<36} {tags.get('preset', '-'):<7} "
            f"{tags.get('run_id', v['run_id']):<32}  {tags.get('parent_run_id', '-')}"
        )
    print("confirmed: score on fresh episodes (seeds x episodes per seed); selection: what the search saw; "
          "champion moves on confirmed scores only")
    return 0


def _score(tag: str | None) -> str:
    try:
        return f"{float(tag):.2f}"
    except (TypeError, ValueError):
        return "-"


def _export(args: argparse.Namespace) -> int:
    from rlservice.tracking.export import (
        check_output_path,
        export_policy,
        policy_from_checkpoint,
    )
    from rlservice.tracking.registry import download_checkpoint

    check_output_path(args.out)
    uri = _uri(args)
    log = home() / "logs" / "export.log"
    with tempfile.TemporaryDirectory() as tmp, (contextlib.nullcontext() if args.verbose else output_to(log)):
        checkpoint, version = download_checkpoint(uri, args.model, tmp)
        out = export_policy(policy_from_checkpoint(checkpoint, args.seed_index), args.format, args.out)
    print(f"{out}: {args.format} policy of {version.name} version {version.version}"
          + ("" if args.verbose else f" (the exporters' warnings: {log}; --verbose shows them)"))
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="registered policies: list, show, export")
    msub = p.add_subparsers(dest="models_command", required=True)

    def add(name: str, help: str, func):
        c = msub.add_parser(name, help=help)
        c.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store)")
        c.set_defaults(func=func)
        return c

    add("list", "registered models with their latest version and aliases", _list).add_argument("--json", action="store_true")
    show = add("show", "a model's versions, aliases and lineage tags", _show)
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    export = add("export", "write a standalone policy file (normalisation and action scaling inside)", _export)
    export.add_argument("model", help="NAME@ALIAS, NAME/VERSION or models:/...")
    export.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--seed-index", type=int, default=0, help="which seed of a multi-seed checkpoint (default 0)")
    export.add_argument("--verbose", action="store_true", help="show the exporters' warnings instead of logging them")
