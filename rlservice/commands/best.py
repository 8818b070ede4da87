"""`rlservice best`: an experiment's best configurations, by selection score, with intervals and
the confirmed score where the job confirmed the run."""

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
    """Selection score (the best evaluation during training) with its 95% interval and what it
    rests on, and the confirmed score on fresh episodes where the job confirmed the run."""
    lines = [f"{'#':>3}  {'selection score [95% CI]':<38} {'confirmed on fresh episodes [95% CI]':<46} "
             f"{'preset':<7} {'run id':<32}  knobs that differ from the preset"]
    for rank, row in enumerate(rows, 1):
        knobs = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(row["knobs"].items())) or "-"
        selection = _interval(row["score_interval"]) if row.get("score_interval") else f"{row['score']:.2f}"
        confirmed = (f"{_interval(row['confirmed'])} {row.get('confirmed_checkpoint') or ''}".strip()
                     if row.get("confirmed") else "-")
        lines.append(f"{rank:>3}  {selection:<38} {confirmed:<46} {row['preset'] or '-':<7} {row['run_id']:<32}  {knobs}")
    lines.append("selection: the run's best evaluation during training (few episodes, selected: optimistic); "
                 "confirmed: re-evaluated after the search on seeds never used before")
    return "\n".join(lines)


def _interval(interval: dict) -> str:
    from rlservice.training.intervals import Interval

    return Interval(**interval).text()


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
