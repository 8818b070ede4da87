"""Offline-to-online fine-tuning of a registered model: Ray rollout actors on the real
InvertedPendulum-v5, a tiny TD3+BC model trained offline on random data, a SQLite registry."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
from mlflow import MlflowClient

from rlservice.agent.learner import Learner
from rlservice.cli import main
from rlservice.config.run import AgentConfig, build_run_config
from rlservice.data.minari_io import (
    collect_episodes,
    dataset_id_for,
    list_local_datasets,
    random_policy_score,
    write_dataset,
)
from rlservice.errors import ConfigError
from rlservice.jobs import finetune as ft
from rlservice.tracking import registry, runs
from rlservice.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
ENV = "InvertedPendulum-v5"  # learnt in a few thousand env steps; a random policy balances ~5 steps
MODEL = "pendulum"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks on a busy machine
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def registered(uri, tmp_path_factory):
    """Version 1 of MODEL (alias champion): 300 offline steps of tiny TD3+BC on 2000 random transitions."""
    dataset = dataset_id_for(ENV, "random")
    if dataset not in list_local_datasets():  # InvertedPendulum has no D4RL expert score: its maximum return is 1000
        write_dataset(dataset, ENV, collect_episodes(ENV, None, 2000, seed=0),
                      ref_min_score=random_policy_score(ENV), ref_max_score=1000.0)
    knobs = {"train.steps": 300, "train.eval_every": 300, "train.eval_episodes": 1, "train.log_every": 100,
             "train.batch_size": 64, "critic_hidden": 64, "actor_hidden": 64}
    trainer = Trainer(build_run_config(dataset, "td3bc", None, knobs), tmp_path_factory.mktemp("offline"))
    _, run_id = runs.log_training_run(uri, "offline", trainer, progress=False)
    version = registry.register_policy(uri, run_id, trainer.run_dir / "latest", MODEL, {"dataset": dataset}).version
    MlflowClient(uri).set_registered_model_alias(MODEL, registry.CHAMPION, version)
    return trainer


def online_buffer(run_dir) -> dict:
    return torch.load(run_dir / ft.LATEST / ft.ONLINE_BUFFER, weights_only=True)


def test_finetuning_improves_registers_and_honours_utd_and_mix(registered, uri, tmp_path, monkeypatch):
    updates, rows = [], {"offline": 0, "all": 0}
    update = Learner.update
    monkeypatch.setattr(Learner, "update", lambda self, batch: updates.append(1) or update(self, batch))
    mixed_batch = ft.mixed_batch
    projection, offline_keys = None, None

    def counting(offline, *args):
        nonlocal projection, offline_keys
        batch = mixed_batch(offline, *args)
        if offline_keys is None:  # one number per offline row: a random projection of its observation
            projection = torch.randn(offline.obs.shape[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            offline_keys = offline.obs.double() @ projection
        same = torch.isin(batch.obs.double() @ projection, offline_keys)  # the row is an offline one
        rows["offline"] += int(same.sum())
        rows["all"] += same.numel()
        return batch

    monkeypatch.setattr(ft, "mixed_batch", counting)
    steps, utd, ratio = 3000, 2, 0.25  # random offline data: a small share of it learns fastest
    announced = []
    result = ft.finetune(f"models:/{MODEL}@champion", steps, utd=utd, offline_ratio=ratio, eval_every=steps,
                         eval_episodes=10, tracking_uri=uri, run_dir=tmp_path / "ft", progress=False,
                         overrides={"bc_weight": 0.0}, announce=announced.append)
    print(f"normalised score {result.score_before:.1f} -> {result.score_after:.1f} in {result.wall_time_s} s")

    assert result.status == "completed" and result.online_steps == steps
    # The regime it used, printed and returned: the flags given, the rest from the model's preset (td3bc).
    assert announced[0].startswith("fine-tuning regime (td3bc on ") and "  utd 2  (given)" in announced
    assert result.regime["offline_ratio"] == {"value": ratio, "source": "given"}
    assert result.regime["exploration_std"]["source"].startswith("SPEC.md fine-tuning")
    assert result.updates == len(updates) == utd * steps
    buffer = online_buffer(tmp_path / "ft")
    assert buffer["added"] == len(buffer["rewards"]) == steps
    n = rows["all"]
    assert n == utd * steps * 64
    assert abs(rows["offline"] - ratio * n) < 4 * (n * ratio * (1 - ratio)) ** 0.5
    # Fine-tuning improves on the offline policy: it balances at least twice as long. Over runs here
    # the score went from 2.1 to 5..14 (rollout timing changes which policy collects which step).
    assert result.score_after > 2 * result.score_before

    c = MlflowClient(uri)
    version = c.get_model_version(MODEL, result.new_version)
    assert int(result.new_version) > 1
    assert {"parent_model": MODEL, "parent_version": "1", "online_steps": str(steps)}.items() <= version.tags.items()
    assert str(c.get_model_version_by_alias(MODEL, ft.FINETUNED).version) == result.new_version
    run = c.get_run(result.mlflow_run_id)
    assert {"episode_return", "normalized_score", "critic_loss", "q_pi_mean"} <= run.data.metrics.keys()
    assert run.data.tags["parent_version"] == "1"


def test_resume_keeps_the_online_buffer_and_reaches_the_total(registered, uri, tmp_path, capsys):
    run_dir = tmp_path / "ft"
    first = ft.finetune(f"models:/{MODEL}/1", 600, utd=1, eval_every=200, eval_episodes=1, tracking_uri=uri,
                        run_dir=run_dir, stop_at=400, progress=False)
    assert (first.status, first.online_steps, first.updates, first.new_version) == ("interrupted", 400, 400, None)
    before = online_buffer(run_dir)
    assert before["added"] == 400

    code = main(["finetune", f"models:/{MODEL}/1", "--online-steps", "600", "--resume", str(run_dir), "--json",
                 "--no-progress"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["online_steps"], out["updates"], out["parent_version"]) == (600, 600, "1")
    assert out["new_version"] is not None and out["run_dir"] == str(run_dir)
    after = online_buffer(run_dir)
    assert after["added"] == len(after["rewards"]) == 600
    for key in ("obs", "actions", "rewards", "next_obs", "terminated"):
        assert torch.equal(after[key][:400], before[key]), key


def test_ctrl_c_saves_and_the_readme_resume_continues_with_no_evaluation_lost(registered, uri, tmp_path):
    run_dir = tmp_path / "ft"
    command = [sys.executable, "-m", "rlservice.cli", "finetune", f"models:/{MODEL}/1", "--online-steps", "2000",
               "--utd", "1", "--eval-every", "200", "--eval-episodes", "1", "--tracking-uri", uri,
               "--out", str(run_dir), "--no-progress"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    progress = run_dir / ft.LATEST / ft.PROGRESS
    try:
        deadline = time.monotonic() + 200
        while not progress.is_file() and time.monotonic() < deadline:  # the first checkpoint, at env step 200
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.2)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"rlservice finetune --resume {run_dir}" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    saved = json.loads(progress.read_text())
    stopped_at = saved["env_steps"]
    assert 200 <= stopped_at < 2000
    assert online_buffer(run_dir)["added"] == stopped_at  # every transition collected is in the checkpoint
    evaluated = [h["step"] for h in saved["history"]]
    assert evaluated == list(range(0, stopped_at + 1, 200))  # each boundary reached, the one in flight too
    c = MlflowClient(uri)
    [first_run] = saved["mlflow_run_ids"]
    assert c.get_run(first_run).info.status == "KILLED"
    assert sorted(m.step for m in c.get_metric_history(first_run, "normalized_score")) == evaluated

    end = min(2000, (stopped_at // 200 + 2) * 200)  # one more evaluation, as the README writes it
    resumed = subprocess.run([sys.executable, "-m", "rlservice.cli", "finetune", "--resume", str(run_dir),
                              "--online-steps", str(end), "--json", "--no-progress"],
                             capture_output=True, text=True, cwd=REPO, timeout=200)
    assert resumed.returncode in (0, 130), resumed.stderr[-3000:]
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["online_steps"] == end and out["updates"] == end  # the updates owed to the interrupted steps too
    second_run = c.get_run(out["mlflow_run_id"])
    assert second_run.data.tags["resumed_from_run"] == first_run
    history = json.loads(progress.read_text())["history"]
    assert [h["step"] for h in history] == list(range(0, end + 1, 200))


def test_online_config_defaults_and_overrides():
    def online(offline, preset=None, dataset="mujoco/hopper/medium-v0", **values):
        _, knobs, _ = ft.regime(ft.settings(1, **values), preset, dataset, offline, 3)
        return ft.online_agent_config(offline, knobs)

    assert online(AgentConfig(num_critics=10)).actor_q == "subset_mean"  # no preset: SPEC.md's default
    assert online(AgentConfig()).actor_q == "min"
    dmg_like = AgentConfig(dmg_lambda=0.25, actor_lr_schedule="cosine")
    cfg = online(dmg_like, overrides={"bc_weight": 0.2})
    assert (cfg.actor_lr_schedule, cfg.bc_weight, cfg.dmg_lambda) == ("constant", 0.2, 0.25)
    with pytest.raises(ConfigError, match="value network"):
        online(dmg_like, overrides={"dmg_lambda": 1.0})
    with pytest.raises(ConfigError, match="actor_q_subset"):
        online(AgentConfig(), overrides={"actor_q_subset": 3})


def test_each_method_fine_tunes_in_its_own_regime():
    # PARS on halfcheetah-medium: UTD 20, 5% offline (halfcheetah), Table 11's online alpha 1e-4 and S_k_actor 10.
    pars = build_run_config("mujoco/halfcheetah/medium-v0", "pars", action_dim=6).agent
    s, knobs, table = ft.regime(ft.settings(1), "pars", "mujoco/halfcheetah/medium-v0", pars, 6)
    assert (s.utd, s.offline_ratio, s.exploration_std, s.dmg_decay) == (20, 0.05, 0.1, False)
    assert (knobs["pa_alpha"], knobs["actor_q"], knobs["actor_q_subset"]) == (1e-4, "subset_mean", 10)
    assert table["pa_alpha"]["source"] == "PARS Table 11, halfcheetah-medium"
    # PARS on hopper-medium: 50/50, online alpha 1e-1, S_k_actor 1.
    s, knobs, _ = ft.regime(ft.settings(1), "pars", "mujoco/hopper/medium-v0", pars, 3)
    assert (s.offline_ratio, knobs["pa_alpha"], knobs["actor_q_subset"]) == (0.5, 1e-1, 1)
    # DMG (official train_finetune.py): 1 update per env step, one uniform buffer, noise 0.1, nu_end 0.005.
    dmg_cfg = build_run_config("D4RL/antmaze/large-play-v1", "dmg").agent
    s, knobs, _ = ft.regime(ft.settings(1), "dmg", "D4RL/antmaze/large-play-v1", dmg_cfg, 8)
    assert (s.utd, s.offline_ratio, s.exploration_std, s.dmg_decay, s.nu_end, s.lam_end) == (
        1, "uniform", 0.1, True, 0.005, 0.5)
    assert knobs["discount"] == 0.995 and s.eval_episodes == 100  # antmaze-large; AntMaze evaluation
    # Every flag still overrides the method's defaults.
    s, knobs, table = ft.regime(ft.settings(1, utd=4, offline_ratio=0.3, overrides={"discount": 0.99}), "dmg",
                                "D4RL/antmaze/large-play-v1", dmg_cfg, 8)
    assert (s.utd, s.offline_ratio, knobs["discount"], table["utd"]["source"]) == (4, 0.3, 0.99, "given")


def test_dmg_fine_tuning_decays_nu_when_lambda_starts_at_its_end():
    base = AgentConfig(dmg_lambda=0.5, bc_weight=0.1)
    assert ft.decayed_config(base, base, 999, 0.5, 0.005) is base  # no decay before 1000 updates
    cfg = ft.decayed_config(base, base, 3000, 0.5, 0.005)
    # decay = 0.99^3 = 0.970299; nu = 0.005 + (0.1 - 0.005) * 0.970299 = 0.0971784...; lambda stays 0.5
    assert cfg.dmg_lambda == pytest.approx(0.5) and cfg.bc_weight == pytest.approx(0.09717840, abs=1e-8)
    lam = ft.decayed_config(AgentConfig(dmg_lambda=0.25, bc_weight=10.0), base, 1000, 0.5, 0.005)
    assert lam.dmg_lambda == pytest.approx(0.5 - 0.25 * 0.99) and lam.bc_weight == pytest.approx(0.005 + 9.995 * 0.99)


def test_uniform_sampling_draws_offline_rows_in_proportion_to_their_share():
    from rlservice.data.buffer import ReplayBuffer
    from rlservice.data.online_buffer import OnlineReplayBuffer, Transitions

    n_off, n_on = 300, 100
    offline = ReplayBuffer(torch.zeros(n_off, 2), torch.zeros(n_off, 1), torch.zeros(n_off), torch.zeros(n_off, 2),
                           torch.zeros(n_off))
    online = OnlineReplayBuffer(2, 1, n_on)
    ones = lambda *shape: torch.ones(*shape).numpy()  # noqa: E731
    online.add(Transitions(ones(n_on, 2), ones(n_on, 1), ones(n_on), ones(n_on, 2), ones(n_on) < 0, ones(n_on) < 0,
                           ones(n_on) < 0, torch.zeros(n_on, dtype=torch.long).numpy()))
    batch = ft.mixed_batch(offline, online, torch.Generator().manual_seed(0), 1, 20_000, "uniform")
    share = float((batch.obs[..., 0] == 0).float().mean())
    assert share == pytest.approx(n_off / (n_off + n_on), abs=0.015)


@pytest.mark.parametrize("args, message", [
    (["--online-steps", "100", "--offline-ratio", "1.5"], "offline_ratio"),
    (["--online-steps", "100", "--utd", "0"], "utd"),
    (["--online-steps", "0"], "online_steps"),
    (["--online-steps", "100", "--set", "no_such_knob=1"], "no_such_knob"),
    (["--online-steps", "100", "--set", "critic_hidden=8"], "critic_hidden"),
])
def test_bad_settings_are_one_line(args, message, capsys):
    assert main(["finetune", "models:/anything@champion", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_unknown_model_and_unreachable_cluster_are_one_line(registered, uri, tmp_path, capsys):
    assert main(["finetune", "models:/no-such-model@champion", "--online-steps", "10", "--tracking-uri", uri,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-model" in err and "not found" in err
    assert main(["finetune", "not a model", "--online-steps", "10", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["finetune", "submit", f"models:/{MODEL}@champion", "--online-steps", "10",
                 "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the Ray cluster" in err
