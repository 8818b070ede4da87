"""The driver of a tuning job: checks, the MLflow parent run, Ray Tune, the confirmation of the
best candidates on fresh episodes, and the summary.

Everything that can be wrong with a job (spec, dataset, tracking server) fails before Ray
starts. The job's spec and tracking ids are saved next to Tune's experiment state, so
`resume` needs nothing but the job's name. The search selects on the evaluations made during
training; what is registered is decided by the confirmation (runtime.confirmation).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlservice.config.tuning import TuningJob, validate_job
from rlservice.errors import ConfigError, RLServiceError
from rlservice.jobs.tune_dataset import ensure_dataset
from rlservice.paths import home
from rlservice.tracking.tuning_runs import (
    JobTracking,
    check_tracking,
    end_superseded,
    finish_job,
    log_ope_quality,
    start_job,
)
from rlservice.training.fqe import ope_quality

JOB_FILE = "rlservice-job.json"


class JobInterrupted(RLServiceError):
    """The driver was stopped (SIGINT/SIGTERM) before every trial finished; the job can be resumed."""

    exit_code = 130


@dataclass
class JobOutcome:
    name: str
    storage: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    mlflow: dict[str, Any]
    wall_time_s: float
    searcher_observations_at_start: int = 0  # on resume: finished trials the restored searcher knew
    selection: str = "online"  # what scored the trials: rollouts (online) or FQE (offline)
    ope_quality: dict[str, Any] | None = None  # FQE against online scores (online selection with offline_evaluation)
    confirmed: list[dict[str, Any]] = field(default_factory=list)  # the candidates confirmed on fresh episodes

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def storage_root() -> str:
    """Where Tune keeps trials and checkpoints: RLSERVICE_STORAGE_PATH, else $RLSERVICE_HOME/tune.
    On a cluster of several machines it must be shared: a URI Tune writes to directly
    (`s3://bucket/prefix`) or a directory every node mounts at the same path (NFS)."""
    return os.environ.get("RLSERVICE_STORAGE_PATH") or str(home() / "tune")


def experiment_uri(name: str) -> str:
    return f"{storage_root().rstrip('/')}/{name}"


def job_record_dir(name: str) -> Path:
    """The driver's own record of a job (spec, MLflow parent run), kept locally so that it works
    whatever kind of storage Tune writes to."""
    return home() / "tune-jobs" / name


@dataclass
class Face:
    """What the CLI shows while a job runs: the live table's lines through `say`, Tune's own
    `verbose` level, and `confirming(done, total)` during the confirmation."""

    say: Callable[[str], None] | None = None
    verbose: int = 0
    confirming: Callable[[int, int], None] | None = None

    def callbacks(self) -> list:
        """Tune callbacks: the live table. It imports Ray, so it is made only once the job's checks
        have passed (a bad input fails with no Ray loaded)."""
        if self.say is None:
            return []
        from rlservice.runtime.live_table import LiveTable

        return [LiveTable(self.say)]


def run_job(job: TuningJob, name: str | None = None, tracking_uri: str | None = None, build_steps: int | None = None,
            started: Callable[[str], None] | None = None, face: Face | None = None) -> JobOutcome:
    """Run the job under `name`; `started(name)` is called once every check has passed."""
    name = name or job.name
    record_dir = job_record_dir(name)
    if (record_dir / JOB_FILE).exists():
        raise ConfigError(f"--name {name}: a job of that name exists in {record_dir}; "
                          f"continue it with `rlservice tune resume {name}` or choose another name")
    check_cluster()
    uri = check_tracking(tracking_uri)
    # read here once; trials get it through Ray's object store
    data = ensure_dataset(job.dataset, build_steps, require_env=not job.offline)
    job.run_config(action_dim=data.actions.shape[1])
    target = start_job(uri, job, name, data.digest)
    record_dir.mkdir(parents=True, exist_ok=True)
    saved = {"job": job.model_dump(mode="json"), "tracking": asdict(target)}
    (record_dir / JOB_FILE).write_text(json.dumps(saved, indent=2))
    if started:
        started(name)

    from rlservice.runtime import tuner

    face = face or Face()
    start = time.monotonic()
    with tuner.session():
        trials = tuner.fit(job, target, name, storage_root(), data, face.callbacks(), face.verbose)
        confirmed, champion = _confirm(job, target, name, trials, face)
    return _conclude(job, target, name, trials, confirmed, champion, time.monotonic() - start, 0)


def resume_job(name: str, face: Face | None = None) -> JobOutcome:
    """Continue job `name` where it stopped, with its saved spec and MLflow parent run."""
    saved_file = job_record_dir(name) / JOB_FILE
    if not saved_file.is_file():
        raise ConfigError(f"no tuning job named {name!r} in {job_record_dir(name).parent}")
    saved = json.loads(saved_file.read_text())
    if saved.get("finished"):
        raise RLServiceError(f"job {name!r} has finished; nothing to resume (its trials are in {experiment_uri(name)})")
    job = validate_job(saved["job"])
    target = JobTracking(**saved["tracking"])
    check_cluster()
    check_tracking(target.uri)
    data = ensure_dataset(job.dataset, require_env=not job.offline)

    from rlservice.runtime import tuner

    experiment = experiment_uri(name)
    if not tuner.can_restore(experiment):
        raise RLServiceError(f"job {name!r} stopped before Ray Tune saved its state; start it again under a new --name")
    observed = tuner.searcher_observations(experiment)
    face = face or Face()
    start = time.monotonic()
    with tuner.session():
        trials = tuner.refit(job, target, experiment, data, face.callbacks(), face.verbose)
        confirmed, champion = _confirm(job, target, name, trials, face)
    return _conclude(job, target, name, trials, confirmed, champion, time.monotonic() - start, observed)


def check_cluster(timeout: float = 5.0) -> None:
    """With RAY_ADDRESS set, fail with one line unless its GCS port answers (ray.init would retry
    for ever), before the job takes its name or opens an MLflow run."""
    address = os.environ.get("RAY_ADDRESS", "")
    if address in ("", "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ValueError:
        raise ConfigError(f"RAY_ADDRESS={address}: expected HOST:PORT of the cluster's head") from None
    except OSError as exc:
        raise RLServiceError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: "
                             f"{exc.strerror or 'no answer in time'}") from None


def _confirm(job: TuningJob, target: JobTracking, name: str, trials: list[dict[str, Any]], face: Face):
    """Once every trial has finished: confirm the top candidates, and a champion that has no
    confirmed score yet (only when there is a candidate to compare with it)."""
    finished = [t for t in trials if t["status"] != "unfinished"]
    if len(finished) < job.trials:
        end_superseded(target, trials)  # the runs of stopped trials: a resume continues them in new runs
        raise JobInterrupted(
            f"job {name!r} interrupted with {len(finished)} of {job.trials} trials finished; "
            f"continue it with `rlservice tune resume {name}`"
        )
    from rlservice.runtime import confirmation

    todo = confirmation.candidates(job, trials)
    champion = confirmation.champion_candidate(job, target) if todo else None
    done = confirmation.confirm(job, target, todo + ([champion] if champion else []), face.confirming)
    selection = {s for t in trials for s in t["selection_seeds"]}
    if reused := sorted(selection & {s for c in done for s in c["confirmed_seeds"]}):
        raise RLServiceError(f"confirmation seeds {reused[:3]}... were used in selection: the confirmed scores "
                             "would not be on fresh episodes")
    return done[: len(todo)], (done[-1] if champion else None)


def _conclude(job: TuningJob, target: JobTracking, name: str, trials: list[dict[str, Any]], confirmed: list[dict],
              champion: dict | None, wall: float, observed: int) -> JobOutcome:
    quality = ope_quality_of(job, trials)
    if quality is not None:
        log_ope_quality(target, quality)
    registered = finish_job(target, job, trials, confirmed, champion)
    saved_file = job_record_dir(name) / JOB_FILE
    saved_file.write_text(json.dumps({**json.loads(saved_file.read_text()), "finished": True}, indent=2))
    return JobOutcome(
        name=name,
        storage=experiment_uri(name),
        trials=trials,
        best=registered_trial(trials, registered),
        mlflow={"tracking_uri": target.uri, "experiment": target.experiment, "parent_run_id": target.parent_run_id,
                **registered},
        wall_time_s=wall,
        searcher_observations_at_start=observed,
        confirmed=confirmed,
        selection=job.selection,
        ope_quality=quality,
    )


def ope_quality_of(job: TuningJob, trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """With online selection and `offline_evaluation`: how well FQE would have picked, over the
    trials that have both an online score and an FQE score of the same (final) policy."""
    if job.offline or job.offline_evaluation is None:
        return None
    scored = [t for t in trials if t.get("fqe_score") is not None and t.get("final_score") is not None]
    if len(scored) < 2:
        return None
    quality = ope_quality([t["final_score"] for t in scored], [t["fqe_score"] for t in scored])
    online_best = max(scored, key=lambda t: t["final_score"])
    fqe_pick = max(scored, key=lambda t: t["fqe_score"])
    return {**quality, "online_best": online_best["trial"], "fqe_pick": fqe_pick["trial"],
            "trials": [{k: t[k] for k in ("trial", "run_id", "final_score", "fqe_score")} for t in scored]}


def registered_trial(trials: list[dict[str, Any]], registered: dict[str, Any]) -> dict[str, Any] | None:
    """The trial whose policy was registered, with its confirmed score when there is one."""
    row = next((t for t in trials if registered["best_run_id"] and t["run_id"] == registered["best_run_id"]), None)
    return None if row is None else {**row, "confirmed": registered.get("confirmed")}
