"""`rlservice tune`: run, resume, submit and follow hyperparameter tuning jobs.

Job files are validated before anything starts; Ray is imported only once they pass.

While a job runs, the terminal shows this command's own live table (one line per trial event)
and, at the end, the summary. Everything else the job's processes write (Ray's and Tune's
tables and warnings, worker output, MLflow's notes) goes to `output.log` in the job's record
(named in the summary); `--verbose` shows it instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rlservice.commands._output import output_to

OUTPUT_LOG = "output.log"


def _run(args: argparse.Namespace) -> int:
    from rlservice.config.tuning import budget_warnings, check_job_name, load_job

    job = load_job(args.job, args.set)
    if args.name:
        check_job_name(args.name)
    from rlservice.jobs.tune import (
        job_record_dir,
        run_job,  # only now: a bad job file fails before MLflow and Ray load
    )

    name = args.name or f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with contextlib.ExitStack() as stack:
        screen = _Screen(stack, args.json)

        def started(job_name: str) -> None:
            screen.say(f"tuning job {job_name}: {job.trials} trials on {job.dataset.id}; "
                       f"if interrupted, `rlservice tune resume {job_name}`")
            for line in budget_warnings(job):
                screen.say(line)
            if not args.verbose:  # only now: a job that fails its checks leaves nothing behind
                screen.quiet(job_record_dir(job_name) / OUTPUT_LOG)

        outcome = run_job(job, name, args.tracking_uri, args.build_dataset, started=started,
                          face=screen.face(args.verbose))
    _show(outcome.to_json(), args.json, screen.log)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from rlservice.config.tuning import check_job_name
    from rlservice.jobs.tune import job_record_dir, resume_job

    check_job_name(args.name, "job name")
    with contextlib.ExitStack() as stack:
        screen = _Screen(stack, args.json)
        if not args.verbose and job_record_dir(args.name).is_dir():
            screen.quiet(job_record_dir(args.name) / OUTPUT_LOG)
        outcome = resume_job(args.name, face=screen.face(args.verbose))
    _show(outcome.to_json(), args.json, screen.log)
    return 0


class _Screen:
    """The terminal of a running job. `quiet(log)` sends the process's stdout and stderr (file
    descriptors 1 and 2, so Ray's workers and C libraries follow) to `log` until the job ends;
    the live table keeps writing to the terminal (stderr with --json, stdout otherwise)."""

    def __init__(self, stack: contextlib.ExitStack, as_json: bool):
        self.stack, self.log = stack, None
        self.stream: TextIO = sys.stderr if as_json else sys.stdout
        if as_json:  # everything but the final JSON object goes to stderr
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def quiet(self, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.stream = self.stack.enter_context(output_to(log, self.stream))

    def face(self, verbose: bool):
        from rlservice.jobs.tune import Face

        return Face(say=self.say, verbose=2 if verbose else 0, confirming=self.confirming)

    def confirming(self, done: int, total: int) -> None:
        if done == total or done == 1 or done % max(1, total // 10) == 0:
            self.say(f"confirming the best candidates on fresh episodes: {done}/{total} rollouts done")


def _submit(args: argparse.Namespace) -> int:
    from rlservice.config.tuning import budget_warnings, check_job_name, load_job

    job = load_job(args.job, args.set)
    if args.name:
        check_job_name(args.name)
    from rlservice.runtime.submission import (
        submit,  # only now: a bad job file fails before Ray loads
    )

    name = args.name or f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    job_id = submit(args.address, job, name, tracking_uri=args.tracking_uri, build_steps=args.build_dataset,
                    python=args.python, env=args.env)
    for line in budget_warnings(job):
        print(line, file=sys.stderr)
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


def _show(outcome: dict[str, Any], as_json: bool, log: Path | None = None) -> None:
    if as_json:
        print(json.dumps({**outcome, "output_log": str(log) if log else None}, default=str))
        return
    from rlservice.training.intervals import Interval
    from rlservice.training.tuning_budget import budget_curve

    fqe = outcome.get("selection") != "offline" and any(t.get("fqe_score") is not None for t in outcome["trials"])
    header = ["trial", "status", "selection score [95% CI]", "final", *(["fqe"] if fqe else []), "steps"]
    rows = [[t.get("name") or t["trial"], t["status"], Interval(**t["score_interval"]).text() if t.get("score_interval") else _fmt(t["score"]),
             _fmt(t["final_score"]), *([_fmt(t["fqe_score"])] if fqe else []), str(t["steps"] or "")]
            for t in sorted(outcome["trials"], key=lambda t: (t["score"] is None, -(t["score"] or 0)))]
    _print_table(header, rows)
    print("selection score: the trial's best evaluation during training (what the search saw: optimistic); "
          "final: its last one")
    if outcome.get("selection") == "offline":
        print("selection offline: every score is an FQE estimate (fqe_score), no episode was run")
    if quality := outcome.get("ope_quality"):
        print(f"offline evaluation: Spearman rank correlation of fqe_score with the final online score "
              f"{quality['spearman']:.2f} over {quality['policies']} trials; regret of picking by FQE "
              f"{quality['regret']:.1f} (FQE picks {quality['fqe_pick']}, online best {quality['online_best']})")
    if outcome["confirmed"]:
        print("\nconfirmed on fresh episodes (environment seeds never used in training or selection):")
        _print_table(["trial", "checkpoint", "confirmed score [95% CI]", "selection score"],
                     [[k.get("name") or k["trial"], k["checkpoint_kind"], Interval(**k["confirmed"]).text(), _fmt(k["selection_score"])]
                      for k in sorted(outcome["confirmed"], key=lambda k: -k["confirmed"]["mean"])])
    best, mlflow = outcome["best"], outcome["mlflow"]
    if best and best.get("confirmed"):
        chosen = best["confirmed"]
        print(f"\nregistered: {best.get('name') or best['trial']} ({chosen['checkpoint_kind']} checkpoint), confirmed score "
              f"{Interval(**chosen['confirmed']).text()}, selection score {_fmt(best['score'])}")
    elif best:
        print(f"\nregistered: {best.get('name') or best['trial']}, selection score {_fmt(best['score'])} (not confirmed: confirm.top_k = 0)")
    else:
        print("\nregistered: none (no trial completed)")
    if best:
        print(f"            config {json.dumps(best['config'])}")
        print(f"            {mlflow['model']} version {mlflow['version']}"
              + (", now champion" if mlflow["champion"] else ", champion unchanged (not better on confirmed scores)"))
    finals = [t["final_score"] for t in outcome["trials"]
              if t["status"] in ("completed", "early-stopped") and t["final_score"] is not None]
    if len(finals) > 1:
        curve = budget_curve(finals)
        points = sorted({1, (len(finals) + 1) // 2, len(finals)})
        print("tuning budget: expected best final score of n trials: " + ", ".join(
            f"n={n} {curve['expected_max'][n - 1]:.2f} [{curve['low'][n - 1]:.2f}, {curve['high'][n - 1]:.2f}]"
            for n in points) + " (tuning_budget.png in the parent run)")
    print(f"mlflow: experiment {mlflow['experiment']!r}, parent run {mlflow['parent_run_id']} at {mlflow['tracking_uri']}")
    print(f"wall time {outcome['wall_time_s']:.0f} s; trials in {outcome['storage']}")
    if log:
        print(f"Ray and Tune output: {log} (--verbose shows it here)")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def register(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter tuning jobs on Ray Tune + Optuna")
    tsub = p.add_subparsers(dest="tune_command", required=True)

    run = tsub.add_parser("run", help="run a tuning job here (local Ray, or the cluster of a Ray job)")
    _job_arguments(run)
    run.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output instead of logging it")
    run.set_defaults(func=_run)

    resume = tsub.add_parser("resume", help="continue an interrupted job; finished trials are kept")
    resume.add_argument("name", help="the job's name (printed when it started); it keeps its MLflow store and parent run")
    resume.add_argument("--json", action="store_true", help="print one JSON object")
    resume.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output instead of logging it")
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
