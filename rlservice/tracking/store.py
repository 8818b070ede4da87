"""The MLflow store and the connection to it: which URI, a client bound to it, whether it answers,
where a local store keeps its artifacts, and one readable line for an MLflow error."""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rlservice.errors import RLServiceError
from rlservice.paths import home

# Defaults for MLflow's client (the environment wins). MLflow retries a failed HTTP call 7 times
# with exponential backoff (minutes); TrialRun's buffering does the retrying here, so one call
# costs at most a couple of timeouts. Run links and progress bars would mix into our output
# (`--json` prints one object on stdout).
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

class TrackingError(RLServiceError):
    """The tracking server or store cannot be used; the message says which and why."""


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded store under rlservice's home."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def client(uri: str) -> MlflowClient:
    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    with _first_open(uri):
        return MlflowClient(tracking_uri=uri)


_OPENED: set[str] = set()


@contextmanager
def _first_open(uri: str):
    """MLflow creates and migrates a SQLite store's tables when a process first opens it; two
    processes doing so at once collide ("duplicate column name"). They take turns here, under a lock
    file next to the database; after the first, the tables are in place and nothing is migrated."""
    path = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or uri in _OPENED or path.name == ":memory:" or not path.parent.is_dir():
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    _OPENED.add(uri)


# Stores MLflow can track to (a database URL may name its driver: postgresql+psycopg2://).
SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail with one line when the URI names no store MLflow knows, an HTTP tracking server does
    not answer or refuses us, or a local store's directory is missing (only the embedded default
    store under rlservice's home is created: a path the user gives must lie in a directory that exists)."""
    parsed = urlparse(uri)
    if parsed.scheme.split("+")[0] not in SCHEMES:
        raise TrackingError(f"tracking URI {uri}: unknown scheme {parsed.scheme!r} "
                            "(use http(s)://HOST:PORT, sqlite:///PATH, file:PATH or a database URL)")
    if parsed.scheme in ("http", "https"):
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as exc:
            raise TrackingError(f"tracking server {uri} is unreachable: {error_line(exc)}") from None
        if response.status_code != 200:
            raise TrackingError(f"tracking server {uri} is unreachable: /health answered HTTP {response.status_code}")
        try:
            client(uri).search_experiments(max_results=1)
        except MlflowException as exc:
            hint = " (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)" if re.search(r"\b40[13]\b", str(exc)) else ""
            raise TrackingError(f"tracking server {uri} refused the request: {error_line(exc)}{hint}") from None
    elif parsed.scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if path and path != ":memory:":
            if Path(path) == home() / "mlflow.db":
                home().mkdir(parents=True, exist_ok=True)
            elif not Path(path).parent.is_dir():
                raise TrackingError(f"tracking URI {uri}: directory {Path(path).parent} does not exist")
    elif parsed.scheme in ("", "file"):
        directory = Path(parsed.path)
        if not directory.parent.is_dir():
            raise TrackingError(f"tracking URI {uri}: directory {directory.parent} does not exist")
        directory.mkdir(exist_ok=True)


def local_artifact_root(uri: str) -> Path | None:
    """Artifacts of a SQLite store go next to its database file (MLflow would use ./mlruns of
    whatever the working directory is); servers and other stores choose for themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"


def _artifact_location(uri: str, experiment: str) -> str | None:
    root = local_artifact_root(uri)
    return None if root is None else str(root / re.sub(r"[^\w.-]", "_", experiment))


# MLflow 3 opens an experiment in its GenAI view unless it is marked as model development.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(c: MlflowClient, uri: str, name: str) -> str:
    experiment = c.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage != "deleted":
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:  # made by an older version, or by hand
                c.set_experiment_tag(experiment.experiment_id, key, value)
    if experiment is None:
        try:
            return c.create_experiment(name, artifact_location=_artifact_location(uri, name), tags=EXPERIMENT_KIND)
        except MlflowException:
            experiment = c.get_experiment_by_name(name)  # created meanwhile by another trial
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} is deleted in {uri}: restore it or choose another name")
    return experiment.experiment_id


def error_line(exc: BaseException) -> str:
    """The useful part of an MLflow or connection error ("Connection refused"), else its first line."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    if isinstance(exc, requests.Timeout) or "timed out" in text.lower():
        return "no answer in time"
    return (text.strip().splitlines() or [type(exc).__name__])[0][:200]


