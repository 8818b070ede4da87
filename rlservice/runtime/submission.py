"""Tuning jobs on a Ray cluster through the Ray Jobs API: submit, status, logs.

A submitted job is `python -m rlservice.cli tune run job.yaml` on the head: the validated job
file travels as the job's working_dir and the rlservice package as a py_module, so the cluster
runs exactly this code. The entrypoint names the environment's python explicitly, since the
head's PATH may not lead to it.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

import yaml

import rlservice
from rlservice.config.tuning import TuningJob
from rlservice.errors import ConfigError, RLServiceError


def submit(
    address: str,
    job: TuningJob,
    name: str,
    *,
    tracking_uri: str | None = None,
    build_steps: int | None = None,
    python: str | None = None,
    env: list[str] | None = None,
) -> str:
    """Submit the job; return its submission id (`tune-NAME`)."""
    env_vars = _env_vars(env or [])
    client = _client(address)
    entrypoint = [python or sys.executable, "-m", "rlservice.cli", "tune", "run", "job.yaml", "--name", name, "--json"]
    if tracking_uri:
        entrypoint += ["--tracking-uri", tracking_uri]
    if build_steps:
        entrypoint += ["--build-dataset", str(build_steps)]
    with tempfile.TemporaryDirectory(prefix="rlservice-submit-") as work:
        Path(work, "job.yaml").write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True), sort_keys=False))
        runtime_env = {
            "working_dir": work,
            "py_modules": [str(Path(rlservice.__file__).parent)],
            "excludes": ["__pycache__", "*.pyc"],
            "env_vars": env_vars,
        }
        return _call(address, lambda: client.submit_job(
            entrypoint=shlex.join(entrypoint), submission_id=f"tune-{name}", runtime_env=runtime_env,
            metadata={"rlservice_job": name},
        ))


def job_status(address: str, job_id: str) -> dict[str, Any]:
    info = _call(address, lambda: _client(address).get_job_info(job_id))
    return _row(info)


def list_jobs(address: str) -> list[dict[str, Any]]:
    return [_row(info) for info in _call(address, lambda: _client(address).list_jobs())]


def job_logs(address: str, job_id: str) -> str:
    return _call(address, lambda: _client(address).get_job_logs(job_id))


def follow_logs(address: str, job_id: str, out: TextIO) -> str:
    """Stream the job's logs until it ends; return its final status."""
    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    _call(address, lambda: asyncio.run(tail()))
    return job_status(address, job_id)["status"]


def check_address(address: str) -> None:
    """One clear line, before anything else happens, when the dashboard cannot be reached."""
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address {address!r}: expected the dashboard's URL, e.g. http://HEAD:8265")
    try:
        urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=5).close()
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 without the cluster's token): reachable
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RLServiceError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def _client(address: str):
    check_address(address)
    from ray.job_submission import JobSubmissionClient

    return _call(address, lambda: JobSubmissionClient(address))


def _call(address: str, fn):
    """Ray's SDK raises assorted exceptions with multi-line messages; the user gets one line."""
    try:
        return fn()
    except RLServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any SDK failure becomes one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RLServiceError(f"Ray Jobs API at {address}: {first}") from None


def _row(info) -> dict[str, Any]:
    return {
        "job_id": info.submission_id,
        "status": str(getattr(info.status, "value", info.status)),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }


def _env_vars(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {pair!r} is not of the form KEY=VALUE")
        env[key] = value
    return env
