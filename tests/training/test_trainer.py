"""End to end on a real MuJoCo env and a real Minari dataset built by the test session."""

import json

import numpy as np
import pytest
import torch

from rlservice.agent.policy import Policy
from rlservice.cli import main
from rlservice.config.run import build_run_config
from rlservice.data.minari_io import make_env
from rlservice.training.checkpoint import load_checkpoint
from rlservice.training.trainer import Trainer

SMALL = {"critic_hidden": 64, "actor_hidden": 64, "train.eval_every": 100, "train.eval_episodes": 2, "train.log_every": 50}


def small_config(dataset_id, preset, steps, **extra):
    return build_run_config(dataset_id, preset, overrides={**SMALL, "train.steps": steps, **extra}, action_dim=3)


def hopper_observations(n=32):
    env = make_env("Hopper-v5", seed=0)
    obs, _ = env.reset(seed=0)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, *_ = env.step(env.action_space.sample())
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("preset", ["td3bc", "pars", "pani", "dmg", "iql"])
def test_each_preset_trains_evaluates_saves_and_reloads_identically(preset, hopper_random_dataset, tmp_path):
    trainer = Trainer(small_config(hopper_random_dataset, preset, 200), tmp_path)
    result = trainer.run(progress=False)
    assert result.status == "completed" and result.steps == 200
    assert [h["step"] for h in result.history] == [100, 200]
    assert np.isfinite(result.normalized_score) and np.isfinite(result.mean_return)
    state, cfg, info = load_checkpoint(tmp_path / "latest")
    assert cfg.preset == preset and info["step"] == 200
    a = cfg.agent
    reloaded = Policy.from_state_dict(
        {f"actor.{k}": v[0:1] for k, v in state["learner"]["actor"].items()}
        | {f"normalizer.{k}": v for k, v in state["normalizer"].items()}
        | {"action_low": state["action_low"], "action_high": state["action_high"]},
        a.actor_hidden, a.actor_layers, a.actor_layernorm,
    )
    obs = hopper_observations()
    np.testing.assert_array_equal(reloaded.act(obs), trainer.policies()[0].act(obs))
    # and the full trainer comes back from the checkpoint with the same weights
    again = Trainer.from_checkpoint(tmp_path / "latest")
    for name, net in trainer.learner.networks().items():
        for p, q in zip(net.state_dict().values(), again.learner.networks()[name].state_dict().values()):
            assert torch.equal(p, q), name


def test_diagnostic_batch_is_held_out_of_training(hopper_random_dataset, tmp_path):
    trainer = Trainer(small_config(hopper_random_dataset, "td3bc", 10), tmp_path)
    n = len(trainer.data.rewards)  # 3000 transitions: 300 held out (a tenth, at most 1024)
    held = trainer.diag_batch.obs[0]
    assert held.shape[0] == n // 10 and len(trainer.buffer) == n - n // 10
    assert not (held[:, None, :] == trainer.buffer.obs[None]).all(dim=-1).any()


def test_best_checkpoint_holds_the_weights_of_the_best_evaluation(hopper_random_dataset, tmp_path):
    trainer = Trainer(small_config(hopper_random_dataset, "td3bc", 300), tmp_path)
    result = trainer.run(progress=False)
    best_step = max(result.history, key=lambda h: h["normalized_score"])["step"]
    _, _, info = load_checkpoint(tmp_path / "best")
    assert info["step"] == best_step
    assert info["best_normalized_score"] == pytest.approx(result.best_normalized_score)


@pytest.mark.parametrize("preset", ["dmg", "pars"])
def test_resume_continues_as_if_uninterrupted(preset, hopper_random_dataset, tmp_path):
    """N straight vs N/2, stop, reload, N/2 more: identical parameters and optimiser state."""
    cfg = small_config(hopper_random_dataset, preset, 120, **{"train.log_every": 20, "train.eval_every": 60})
    straight = Trainer(cfg, tmp_path / "straight")
    straight.run(progress=False)

    interrupted = Trainer(cfg, tmp_path / "resumed")
    interrupted.run(progress=False, on_log=lambda step, _: step == 60 and interrupted.request_stop())
    assert interrupted.learner.steps == 60
    resumed = Trainer.from_checkpoint(tmp_path / "resumed" / "latest")
    result = resumed.run(progress=False)
    assert result.steps == 120
    for name, net in straight.learner.networks().items():
        for (key, p), q in zip(net.state_dict().items(), resumed.learner.networks()[name].state_dict().values()):
            assert torch.equal(p, q), f"{name}.{key}"
    assert straight.learner.actor_opt.lr == resumed.learner.actor_opt.lr
    assert [h["step"] for h in resumed.history] == [60, 120]  # the history carries over too


@pytest.mark.parametrize("group", [None, 2])
def test_vectorised_seeds_report_mean_and_std(hopper_random_dataset, tmp_path, group):
    cfg = small_config(hopper_random_dataset, "td3bc", 100, **{"train.num_seeds": 3, "train.seed_group": group})
    trainer = Trainer(cfg, tmp_path)
    assert [nets.seeds for _, nets in trainer.learner.groups] == ([3] if group is None else [2, 1])
    result = trainer.run(progress=False)
    assert result.num_seeds == 3 and result.normalized_score_std is not None


def test_divergence_stops_the_run(hopper_random_dataset, tmp_path):
    # An absurd critic learning rate throws Q far beyond c * max|r| / (1 - gamma) within steps.
    cfg = small_config(hopper_random_dataset, "td3bc", 400, critic_lr=1e3, **{"train.log_every": 10})
    trainer = Trainer(cfg, tmp_path)
    logged = []
    result = trainer.run(progress=False, on_log=lambda step, m: logged.append(m))
    assert result.status == "diverged" and result.steps < 400
    assert logged[-1]["diverged"] and not any(m["diverged"] for m in logged[:-1])
    assert not np.isfinite(logged[-1]["q_abs_max"]) or logged[-1]["q_abs_max"] > trainer.q_limit


def test_cli_train_json_and_combination(hopper_random_dataset, tmp_path, capsys):
    code = main([
        "train", "--dataset", hopper_random_dataset, "--preset", "dmg", "--set", "pa_alpha=0.001",
        "--set", "reward_scale=10", "--set", "critic_hidden=32", "--set", "actor_hidden=32",
        "--steps", "60", "--seed", "1", "--eval-every", "60", "--eval-episodes", "1", "--log-every", "30",
        "--out", str(tmp_path / "run"), "--json", "--no-progress", "--no-tracking",
    ])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"dataset", "preset", "steps", "seed", "normalized_score", "mean_return", "steps_per_second", "checkpoint"} <= set(out)
    assert out["steps"] == 60 and out["seed"] == 1 and out["preset"] == "dmg" and out["steps_per_second"] > 0
    _, cfg, _ = load_checkpoint(out["checkpoint"])
    assert cfg.agent.pa_alpha == 0.001 and cfg.agent.reward_scale == 10 and cfg.agent.dmg_lambda == 0.25


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "td3bc", "--set", "noise_sigma=-1"], "noise_sigma=-1"),
        (["--preset", "td3bc", "--set", "dmg_lambda=2"], "dmg_lambda=2"),
        (["--preset", "td3bc", "--set", "expectile=1.5"], "expectile=1.5"),
        (["--preset", "td3bc", "--set", "pa_alpha=-0.1"], "pa_alpha=-0.1"),
        (["--preset", "nope"], "preset='nope' is unknown"),
        (["--preset", "td3bc", "--set", "bogus=1"], "unknown key 'bogus'"),
        (["--preset", "td3bc", "--set", "novalue"], "is not of the form key=value"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, hopper_random_dataset, capsys):
    code = main(["train", "--dataset", hopper_random_dataset, "--no-tracking", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_unknown_dataset_is_one_line(capsys):
    code = main(["train", "--dataset", "rlservice/nowhere/random-v0", "--preset", "td3bc", "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 2 and "rlservice/nowhere/random-v0" in err and err.count("\n") == 1
