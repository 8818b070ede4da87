"""cluster/mlflow-server.sh --auth: MLflow's basic authentication, secrets kept off command lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from rlservice.tracking import runs, store

PASSWORD = "s3cret-admin-pw-for-tests"
SECRET_KEY = "flask-secret-key-for-tests"
SECRETS_ENV = ("MLFLOW_AUTH_", "MLFLOW_FLASK_")  # none inherited: the script must read the file


@pytest.fixture(scope="module")
def auth_server(new_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("auth-server")
    credentials = store / "credentials.env"
    credentials.write_text(
        f"# test secrets\nMLFLOW_FLASK_SERVER_SECRET_KEY={SECRET_KEY}\nMLFLOW_AUTH_ADMIN_PASSWORD={PASSWORD}\n"
    )
    server = new_server(store, "--auth", "--credentials", str(credentials), drop_env=SECRETS_ENV)
    server.start()
    yield server
    server.stop()


def _group_cmdlines(store: Path) -> list[str]:
    group = int((store / "mlflow-server.pid").read_text())
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == group:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            continue
    return lines


def test_unauthenticated_calls_are_refused_and_authenticated_ones_work(auth_server, monkeypatch):
    api = f"{auth_server.uri}/api/2.0/mlflow/experiments/search"
    assert requests.get(api, params={"max_results": 1}, timeout=10).status_code == 401
    assert requests.get(api, params={"max_results": 1}, auth=("admin", "wrong"), timeout=10).status_code == 401
    assert requests.get(api, params={"max_results": 1}, auth=("admin", PASSWORD), timeout=10).status_code == 200

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(store.TrackingError, match="refused the request.*MLFLOW_TRACKING_USERNAME"):
        store.check_reachable(auth_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    store.check_reachable(auth_server.uri)
    run_id = runs.start_job_run(auth_server.uri, "auth-test", "job", {"a": 1})
    assert store.client(auth_server.uri).get_run(run_id).data.params["a"] == "1"


def test_secrets_are_not_on_any_command_line(auth_server):
    cmdlines = _group_cmdlines(auth_server.store)
    assert any("basic-auth" in line for line in cmdlines)  # the group is the auth server's
    assert not any(PASSWORD in line or SECRET_KEY in line for line in cmdlines)
    assert PASSWORD not in (auth_server.store / "basic_auth.ini").read_text()


def test_auth_without_secrets_is_refused_before_starting(new_server, tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as refused:
        new_server(tmp_path, "--auth", drop_env=SECRETS_ENV).start()
    assert refused.value.returncode == 1
    assert b"--auth needs MLFLOW_FLASK_SERVER_SECRET_KEY" in refused.value.stderr
    assert not (tmp_path / "mlflow-server.pid").exists()
