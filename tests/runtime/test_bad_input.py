"""Bad job files, an unreachable cluster or tracking server: one line, exit code 2, Ray never started."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

QUICKSTART = Path(__file__).resolve().parents[2] / "tuning" / "quickstart.yaml"

# Runs the CLI once per case in one fresh interpreter and says whether Ray got imported.
PROBE = """
import contextlib, io, json, sys, time
from rlservice.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err, start = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    out.append({"rc": rc, "stderr": err.getvalue(), "ray_imported": "ray" in sys.modules, "seconds": time.monotonic() - start})
print(json.dumps(out))
"""


def job_file(tmp_path, name, **changes):
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_bad_input_fails_fast_with_one_line_and_no_ray(tmp_path, minari_root):
    cases = {
        "unknown knob": (["tune", "run", job_file(tmp_path, "a", search_space={"alpha_pa": {"type": "uniform", "low": 0, "high": 1}})],
                         "search_space.alpha_pa: unknown knob"),
        "empty space": (["tune", "run", job_file(tmp_path, "b", search_space={})], "search_space is empty"),
        "zero trials": (["tune", "run", str(QUICKSTART), "--set", "trials=0"], "trials=0"),
        "negative budget": (["tune", "run", job_file(tmp_path, "c", steps=-1000)], "steps=-1000"),
        "missing file": (["tune", "run", str(tmp_path / "nope.yaml")], "does not exist"),
        "unreachable cluster": (["tune", "submit", str(QUICKSTART), "--address", "http://127.0.0.1:9"],
                                "cannot reach the Ray cluster at http://127.0.0.1:9"),
        "not a dashboard URL": (["tune", "status", "--address", "127.0.0.1:9"], "expected the dashboard's URL"),
        "unreachable tracking server": (["tune", "run", str(QUICKSTART), "--tracking-uri", "http://127.0.0.1:9"],
                                        "tracking server http://127.0.0.1:9 is unreachable"),
        "resume of an unknown job": (["tune", "resume", "no-such-job"], "no tuning job named 'no-such-job'"),
    }
    env = {"RLSERVICE_STORAGE_PATH": str(tmp_path / "tune"), "RLSERVICE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin",
           "MINARI_DATASETS_PATH": str(minari_root)}
    probe = subprocess.run([sys.executable, "-c", PROBE, json.dumps([argv for argv, _ in cases.values()])],
                           capture_output=True, text=True, env=env, timeout=120)
    assert probe.returncode == 0, probe.stderr
    for (case, (_, message)), result in zip(cases.items(), json.loads(probe.stdout.splitlines()[-1])):
        lines = result["stderr"].strip().splitlines()
        assert result["rc"] == 2, (case, result)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (case, lines)
        assert not result["ray_imported"], case
        assert result["seconds"] < 15, case
