"""`rlservice tune`: run, resume, submit and follow hyperparameter tuning jobs.

Job files are validated before anything starts; Ray is imported only once they pass.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from rlservice.config.tuning import check_job_name, load_job

    job = load_job(args.job, args.set)
    if args.name:
        check_job_name(args.name)
    from rlservice.jobs.tune import (
        run_job,  # only now: a bad job file fails before MLflow and Ray load
    )

    name = args.name or f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    def started(job_name: str) -> None:
        print(f"tuning job {job_name}: {job.trials} trials on {job.dataset.id}; "
              f"if interrupted, `rlservice tune resume {job_name}`", file=sys.stderr)

    with _driver_output(args.json):
        outcome = run_job(job, name, args.tracking_uri, args.build_dataset, started=started)
    _show(outcome.to_json(), args.json)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from rlservice.config.tuning import check_job_name
    from rlservice.jobs.tune import resume_job

    check_job_name(args.name, "job name")
    with _driver_output(args.json):
        outcome = resume_job(args.name)
    _show(outcome.to_json(), args.json)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from rlservice.config.tuning import check_job_name, load_job

    job = load_job(args.job, args.set)
    if args.name:
        check_job_name(args.name)
    from rlservice.runtime.submission import (
        submit,  # only now: a bad job file fails before Ray loads
    )

    name = args.name or f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    job_id = submit(args.address, job, name, tracking_uri=args.tracking_uri, build_steps=args.build_dataset,
                    python=args.python, env=args.env)
    if args.json:
        print(json.dumps({"job_id": job_id, "name": name, "address": args.address}))
    else:
        print(f"submitted {job_id} (tuning job {name}); "
              f"follow it with `rlservice tune logs {job_id} --address {args.address} --follow`")
    return 0


def _status(args: argparse.Namespace) -> int:
    from rlservice.runtime.submission import job_status, list_jobs

    rows = [job_status(args.address, args.job_id)] if args.job_id else list_jobs(args.address)
    if args.json:
        print(json.dumps(rows[0] if args.job_id else rows))
    else:
        for row in rows:
            print(f"{row['job_id']:<40} {row['status']:<10} {row.get('message') or ''}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from rlservice.runtime.submission import follow_logs, job_logs, job_status

    if args.follow:
        status = follow_logs(args.address, args.job_id, sys.stdout)
        print(f"job {args.job_id}: {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else 1
    sys.stdout.write(job_logs(args.address, args.job_id))
    return 0 if job_status(args.address, args.job_id)["status"] != "FAILED" else 1


def _driver_output(as_json: bool):
    """With --json, everything but the final JSON object goes to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def _show(outcome: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(outcome, default=str))
        return
    knobs = sorted({k for t in outcome["trials"] for k in t["config"]})
    fqe = outcome.get("selection") != "offline" and any(t.get("fqe_score") is not None for t in outcome["trials"])
    header = ["trial", "status", "score", "final", *(["fqe"] if fqe else []), "steps", *knobs]
    rows = [[t["trial"], t["status"], _fmt(t["score"]), _fmt(t["final_score"]), *([_fmt(t["fqe_score"])] if fqe else []),
             str(t["steps"] or ""), *(_fmt(t["config"].get(k)) for k in knobs)]
            for t in sorted(outcome["trials"], key=lambda t: (t["score"] is None, -(t["score"] or 0)))]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    best, mlflow = outcome["best"], outcome["mlflow"]
    print("score: the trial's best evaluation (its checkpoint); final: its last one (what the search optimises)")
    if outcome.get("selection") == "offline":
        print("selection offline: every score is an FQE estimate (fqe_score), no episode was run")
    if quality := outcome.get("ope_quality"):
        print(f"offline evaluation: Spearman rank correlation of fqe_score with the final online score "
              f"{quality['spearman']:.2f} over {quality['policies']} trials; regret of picking by FQE "
              f"{quality['regret']:.1f} (FQE picks {quality['fqe_pick']}, online best {quality['online_best']})")
    if best:
        print(f"\nbest: trial {best['trial']}, score {_fmt(best['score'])}, config {json.dumps(best['config'])}")
    else:
        print("\nbest: none (no trial completed)")
    print(f"mlflow: experiment {mlflow['experiment']!r}, parent run {mlflow['parent_run_id']} at {mlflow['tracking_uri']}")
    extra = {k: v for k, v in mlflow.items() if k not in ("experiment", "parent_run_id", "tracking_uri")}
    if extra:
        print(f"        {json.dumps(extra, default=str)}")
    print(f"wall time {outcome['wall_time_s']:.0f} s; trials in {outcome['storage']}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def register(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter tuning jobs on Ray Tune + Optuna")
    tsub = p.add_subparsers(dest="tune_command", required=True)

    run = tsub.add_parser("run", help="run a tuning job here (local Ray, or the cluster of a Ray job)")
    _job_arguments(run)
    run.set_defaults(func=_run)

    resume = tsub.add_parser("resume", help="continue an interrupted job; finished trials are kept")
    resume.add_argument("name", help="the job's name (printed when it started); it keeps its MLflow store and parent run")
    resume.add_argument("--json", action="store_true", help="print one JSON object")
    resume.set_defaults(func=_resume)

    submit = tsub.add_parser("submit", help="submit a tuning job to a Ray cluster through the Ray Jobs API")
    _job_arguments(submit)
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--python", help="python of the rlservice environment on the cluster (default: this one)")
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the job (repeatable)")
    submit.set_defaults(func=_submit)

    status = tsub.add_parser("status", help="status of a submitted job, or of all jobs")
    status.add_argument("job_id", nargs="?")
    status.add_argument("--address", required=True)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    logs = tsub.add_parser("logs", help="logs of a submitted job")
    logs.add_argument("job_id")
    logs.add_argument("--address", required=True)
    logs.add_argument("--follow", action="store_true", help="stream until the job ends; exit 0 only if it succeeded")
    logs.set_defaults(func=_logs)


def _job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job file, e.g. tuning/quickstart.yaml")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a job field, e.g. trials=4 or fixed.critic_hidden=64")
    p.add_argument("--name", help="job name (default: the job's `name` plus a timestamp)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the embedded store)")
    p.add_argument("--build-dataset", type=int, metavar="STEPS",
                   help="build the (random) dataset with STEPS transitions if it is missing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
