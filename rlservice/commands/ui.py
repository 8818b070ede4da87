"""`rlservice ui`: the MLflow UI on the tracking store, on 127.0.0.1, until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

START_TIMEOUT_S = 180


def _ui(args: argparse.Namespace) -> int:
    import requests

    from rlservice.errors import RLServiceError
    from rlservice.tracking.store import (
        check_reachable,
        local_artifact_root,
        resolve_tracking_uri,
    )

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server: its UI is at {uri}")
        return 0
    _check_port_free(args.port)
    check_reachable(uri)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    if (root := local_artifact_root(uri)) is not None:
        command += ["--artifacts-destination", str(root)]
    # MLflow's job runner (GenAI jobs, unused here) would start a dozen more processes.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # SIGTERM, too, stops the server
    # The server's own chatter goes to stderr: stdout carries only the URL line.
    server = subprocess.Popen(command, env=env, stdout=sys.stderr.fileno(), start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RLServiceError(f"mlflow server exited with code {server.returncode} (see its output above)")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RLServiceError(f"mlflow server did not answer {url}/health within {START_TIMEOUT_S}s")
            time.sleep(0.5)
        print(f"MLflow UI: {url}  (store {uri}; Ctrl-C stops it)", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop(server)
    return 0


def _check_port_free(port: int) -> None:
    from rlservice.errors import RLServiceError

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RLServiceError(f"--port {port}: 127.0.0.1:{port} is not free ({exc.strerror}); "
                                 "choose another port") from None


def _stop(server: subprocess.Popen) -> None:
    """The server and its workers share the process group it leads: end them all."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # whatever outlived the polite request
    except ProcessLookupError:
        pass
    server.wait()


def register(sub) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the tracking store (127.0.0.1)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded store)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_ui)
