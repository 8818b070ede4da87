"""benchmarks/reproduce.py on a tiny dataset and a tiny budget (never a real reproduction here)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import reproduce  # noqa: E402


@pytest.mark.slow
def test_reproduce_trains_each_seed_and_reports_its_final_score(hopper_random_dataset, capsys):
    args = ["--preset", "td3bc", "--dataset", hopper_random_dataset, "--seeds", "2", "--steps", "20",
            "--set", "critic_hidden=16", "--set", "actor_hidden=16", "--set", "train.batch_size=32", "--json",
            "--no-progress"]
    assert reproduce.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["row"], out["status"], out["steps"], out["seeds"], out["episodes_per_seed"]) == (
        "hopper-random", "completed", 20, 2, 10)
    assert len(out["scores"]) == 2 and out["mean"] == pytest.approx(np.mean(out["scores"]), abs=0.01)
    assert out["ci95"][0] <= out["mean"] <= out["ci95"][1]
    assert out["published"] is None  # SPEC.md's table has no hopper-random row
    assert reproduce.main([*args[:1], "bogus", *args[2:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: preset='bogus'") and err.count("\n") == 1
