"""`rlservice finetune`: offline-to-online fine-tuning of a registered model, here or on a Ray
cluster through the Ray Jobs API (`rlservice finetune submit MODEL_URI ... --address URL`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from rlservice.errors import ConfigError, RLServiceError

USAGE = "rlservice finetune [submit] MODEL_URI --online-steps N [options] | rlservice finetune --resume RUN_DIR"
# Flags passed on as they are to the command a submitted job runs.
_FORWARDED = ("online_steps", "utd", "offline_ratio", "exploration_std", "rollout_workers", "eval_every",
              "eval_episodes", "tracking_uri", "experiment", "seed")


class FinetuneInterrupted(RLServiceError):
    """Stopped by Ctrl-C / SIGTERM (or at --online-steps on a resume) with a checkpoint to resume from."""

    exit_code = 130


def _finetune(args: argparse.Namespace) -> int:
    submit, model = _words(args)
    if args.resume and submit:
        raise ConfigError("--resume continues a run on this machine; it cannot be submitted")
    if args.address and not submit:
        raise ConfigError("--address is for `rlservice finetune submit`")
    if args.resume is None and args.online_steps is None:
        raise ConfigError("--online-steps N is required: how many env steps to fine-tune for")
    from rlservice.config.run import parse_overrides
    from rlservice.jobs.finetune import settings

    values = {k: getattr(args, k) for k in ("utd", "offline_ratio", "exploration_std", "rollout_workers", "eval_every",
                                            "eval_episodes", "seed", "experiment") if getattr(args, k) is not None}
    # bad input fails here, before anything (a resumed run keeps the settings it started with)
    settings(args.online_steps or 1, overrides=parse_overrides(args.set), **values)
    if submit:
        return _submit(args, model)
    from rlservice.jobs import finetune

    if args.resume:
        result = finetune.resume(args.resume, stop_at=args.online_steps, progress=not args.no_progress)
    else:
        result = finetune.finetune(model, args.online_steps, tracking_uri=args.tracking_uri, run_dir=args.out,
                                   progress=not args.no_progress, overrides=parse_overrides(args.set),
                                   announce=lambda line: print(line, file=sys.stderr), **values)
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        fmt = lambda score: "n/a" if score is None else f"{score:.1f}"  # noqa: E731
        registered = f"registered {result.model} version {result.new_version}" if result.new_version else "not registered"
        print(f"{result.status}: {result.online_steps} env steps, {result.updates} updates; normalised score "
              f"{fmt(result.score_before)} -> {fmt(result.score_after)}; {registered}; run dir {result.run_dir}")
    if result.status == "interrupted":
        raise FinetuneInterrupted(f"fine-tuning interrupted at env step {result.online_steps}, checkpoint saved; "
                                  f"continue it with `rlservice finetune --resume {result.run_dir}`")
    return 0 if result.status == "completed" else 3


def _words(args: argparse.Namespace) -> tuple[bool, str]:
    """`MODEL_URI` or `submit MODEL_URI` (argparse cannot mix a sub-command with a positional);
    nothing with --resume (a model named there too is the run's own: ignored)."""
    words = args.words
    if args.resume and len(words) <= 1:
        return False, None
    if words and words[0] == "submit" and len(words) == 2:
        if not args.address:
            raise ConfigError("finetune submit needs --address, the cluster's dashboard URL (e.g. http://HEAD:8265)")
        return True, words[1]
    if len(words) != 1:
        raise ConfigError(f"expected {USAGE}, got {' '.join(words)!r}")
    return False, words[0]


def _submit(args: argparse.Namespace, model: str) -> int:
    from rlservice.runtime.submission import check_address
    from rlservice.tracking import registry

    registry.model_uri(model)  # a malformed reference fails here
    check_address(args.address)
    entrypoint = [args.python or sys.executable, "-m", "rlservice.cli", "finetune", model, "--json", "--no-progress"]
    for flag in _FORWARDED:
        if getattr(args, flag) is not None:
            entrypoint += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    for pair in args.set:
        entrypoint += ["--set", pair]
    job_id = f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        from ray.job_submission import JobSubmissionClient

        import rlservice

        JobSubmissionClient(args.address).submit_job(
            entrypoint=shlex.join(entrypoint), submission_id=job_id,
            runtime_env={"py_modules": [str(Path(rlservice.__file__).parent)], "excludes": ["__pycache__", "*.pyc"]},
        )
    except Exception as exc:  # noqa: BLE001 - the SDK's assorted multi-line errors become one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RLServiceError(f"Ray Jobs API at {args.address}: {first}") from None
    if args.json:
        print(json.dumps({"job_id": job_id, "model": model, "address": args.address}))
    else:
        print(f"submitted {job_id}; follow it with `rlservice tune logs {job_id} --address {args.address} --follow`")
    return 0


def _ratio(text: str) -> float | str:
    return text if text == "uniform" else float(text)


def register(sub) -> None:
    p = sub.add_parser("finetune", usage=USAGE, help="fine-tune a registered model online (SPEC.md settings)",
                       description="Fine-tune models:/NAME@ALIAS or models:/NAME/VERSION online and register the "
                                   "result as a new version (alias `finetuned`). `finetune submit MODEL_URI ... "
                                   "--address URL` runs the same command as a Ray job on a cluster.")
    p.add_argument("words", nargs="*", metavar="[submit] MODEL_URI")
    p.add_argument("--online-steps", type=int, help="env steps in total (with --resume: stop there, default the run's own)")
    p.add_argument("--utd", type=int, help="learner updates per env step (default: the method's regime, "
                                           "PARS 20, DMG 1; see `rlservice presets show`)")
    p.add_argument("--offline-ratio", type=_ratio, help="fraction of each batch from the offline data, or `uniform` "
                                                        "(one buffer; default: the method's regime)")
    p.add_argument("--exploration-std", type=float, help="Gaussian exploration noise (default: the method's regime)")
    p.add_argument("--rollout-workers", type=int, help="Ray rollout actors (default 1)")
    p.add_argument("--eval-every", type=int, help="env steps between evaluations and checkpoints (default 5000)")
    p.add_argument("--eval-episodes", type=int, help="episodes per evaluation (default 100 on AntMaze, 10 elsewhere)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="agent knob for the online phase (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--experiment", help="MLflow experiment (default rlservice-finetune)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store)")
    p.add_argument("--out", help="run directory (default: $RLSERVICE_HOME/finetune/NAME-vVERSION-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted fine-tuning from its run directory, with the settings it started with")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--address", help="(submit) the cluster's dashboard URL, e.g. http://HEAD:8265")
    p.add_argument("--python", help="(submit) python of the rlservice environment on the cluster (default: this one)")
    p.set_defaults(func=_finetune)
