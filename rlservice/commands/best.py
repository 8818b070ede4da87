"""`rlservice best`: an experiment's best configurations, by score."""

from __future__ import annotations

import argparse
import json

from rlservice.errors import RLServiceError


def _best(args: argparse.Namespace) -> int:
    from rlservice.tracking.runs import best_runs
    from rlservice.tracking.store import check_reachable, resolve_tracking_uri

    if args.top < 1:
        raise RLServiceError(f"--top {args.top}: how many configs to show must be at least 1")
    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    rows = best_runs(uri, args.experiment, args.dataset, args.top)
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no scored runs in experiment {args.experiment}" + (f" on {args.dataset}" if args.dataset else ""))
    else:
        print(_table(rows))
    return 0


def _table(rows: list[dict]) -> str:
    lines = [f"{'#':>3}  {'score':>7}  {'std':>6}  {'preset':<7} {'run id':<32}  knobs that differ from the preset"]
    for rank, row in enumerate(rows, 1):
        knobs = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(row["knobs"].items())) or "-"
        lines.append(
            f"{rank:>3}  {row['score']:>7.2f}  {row['score_std']:>6.2f}  {row['preset'] or '-':<7} {row['run_id']:<32}  {knobs}"
        )
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def register(sub) -> None:
    p = sub.add_parser("best", help="the best configurations of an MLflow experiment, by score")
    p.add_argument("--experiment", required=True, help="MLflow experiment of a tuning job or of `rlservice train`")
    p.add_argument("--dataset", help="only runs on this dataset id")
    p.add_argument("--top", type=int, default=10, help="how many (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store)")
    p.set_defaults(func=_best)
