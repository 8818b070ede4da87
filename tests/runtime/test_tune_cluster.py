"""`rlservice tune submit` to a two-node cluster on loopback addresses (cluster/local-cluster.sh),
whose nodes share nothing but the network, Tune's storage (a file:// URI) and the cluster's MLflow
server: the dataset exists only in the head's Minari root, the driver reads it there and the
trials get it through Ray's object store; trials run on both nodes; when the worker node dies
mid-trial, its trial is retried from its checkpoint on the head and the job still finishes with
every trial; the registered model is then fine-tuned by a job submitted to the same cluster. The
worker's Minari root is still empty afterwards."""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from minari.storage import get_dataset_path
from tune_helpers import (
    REPO,
    evaluated_steps,
    finished_runs,
    last_json,
    rlservice,
    trial_runs,
)

from rlservice.runtime import local_cluster

pytestmark = pytest.mark.slow

# Ray notices a dead node after missed health checks; make that seconds, not half a minute.
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                          "RAY_health_check_failure_threshold": "3"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(service_env, tmp_path):
    """The local cluster with its MLflow server; every node keeps its own directories and Tune's
    storage is the cluster's default (file://STATE/storage)."""
    state = tmp_path / "cluster"
    env = {k: v for k, v in service_env.items()
           if not k.startswith(("RAY_AUTH", "RLSERVICE_STORAGE_PATH", "MLFLOW_TRACKING_URI"))}
    env.update(FAST_FAILURE_DETECTION, MLFLOW_PORT=str(free_port()), MLFLOW_WORKERS="1", RLSERVICE_PYTHON=sys.executable)
    script = str(REPO / "cluster" / "local-cluster.sh")
    started = subprocess.run([script, "start", "--workers", "1", "--cpus", "1", "--state", str(state)],
                             env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield state, f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    finally:
        stopped = subprocess.run([script, "stop", "--state", str(state)], env=env, capture_output=True, text=True,
                                 timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert not local_cluster.running(state)


def files_under(directory):
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*") if p.is_file())


def node_ids(dashboard, token):
    """{node ip: node id} of the cluster's live nodes."""
    import urllib.request

    request = urllib.request.Request(f"{dashboard}/nodes?view=summary", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        summary = json.load(response)["data"]["summary"]
    return {s["raylet"]["nodeManagerAddress"]: s["raylet"]["nodeId"] for s in summary if s["raylet"]["state"] == "ALIVE"}


def describe(trials, runs):
    """The trials as Tune reported them and every trial run in MLflow, for a failure message."""
    rows = [f"trial {t['trial']}: {t['status']}, run {t['run_id']}, failures {t['failures']}, step {t['steps']}" for t in trials]
    keys = ("status", "tune_trial", "ray_node_id", "continued_in")
    rows += [f"run {r.info.run_id} {r.info.status}: " + ", ".join(f"{k}={r.data.tags.get(k)}" for k in keys) for r in runs]
    return "\n".join(rows)


def wait_for_a_trial_on(node, tracking_uri, trials, timeout=240):
    """Until a trial has finished and a trial on `node` has been evaluated twice (so it has a
    committed checkpoint past its start to be retried from); returns the finished trials' runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = trial_runs(tracking_uri)
        finished = finished_runs(runs)
        assert len(finished) < trials, "the job ended before the test could act"
        running = [r for r in runs if r.info.status == "RUNNING" and "status" not in r.data.tags  # not finishing
                   and r.data.tags.get("ray_node_id") == node and "normalized_score" in r.data.metrics]
        if finished and any(evaluated_steps(tracking_uri, r.info.run_id)[-1] >= 200 for r in running):
            return finished
        time.sleep(0.3)
    raise AssertionError("no trial was evaluated on the worker node")


def test_submitted_job_runs_on_both_nodes_and_survives_losing_the_worker(cluster, tiny_job, service_env,
                                                                         hopper_random_dataset):
    cluster, tracking_uri = cluster
    info = local_cluster.status(cluster)
    dashboard, token = info["dashboard"], Path(info["token_file"]).read_text().strip()
    nodes = node_ids(dashboard, token)
    assert set(nodes) == {"127.0.0.2", "127.0.0.3"}
    client_env = {**service_env, **local_cluster.client_env(cluster), "MLFLOW_TRACKING_URI": tracking_uri}
    own_dirs = {n["name"]: n["dirs"] for n in info["nodes"]}
    assert len({d["MINARI_DATASETS_PATH"] for d in own_dirs.values()}) == 2, own_dirs  # no shared Minari root
    assert info["storage"] == (cluster / "storage").resolve().as_uri()

    # The dataset exists on the head only, as if it had been built or downloaded there.
    head_root = Path(own_dirs["head"]["MINARI_DATASETS_PATH"])
    shutil.copytree(get_dataset_path(hopper_random_dataset), head_root / hopper_random_dataset)
    job = tiny_job(trials=4, steps=1000, scheduler={"type": "none"}, max_concurrent=2, max_failures=3,
                   resources={"cpus": 1, "evaluators": 0})
    submitted = rlservice("tune", "submit", job, "--address", dashboard, "--name", "twonode", "--tracking-uri", tracking_uri,
                          "--json", env=client_env, timeout=60)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = json.loads(submitted.stdout)["job_id"]

    try:
        finished_before = wait_for_a_trial_on(nodes["127.0.0.3"], tracking_uri, trials=4)
    except AssertionError:
        print(rlservice("tune", "logs", job_id, "--address", dashboard, env=client_env, timeout=60).stdout[-5000:])
        raise
    assert local_cluster.stop(cluster, node="worker-1", grace=0) == ["worker-1"]

    followed = rlservice("tune", "logs", job_id, "--address", dashboard, "--follow", env=client_env, timeout=400)
    assert followed.returncode == 0, followed.stdout[-4000:] + followed.stderr[-2000:]
    status = rlservice("tune", "status", job_id, "--address", dashboard, "--json", env=client_env, timeout=60)
    assert json.loads(status.stdout)["status"] == "SUCCEEDED"
    out = last_json(followed.stdout)

    trials = out["trials"]
    assert len(trials) == 4 and {t["status"] for t in trials} == {"completed"}
    assert any(t["failures"] >= 1 for t in trials), "Tune counted no failure (FailureConfig retries them)"
    completed = {t["run_id"] for t in trials}
    assert {r.info.run_id for r in finished_before} <= completed, (
        "a trial finished before the failure was lost:\n" + describe(trials, trial_runs(tracking_uri))
        + "\nfinished before: " + ", ".join(r.info.run_id for r in finished_before))

    runs = {r.info.run_id: r for r in trial_runs(tracking_uri)}
    attempts = {ip: [r.data.tags.get("status") for r in runs.values() if r.data.tags.get("ray_node_id") == node]
                for ip, node in nodes.items()}
    assert attempts["127.0.0.2"] and attempts["127.0.0.3"], attempts  # trials ran on both nodes
    # The trial cut short on the worker was retried on the head, from its checkpoint (not from step 0).
    cut = [r for r in runs.values() if r.data.tags.get("status") == "interrupted"]
    assert cut and all(r.data.tags["ray_node_id"] == nodes["127.0.0.3"] for r in cut), attempts
    for run in cut:
        retry = runs[run.data.tags["continued_in"]]
        assert retry.info.run_id in completed and retry.data.tags["ray_node_id"] == nodes["127.0.0.2"]
        assert evaluated_steps(tracking_uri, retry.info.run_id)[0] > 100
    print("trial attempts per node (their MLflow status):", attempts)
    # Tune's storage, the one directory the nodes share, holds the job's trials.
    assert len(list((cluster / "storage" / "twonode").glob("*/result.json"))) == 4

    # The best policy was registered; a fine-tuning job on the cluster (now the head alone) gets
    # the model from MLflow's artifact store; its driver reads the offline data.
    model = f"{out['mlflow']['model']}/{out['mlflow']['version']}"
    submitted = rlservice("finetune", "submit", f"models:/{model}", "--online-steps", 100, "--utd", 1,
                          "--eval-every", 100, "--eval-episodes", 1, "--tracking-uri", tracking_uri,
                          "--address", dashboard, "--json", env=client_env, timeout=60)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    finetune_job = json.loads(submitted.stdout)["job_id"]
    followed = rlservice("tune", "logs", finetune_job, "--address", dashboard, "--follow", env=client_env, timeout=300)
    finetuned = last_json(followed.stdout)
    assert finetuned["status"] == "completed" and finetuned["new_version"], followed.stdout[-3000:]

    # A trial on the worker read no dataset from its disk: it got the driver's arrays.
    assert files_under(own_dirs["worker-1"]["MINARI_DATASETS_PATH"]) == []
