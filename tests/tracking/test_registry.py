"""The registry: champion moves only on a better confirmed score on the same dataset; the registered pyfunc
acts like the trainer's policy on real Hopper observations; the full learner comes back intact."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient

from rlservice.cli import main
from rlservice.tracking import registry
from rlservice.training.trainer import Trainer


def champion(uri: str, name: str) -> str:
    return MlflowClient(tracking_uri=uri).get_model_version_by_alias(name, "champion").version


def test_champion_moves_only_on_a_better_confirmed_score_on_the_same_dataset(register_job, mlflow_server):
    name = "champion-test"
    first = register_job(name, 50.0, confirmed=30.0)
    assert (first["version"], first["champion"]) == ("1", True)
    luckier = register_job(name, 90.0, confirmed=20.0)  # a better selection score, a worse confirmed one
    assert (luckier["version"], luckier["champion"]) == ("2", False)
    assert champion(mlflow_server.uri, name) == "1"
    unconfirmed = register_job(name, 99.0)  # no confirmed score: nothing to compare
    assert (unconfirmed["version"], unconfirmed["champion"]) == ("3", False)
    steadier = register_job(name, 10.0, confirmed=31.0)  # a worse selection score, a better confirmed one
    assert (steadier["version"], steadier["champion"]) == ("4", True)
    assert champion(mlflow_server.uri, name) == "4"
    elsewhere = register_job(name, 99.0, dataset="rlservice/hopper-v5/other-v0", confirmed=99.0)
    assert (elsewhere["version"], elsewhere["champion"]) == ("5", False)  # not comparable: stays
    assert champion(mlflow_server.uri, name) == "4"


def test_a_champion_without_a_confirmed_score_is_not_compared_on_its_selection_score(register_job, mlflow_server):
    name = "unconfirmed-champion-test"
    assert register_job(name, 50.0)["champion"]  # the first version: the first champion, even unconfirmed
    assert not register_job(name, 10.0, confirmed=60.0)["champion"]  # the driver confirms such a champion first
    assert champion(mlflow_server.uri, name) == "1"


def test_models_list_and_show(registered, register_job, mlflow_server, capsys):
    uri = mlflow_server.uri
    assert main(["models", "list", "--json", "--tracking-uri", uri]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["policy-under-test"]["aliases"] == {"champion": "1"}
    assert listed["policy-under-test"]["latest_version"] == 1

    assert main(["models", "show", "policy-under-test", "--json", "--tracking-uri", uri]) == 0
    shown = json.loads(capsys.readouterr().out)
    (version,) = shown["versions"]
    assert version["aliases"] == ["champion"]
    assert version["tags"]["run_id"] == registered["best_run_id"] == version["run_id"]
    assert {"parent_run_id", "dataset", "preset", "score", "dataset_digest", "git_commit", "confirmed_score",
            "confirmed_ci_low", "confirmed_ci_high", "confirmed_episodes", "confirmed_checkpoint", "selection_score",
            "trials"} <= version["tags"].keys()
    assert float(version["tags"]["confirmed_score"]) == 45.0 and float(version["tags"]["selection_score"]) == 50.0

    assert main(["models", "show", "policy-under-test", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    assert "champion" in table and registered["best_run_id"] in table
    assert "45.00 [44.00, 46.00]" in table and "1x50" in table  # confirmed score, interval, seeds x episodes

    assert main(["best", "--experiment", "registry-test", "--json", "--tracking-uri", uri]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["run_id"] == registered["best_run_id"])
    assert row["confirmed"] == {"mean": 45.0, "low": 44.0, "high": 46.0, "seeds": 1, "episodes": 50, "unit": "ep"}
    assert row["confirmed_checkpoint"] == "best"

    assert main(["models", "show", "no-such-model", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_pyfunc_predict_equals_the_trainers_policy(registered, trained, mlflow_server, hopper_observations, tmp_path):
    observations = hopper_observations
    policy = Trainer.from_checkpoint(trained.run_dir / "best", run_dir=tmp_path).policies()[0]
    with registry.fluent_uri(mlflow_server.uri):
        model = mlflow.pyfunc.load_model("models:/policy-under-test@champion")
    expected = policy.act(observations)
    assert np.array_equal(model.predict(observations), expected)
    assert np.array_equal(model.predict(pd.DataFrame(observations)), expected)
    assert np.array_equal(model.predict(observations[0]), policy.act(observations[:1]))  # one observation: a batch of 1
    assert np.abs(expected).max() > 0  # a policy that acts, not an all-zero stub


def _assert_same_state(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_load_registered_trainer_gives_back_the_whole_learner(registered, trained, mlflow_server, tmp_path, one_thread):
    trainer, info = registry.load_registered_trainer("policy-under-test@champion", tracking_uri=mlflow_server.uri,
                                                   run_dir=tmp_path / "finetune", steps=110)
    original = Trainer.from_checkpoint(trained.run_dir / "best", run_dir=tmp_path / "original")
    assert info["version"] == registered["version"] and info["run_id"] == registered["best_run_id"]
    assert info["dataset"] == trained.config.dataset.id
    assert trainer.config.agent == trained.config.agent
    assert set(trainer.learner.networks()) == {"actor", "critic", "actor_target", "critic_target"}
    _assert_same_state(trainer.learner.state_dict(), original.learner.state_dict())
    _assert_same_state(trainer.normalizer.state_dict(), original.normalizer.state_dict())
    files = [p.name for p in (tmp_path / "finetune" / "registered").rglob("*") if p.is_file()]
    assert {"MLmodel", "pyfunc_model.py", "state.pt", "config.json"} <= set(files)
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]  # models from code: nothing pickled
    with one_thread():
        result = trainer.run(progress=False)  # and it trains on from there
    assert result.steps == 110 and (tmp_path / "finetune" / "latest").is_dir()
