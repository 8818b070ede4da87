"""`rlservice evaluate`: online on fresh episodes, offline by FQE, from a checkpoint or a registered model."""

import json

import numpy as np
import pytest

from rlservice.cli import main
from rlservice.commands.evaluate import FRESH_SEED
from rlservice.tracking.export import policy_from_checkpoint
from rlservice.training.evaluation import evaluate
from rlservice.training.intervals import score_interval


def _json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_online_scores_fresh_episodes_with_an_interval(trained, one_thread, capsys):
    best = trained.run_dir / "best"
    with one_thread():
        assert main(["evaluate", str(best), "--episodes", "3", "--json"]) == 0
    out = _json(capsys)
    # The same episodes by hand: env seeds FRESH_SEED.., scores by the D4RL formula.
    d = trained.data
    returns = evaluate(policy_from_checkpoint(best), d.env_id, 3, FRESH_SEED, d.ref_min_score, d.ref_max_score).returns
    scores = 100 * (returns - d.ref_min_score) / (d.ref_max_score - d.ref_min_score)
    assert out["returns"] == pytest.approx(returns.tolist())
    assert out["normalized_score"] == pytest.approx(scores.mean())
    interval = score_interval(scores)
    assert out["score_interval"] == pytest.approx([interval.low, interval.high])
    assert out["episodes"] == 3 and out["env_seeds"] == [FRESH_SEED, FRESH_SEED + 2]


def test_offline_fqe_of_a_registered_model(registered, mlflow_server, one_thread, capsys):
    with one_thread():
        code = main(["evaluate", "policy-under-test@champion", "--offline", "--fqe-steps", "30", "--json",
                     "--tracking-uri", mlflow_server.uri])
    assert code == 0
    out = _json(capsys)
    assert out["source"] == "models:/policy-under-test/1" and out["fqe_steps"] == 30
    low, high = out["fqe_score_interval"]
    assert low <= out["fqe_score"] <= high and np.isfinite(out["fqe_return"])
    assert out["start_states"] > 1 and len(out["members"]) == 5 and out["discount"] == 0.99


@pytest.mark.parametrize("argv", [["no/such/dir@x"], ["not a model"], ["--episodes", "0", "."]])
def test_bad_input_is_one_line(argv, capsys):
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
