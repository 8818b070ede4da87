"""Confirmation on fresh episodes, with real Ray tasks, real MuJoCo rollouts and a real MLflow store.

Two constructed trials: a "noisy" one whose selection score is high (as a lucky evaluation would
make it) but whose policy pushes every joint to -1 and falls within a few steps, and a "steady"
one with a lower selection score whose policy holds still (zero torques) and stays up several
times longer. Confirmation must register the steady one; and a champion registered on its
selection score alone is confirmed under the same protocol before it is compared.
"""

import pytest
import ray
import torch
import yaml
from mlflow import MlflowClient
from tune_helpers import QUICKSTART

from rlservice.config.run import build_run_config
from rlservice.config.tuning import CONFIRMATION_SEED_BASE, validate_job
from rlservice.runtime import confirmation
from rlservice.tracking import runs
from rlservice.tracking.tuning_runs import JobTracking
from rlservice.training.checkpoint import load_checkpoint, save_checkpoint
from rlservice.training.trainer import Trainer

EPISODES = 5
SELECTION_SEEDS = [0, 1]  # what the trials' evaluations used (seed 0, eval_episodes 2)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def policies(hopper_random_dataset, tmp_path_factory):
    """{"poor": dir, "steady": dir}: trainer checkpoints whose actor outputs a constant action
    (-1 everywhere, or 0 everywhere): its head's weights zeroed, its bias set."""
    root = tmp_path_factory.mktemp("policies")
    run_config = build_run_config(hopper_random_dataset, "td3bc", None,
                                  {"critic_hidden": 16, "actor_hidden": 16, "train.steps": 10}, action_dim=3)
    base = Trainer(run_config, root / "base").save("latest")
    state, config, info = load_checkpoint(base)
    out = {}
    for name, bias in (("poor", -20.0), ("steady", 0.0)):  # tanh(-20) = -1: the low end of the box
        actor = state["learner"]["actor"]
        actor["net.head.weight"] = torch.zeros_like(actor["net.head.weight"])
        actor["net.head.bias"] = torch.full_like(actor["net.head.bias"], bias)
        out[name] = save_checkpoint(root / name, state, config, info)
    return out


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def job_of(dataset, model, **confirm):
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec.update(dataset={"id": dataset}, eval_episodes=2, confirm={"episodes": EPISODES, **confirm},
                mlflow={"experiment": "confirm-test", "registered_model": model})
    return validate_job(spec)


def tracked_job(uri, job, trials):
    """A parent run and one run per (name, selection score, checkpoint) with its checkpoints logged."""
    parent = runs.start_job_run(uri, job.mlflow.experiment, "job", {"dataset.id": job.dataset.id})
    rows = []
    for name, score, checkpoint in trials:
        run = runs.TrialRun(uri, job.mlflow.experiment, parent, name, {"dataset.id": job.dataset.id})
        run.log_checkpoint(checkpoint)
        run.log_checkpoint(checkpoint, runs.FINAL_CHECKPOINT)
        run.finish("completed", [], score=score)
        rows.append({"trial": name, "run_id": run.run_id, "status": "completed", "score": score, "score_std": 0.0,
                     "final_score": score, "config": {"name": name}, "checkpoint": str(checkpoint),
                     "final_checkpoint": str(checkpoint), "selection_seeds": SELECTION_SEEDS})
    return JobTracking(uri, job.mlflow.experiment, parent), rows


def finish(target, job, rows, confirmed, champion=None):
    return runs.finish_job(target.uri, target.parent_run_id, rows, model_name=job.mlflow.registered_model,
                           dataset_id=job.dataset.id, preset=job.preset, searched=[], confirmed=confirmed,
                           champion=champion)


def test_a_noisy_trial_is_not_registered_over_a_steady_one(policies, hopper_random_dataset, uri):
    job = job_of(hopper_random_dataset, "noisy-or-steady", top_k=2)
    target, rows = tracked_job(uri, job, [("noisy", 80.0, policies["poor"]), ("steady", 20.0, policies["steady"])])

    todo = confirmation.candidates(job, rows)
    assert [(c["trial"], c["checkpoint_kind"]) for c in todo] == [
        ("noisy", "best"), ("noisy", "final"), ("steady", "best"), ("steady", "final")]
    done = confirmation.confirm(job, target, todo)

    fresh = list(range(CONFIRMATION_SEED_BASE, CONFIRMATION_SEED_BASE + EPISODES))
    for candidate in done:
        assert candidate["confirmed_seeds"] == fresh  # the seeds the rollouts actually reset with
        assert not set(candidate["confirmed_seeds"]) & set(SELECTION_SEEDS)
        assert candidate["confirmed"]["episodes"] == EPISODES and candidate["confirmed"]["seeds"] == 1
    score = {(c["trial"], c["checkpoint_kind"]): c["confirmed"] for c in done}
    assert score["steady", "best"]["low"] > score["noisy", "best"]["high"]  # zero torques stay up longer

    summary = finish(target, job, rows, done)
    steady = next(r for r in rows if r["trial"] == "steady")
    assert summary["best_run_id"] == steady["run_id"] and summary["champion"]
    tags = MlflowClient(uri).get_model_version(job.mlflow.registered_model, summary["version"]).tags
    assert float(tags["confirmed_score"]) == pytest.approx(max(score["steady", k]["mean"] for k in ("best", "final")))
    assert float(tags["confirmed_ci_low"]) < float(tags["confirmed_score"]) < float(tags["confirmed_ci_high"]) or \
        tags["confirmed_ci_low"] == tags["confirmed_ci_high"]
    assert tags["confirmed_episodes"] == str(EPISODES) and tags["confirmed_checkpoint"] in ("best", "final")
    assert float(tags["selection_score"]) == 20.0 and tags["trials"] == "2"
    assert tags["confirmed_env_seeds"] == f"{fresh[0]}-{fresh[-1]}"


def test_an_unconfirmed_champion_is_confirmed_first_and_loses_to_a_better_confirmed_score(
        policies, hopper_random_dataset, uri):
    job = job_of(hopper_random_dataset, "unconfirmed-champion", top_k=1)
    # Registered without confirmation (as before it existed): the noisy trial, on its selection score.
    target, rows = tracked_job(uri, job, [("noisy", 80.0, policies["poor"])])
    old = finish(target, job, rows, None)
    assert old["champion"] and old["best_run_id"] == rows[0]["run_id"]

    target, rows = tracked_job(uri, job, [("steady", 20.0, policies["steady"])])
    champion = confirmation.champion_candidate(job, target)
    assert str(champion["version"]) == str(old["version"])
    *confirmed, champion = confirmation.confirm(job, target, confirmation.candidates(job, rows) + [champion])
    assert champion["confirmed_seeds"] == confirmed[0]["confirmed_seeds"]  # the same protocol
    new = finish(target, job, rows, confirmed, champion)

    c = MlflowClient(uri)
    old_tags = c.get_model_version(job.mlflow.registered_model, str(old["version"])).tags
    assert float(old_tags["confirmed_score"]) == pytest.approx(champion["confirmed"]["mean"])
    assert old_tags["confirmed_checkpoint"] == "registered"
    assert new["champion"]  # 20 < 80 on selection, but confirmed: standing beats falling
    assert str(c.get_model_version_by_alias(job.mlflow.registered_model, "champion").version) == str(new["version"])
    assert confirmation.champion_candidate(job, target) is None  # it has confirmed tags now
