"""A multi-node Ray cluster on one machine, on loopback addresses, to try the cluster path
(`rlservice tune submit`) without machines, and for tests.

The head is 127.0.0.2 (its dashboard and Jobs API too), worker k is 127.0.0.(2+k): Ray keeps
these addresses (it rewrites only 127.0.0.1/localhost), so the nodes form a real multi-node
cluster whose traffic never leaves loopback. Each node is one `ray start --block` process that
leads a session of its own, with its own temp dir, free ports and a pid file; `stop` ends
exactly the processes of those sessions (never `ray stop`, which ends every Ray process on the
machine). A session rather than a process group: Ray puts each worker process in a process
group of its own, but they all stay in their node's session. The
cluster has its own token (RAY_AUTH_MODE=token); `env` prints what a client needs.

Like separate machines, the nodes share no directories: each has its own MINARI_DATASETS_PATH
and RLSERVICE_HOME under STATE/nodes/NAME, and its own TMPDIR in its Ray temp dir (removed when
the node stops, like a machine's /tmp; short, since Ray's sockets end up under TMPDIR too)
(`--shared-dirs`: the caller's, for every node). What they share is Tune's storage, RLSERVICE_STORAGE_PATH: the caller's value when set
(e.g. s3://...), else the directory STATE/storage as a file:// URI, standing in for NFS.

    python -m rlservice.runtime.local_cluster start [--workers N] [--cpus N] [--state DIR] [--shared-dirs]
    python -m rlservice.runtime.local_cluster stop [--node NAME] [--state DIR]
    python -m rlservice.runtime.local_cluster status|env [--state DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rlservice.errors import RLServiceError
from rlservice.paths import home

HEAD_IP = "127.0.0.2"
STATE_FILE = "cluster.json"


def default_state_dir() -> Path:
    return home() / "local-cluster"


def start(state_dir: Path, workers: int = 1, cpus: int = 1, timeout: float = 120,
          shared_dirs: bool = False) -> dict[str, Any]:
    """Start the head and `workers` worker nodes; return the cluster's description once every node is alive."""
    state_dir = Path(state_dir)
    if running(state_dir):
        raise RLServiceError(f"a local cluster is already running from {state_dir}; stop it first")
    state_dir.mkdir(parents=True, exist_ok=True)
    token_file = state_dir / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    storage = os.environ.get("RLSERVICE_STORAGE_PATH") or (state_dir / "storage").resolve().as_uri()
    env = {**os.environ, **client_env_of(token_file), "RLSERVICE_STORAGE_PATH": storage}
    gcs_port, dashboard_port = free_port(HEAD_IP), free_port(HEAD_IP)
    cluster = {
        "gcs": f"{HEAD_IP}:{gcs_port}",
        "dashboard": f"http://{HEAD_IP}:{dashboard_port}",
        "token_file": str(token_file),
        "storage": storage,
        "nodes": [],
    }
    head_flags = ["--head", "--port", gcs_port, "--dashboard-host", HEAD_IP, "--dashboard-port", dashboard_port,
                  "--ray-client-server-port", free_port(HEAD_IP), "--include-dashboard", "true"]
    try:
        cluster["nodes"].append(_start_node(state_dir, "head", HEAD_IP, head_flags, cpus, env, shared_dirs))
        _save(state_dir, cluster)
        _wait_for_port(cluster, HEAD_IP, gcs_port, timeout)
        for k in range(1, workers + 1):
            ip = f"127.0.0.{2 + k}"
            cluster["nodes"].append(_start_node(state_dir, f"worker-{k}", ip, ["--address", cluster["gcs"]], cpus, env,
                                                shared_dirs))
            _save(state_dir, cluster)
        _wait_for(cluster, 1 + workers, timeout)
    except BaseException:
        stop(state_dir)
        raise
    return cluster


def stop(state_dir: Path, node: str | None = None, grace: float = 5.0) -> list[str]:
    """End the processes of every node (or of one): TERM, then KILL after `grace` seconds.
    With grace 0, KILL at once: the node dies as in a crash, without draining first."""
    cluster = _load(state_dir)
    if cluster is None:
        return []
    nodes = [n for n in cluster["nodes"] if node is None or n["name"] == node]
    if node is not None and not nodes:
        raise RLServiceError(f"no node {node!r} in the local cluster of {state_dir}")
    if grace > 0:
        for n in nodes:
            _signal_session(n["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_session_alive(n["pid"]) for n in nodes):
            time.sleep(0.2)
    for n in nodes:
        _signal_session(n["pid"], signal.SIGKILL)
        Path(n["pid_file"]).unlink(missing_ok=True)
        shutil.rmtree(n["temp_dir"], ignore_errors=True)
    remaining = [n for n in cluster["nodes"] if n not in nodes]
    if remaining:
        _save(state_dir, {**cluster, "nodes": remaining})
    else:
        Path(state_dir, STATE_FILE).unlink(missing_ok=True)
    return [n["name"] for n in nodes]


def status(state_dir: Path) -> dict[str, Any] | None:
    cluster = _load(state_dir)
    if cluster is None:
        return None
    for n in cluster["nodes"]:
        n["running"] = _session_alive(n["pid"])
    return cluster


def running(state_dir: Path) -> bool:
    cluster = status(state_dir)
    return bool(cluster and any(n["running"] for n in cluster["nodes"]))


def client_env(state_dir: Path) -> dict[str, str]:
    """Environment a client (rlservice tune submit/status/logs) needs to talk to the cluster."""
    cluster = _load(state_dir)
    if cluster is None:
        raise RLServiceError(f"no local cluster in {state_dir}")
    return client_env_of(Path(cluster["token_file"]))


def client_env_of(token_file: Path) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- internals
def node_dirs(state_dir: Path, name: str, temp_dir: str) -> dict[str, str]:
    """The directories a node keeps to itself, as the variables that point rlservice at them."""
    root = Path(state_dir, "nodes", name).resolve()
    return {"MINARI_DATASETS_PATH": str(root / "minari"), "RLSERVICE_HOME": str(root / "home"),
            "TMPDIR": str(Path(temp_dir, "tmp"))}


def _start_node(state_dir: Path, name: str, ip: str, flags: list, cpus: int, env: dict[str, str],
                shared_dirs: bool) -> dict[str, Any]:
    # Ray's socket paths must stay short (108 bytes): temp dirs live directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix=f"rls-{name}-", dir="/tmp")
    own = {} if shared_dirs else node_dirs(state_dir, name, temp_dir)
    for path in own.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    env = {**env, **own}
    ports = {flag: free_port(ip) for flag in ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                                              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                              "--runtime-env-agent-port")}
    command = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--disable-usage-stats",
               "--node-ip-address", ip, "--num-cpus", str(cpus), "--temp-dir", temp_dir,
               *[str(x) for x in flags], *[str(x) for pair in ports.items() for x in pair]]
    log = state_dir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    pid_file = state_dir / f"{name}.pid"
    pid_file.write_text(str(process.pid))
    return {"name": name, "ip": ip, "pid": process.pid, "pid_file": str(pid_file), "temp_dir": temp_dir, "log": str(log),
            "dirs": own}


def _wait_for_port(cluster: dict[str, Any], ip: str, port: int, timeout: float) -> None:
    """Until the head's GCS accepts connections: workers can join from then on."""
    deadline = time.monotonic() + timeout
    while True:
        _check_nodes(cluster)
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RLServiceError(f"the head of the local cluster did not listen on {ip}:{port} within {timeout:.0f} s")
        time.sleep(0.5)


def _wait_for(cluster: dict[str, Any], nodes: int, timeout: float) -> None:
    """Until `nodes` nodes are alive according to the head's dashboard."""
    token = Path(cluster["token_file"]).read_text().strip()
    request = urllib.request.Request(f"{cluster['dashboard']}/nodes?view=summary",
                                     headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    while True:
        _check_nodes(cluster)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                summary = json.load(response)["data"]["summary"]
            if sum(1 for s in summary if s.get("raylet", {}).get("state") == "ALIVE") >= nodes:
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise RLServiceError(f"the local cluster did not reach {nodes} live nodes within {timeout:.0f} s")
        time.sleep(1)


def _check_nodes(cluster: dict[str, Any]) -> None:
    for n in cluster["nodes"]:
        if not _session_alive(n["pid"]):
            raise RLServiceError(f"node {n['name']} of the local cluster exited during start; see {n['log']}")


def _signal_session(sid: int, sig: int) -> None:
    for pid in _session_members(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:  # reap the node process when it is our own child, so it does not linger as a zombie
        os.waitpid(sid, os.WNOHANG)
    except ChildProcessError:
        pass


def _session_alive(sid: int) -> bool:
    return bool(_session_members(sid))


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry))
    return members


def _save(state_dir: Path, cluster: dict[str, Any]) -> None:
    Path(state_dir, STATE_FILE).write_text(json.dumps(cluster, indent=2))


def _load(state_dir: Path) -> dict[str, Any] | None:
    path = Path(state_dir, STATE_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="local-cluster", description="a multi-node Ray cluster on this machine's loopback")
    p.add_argument("command", choices=["start", "stop", "status", "env"])
    p.add_argument("--state", type=Path, default=default_state_dir(),
                   help="pid files, logs, token (default: $RLSERVICE_HOME/local-cluster)")
    p.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (start)")
    p.add_argument("--cpus", type=int, default=1, help="CPUs each node offers (start)")
    p.add_argument("--node", help="stop only this node, e.g. worker-1 (stop)")
    p.add_argument("--shared-dirs", action="store_true",
                   help="(start) every node uses the caller's MINARI_DATASETS_PATH, RLSERVICE_HOME and TMPDIR "
                        "instead of directories of its own under STATE/nodes")
    args = p.parse_args(argv)
    try:
        if args.command == "start":
            cluster = start(args.state, args.workers, args.cpus, shared_dirs=args.shared_dirs)
            print(f"local Ray cluster: {len(cluster['nodes'])} nodes, dashboard and Jobs API {cluster['dashboard']}")
            print(f"Tune storage shared by the nodes: {cluster['storage']}")
            print("clients need its token: eval the output of the `env` command")
        elif args.command == "stop":
            print(f"stopped: {', '.join(stop(args.state, args.node)) or 'nothing was running'}")
        elif args.command == "status":
            cluster = status(args.state)
            print(json.dumps(cluster, indent=2) if cluster else "not running")
            return 0 if cluster and any(n["running"] for n in cluster["nodes"]) else 3
        else:
            for key, value in client_env(args.state).items():
                print(f"export {key}={value}")
    except RLServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
