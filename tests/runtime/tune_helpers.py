"""Running the CLI and reading what a tuning job leaves behind (storage, MLflow)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "tuning" / "quickstart.yaml"


def rlservice(*args, env, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "rlservice.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, **kwargs)


def last_json(text):
    """The last line of `text` that is a JSON object (the CLI's --json output)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON object in output:\n{text[-3000:]}")


def trial_results(experiment_dir):
    """{trial directory name: [reported results]} from Tune's result.json files."""
    out = {}
    for path in Path(experiment_dir).glob("*/result.json"):
        out[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def child_runs(tracking_uri, parent_run_id):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def trial_runs(tracking_uri):
    """Every trial's MLflow runs (all attempts), in every experiment of the store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.`rlservice.kind` = 'trial'") if experiments else []


def finished_runs(runs):
    """The runs of trials that completed. A run is finished once MLflow has ended it: its status
    tag is set first, so a run with the tag that is still RUNNING belongs to a trial busy
    finishing (which may yet be cut short)."""
    return [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("status") == "completed"]


def evaluated_steps(tracking_uri, run_id):
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, "normalized_score"))
