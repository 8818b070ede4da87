"""benchmarks/pars_curve.py on the tiny Hopper fixture and a budget of a few steps (the real curve
is an experiment, not a test)."""

import json
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pars_curve  # noqa: E402

KEYS = {"normalized_score", "action_sensitivity", "ensemble_spread", "policy_distance", "ood_overestimation",
        "dormant_ratio"}


def test_ablations_change_the_knob_they_name():
    table = pars_curve.ablations(action_dim=6)
    assert table["bc"] == {"agent.bc_weight": pytest.approx(0.06)}  # 0.01 x d
    assert table["no_layernorm"] == {"agent.critic_layernorm": False}
    assert table["no_pa"] == {"agent.pa_alpha": 0.0}
    assert table["target_subset_10"] == {"agent.target_subset": 10}
    assert table["actor_mean"] == {"agent.actor_q": "subset_mean", "agent.actor_q_subset": 10}
    assert table["reward_scale_1"]["agent.reward_scale"] == 1.0


@pytest.mark.slow
def test_pars_curve_logs_every_evaluation_to_mlflow_and_plots(hopper_random_dataset, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--dataset", hopper_random_dataset, "--seeds", "2", "--steps", "4", "--eval-every", "2",
            "--eval-episodes", "1", "--ablation", "no_pa", "--tracking-uri", uri, "--out", str(tmp_path),
            "--no-progress"]
    assert pars_curve.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["ablation"] for r in out["results"]] == ["preset", "no_pa"]
    for r in out["results"]:
        assert r["status"] == "completed" and [c["step"] for c in r["curve"]] == [2, 4]
        assert all(KEYS <= set(c) for c in r["curve"])
        for c in r["curve"]:  # every score with the interval and what it rests on: 2 seeds x 1 episode
            assert c["score_ci_low"] <= c["normalized_score"] <= c["score_ci_high"]
            assert (c["score_seeds"], c["score_episodes"]) == (2, 1)
        history = mlflow.MlflowClient(uri).get_metric_history(r["run_id"], "action_sensitivity")
        assert sorted(m.step for m in history) == [2, 4]
    assert (tmp_path / "pars_curve.png").stat().st_size > 10_000
    assert pars_curve.main([*args, "--ablation", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown ablation 'bogus'") and err.count("\n") == 1
