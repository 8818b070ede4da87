"""`selection: offline` in a tuning job: what it needs, what it refuses, what it changes."""

import pytest
import yaml

from rlservice.config.tuning import validate_job
from rlservice.errors import ConfigError

BASE = {
    "name": "offline", "dataset": {"id": "rlservice/hopper-v5/random-v0"}, "preset": "td3bc",
    "search_space": {"bc_weight": {"type": "uniform", "low": 0.1, "high": 1.0}},
    "trials": 2, "steps": 400, "eval_every": 100, "eval_episodes": 2,
    "mlflow": {"experiment": "e", "registered_model": "m"},
}


def job(**changes):
    return validate_job(yaml.safe_load(yaml.safe_dump({**BASE, **changes})))


def test_offline_selection_needs_fqe_steps():
    with pytest.raises(ConfigError, match=r"^selection=offline needs offline_evaluation: \{steps: N\}"):
        job(selection="offline", scheduler={"type": "none"})
    with pytest.raises(ConfigError, match="offline_evaluation.steps=0"):
        job(selection="offline", offline_evaluation={"steps": 0}, scheduler={"type": "none"})


def test_asha_needs_fqe_at_every_evaluation():
    with pytest.raises(ConfigError, match="^selection=offline with scheduler asha: ASHA needs a score at every"):
        job(selection="offline", offline_evaluation={"steps": 10})
    every = job(selection="offline", offline_evaluation={"steps": 10, "every": True})
    assert every.run_config().train.eval_every == 100  # FQE at each of the job's evaluations


def test_offline_selection_scores_only_the_final_policy_unless_every():
    final_only = job(selection="offline", offline_evaluation={"steps": 10}, scheduler={"type": "none"})
    assert final_only.offline and final_only.run_config().train.eval_every == 400
    online = job(offline_evaluation={"steps": 10})
    assert not online.offline and online.run_config().train.eval_every == 100
    with pytest.raises(ConfigError, match="selection='rollouts'"):
        job(selection="rollouts")
