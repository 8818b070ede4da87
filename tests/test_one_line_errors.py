"""Bad input anywhere in the CLI: one line on stderr, exit code 2, no file or directory created.
All cases run in one interpreter (cheap: each fails before any data, Ray or MLflow server)."""

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

from rlservice.config.run import RunConfig

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "tuning" / "quickstart.yaml"

PROBE = """
import contextlib, io, json, sys
from rlservice.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    out.append({"rc": rc, "stderr": err.getvalue()})
print(json.dumps(out))
"""


def checkpoint(root, name, state=None, config=None):
    """A checkpoint directory whose state.pt holds `state` (bytes are written as they are)."""
    directory = root / name
    directory.mkdir(parents=True)
    run = RunConfig.model_validate({"dataset": {"id": "rlservice/hopper-v5/random-v0"}}).model_dump(mode="json")
    (directory / "config.json").write_text(config if config is not None else json.dumps({"run": run, "step": 0, "history": []}))
    path = directory / "state.pt"
    if isinstance(state, bytes):
        path.write_bytes(state)
    else:
        torch.save(state, path)
    return str(directory)


def tree(root):
    return {p.relative_to(root) for p in root.rglob("*")}


def test_each_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    torch.save({"learner": {"w": torch.zeros(1000)}}, inputs / "whole.pt")
    whole = (inputs / "whole.pt").read_bytes()
    train = ["train", "--dataset", "rlservice/hopper-v5/random-v0", "--preset", "td3bc", "--no-tracking"]
    cases = {
        "pickled object": (["train", "--no-tracking", "--resume", checkpoint(inputs, "pickled", {"learner": argparse.Namespace(a=1)})],
                           "holds something other than tensors"),
        "truncated state": (["train", "--no-tracking", "--resume", checkpoint(inputs, "truncated", whole[: len(whole) // 2])],
                            "is damaged or truncated"),
        "empty state": (["train", "--no-tracking", "--resume", checkpoint(inputs, "empty", b"")], "state.pt is empty"),
        "config not JSON": (["train", "--no-tracking", "--resume", checkpoint(inputs, "nojson", {"learner": {}}, config="{not json")],
                            "config.json is not JSON"),
        "device banana": ([*train, "--device", "banana"], "train.device=banana: not a torch device"),
        "bad tracking scheme": (["best", "--experiment", "e", "--tracking-uri", "foo://bar"], "unknown scheme 'foo'"),
        "store in a missing directory": (["best", "--experiment", "e", "--tracking-uri", f"sqlite:///{tmp_path / 'nope' / 'dir' / 'mlflow.db'}"],
                                         "does not exist"),
        "export into a missing directory": (["models", "export", "m@champion", "--format", "onnx", "--out", str(tmp_path / "nope" / "x.onnx")],
                                            "does not exist"),
        "top 0": (["best", "--experiment", "e", "--top", "0"], "--top 0"),
        "top -3": (["best", "--experiment", "e", "--top", "-3"], "--top -3"),
        "job name with a path": (["tune", "run", str(QUICKSTART), "--name", "../evil name"], "'../evil name'"),
        "resume name with a path": (["tune", "resume", "../evil"], "'../evil'"),
    }
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases["ui on a busy port"] = (["ui", "--port", str(busy.getsockname()[1])], "is not free")
    if torch.version.cuda is None:
        cases["cuda on a CPU build"] = ([*train, "--device", "cuda"], "has no CUDA")
    env = {"RLSERVICE_HOME": str(tmp_path / "home"), "RLSERVICE_STORAGE_PATH": str(tmp_path / "tune"),
           "MINARI_DATASETS_PATH": str(tmp_path / "minari"), "PATH": "/usr/bin:/bin"}
    before = tree(tmp_path)
    with busy:
        probe = subprocess.run([sys.executable, "-c", PROBE, json.dumps([argv for argv, _ in cases.values()])],
                               capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert probe.returncode == 0, probe.stderr
    for (case, (_, message)), result in zip(cases.items(), json.loads(probe.stdout.splitlines()[-1])):
        lines = result["stderr"].strip().splitlines()
        assert result["rc"] == 2, (case, result)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (case, lines)
        assert "weights_only" not in lines[0], case
    assert tree(tmp_path) == before


def test_an_unreachable_ray_address_fails_at_once_and_leaves_the_name_free(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tracking = tmp_path / "mlflow.db"
    env = {"RLSERVICE_HOME": str(tmp_path / "home"), "RLSERVICE_STORAGE_PATH": str(tmp_path / "tune"),
           "MINARI_DATASETS_PATH": str(tmp_path / "minari"), "PATH": "/usr/bin:/bin",
           "RAY_ADDRESS": f"127.0.0.1:{port}", "MLFLOW_TRACKING_URI": f"sqlite:///{tracking}"}
    # Ray would retry for ever: the timeout is the test's bound, far above the one connect attempt.
    done = subprocess.run([sys.executable, "-m", "rlservice.cli", "tune", "run", str(QUICKSTART), "--name", "x"],
                          capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:{port}")
    assert list(tmp_path.iterdir()) == []  # no MLflow run (no store), no job record: the name is free
