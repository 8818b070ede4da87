"""Presets against the papers' tables: every expected value below is typed from the paper
(PARS Appendix F.3 Tables 8, 10, 11 and the Adroit rows; DMG Table 5 and its README; the
IQL/TD3+BC conventions of SPEC.md), not read back from rlservice/config/presets.py."""

import json

import pytest

from rlservice.cli import main
from rlservice.config.presets import parse_dataset
from rlservice.config.run import build_run_config


def show(capsys, preset, dataset, *extra):
    assert main(["presets", "show", "--preset", preset, "--dataset", dataset, "--json", *extra]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"preset", "dataset", "row", "knobs"} and out["dataset"] == dataset
    return out["row"], {k: v["value"] for k, v in out["knobs"].items()}, {k: v["source"] for k, v in out["knobs"].items()}


def mujoco_ids(env, family, quality):
    """One dataset under each id prefix the project meets."""
    return [f"rlservice/{env}-v5/{quality}-v0", f"mujoco/{family}/{quality}-v0", f"D4RL/{family}/{quality}-v2",
            f"{family}-{quality}-v2"]


# PARS Table 11: offline alpha, policy noise, S_k_critic, online alpha, online S_k_actor; F.3 reward scale;
# Table 8 Q_min.
TABLE_11 = [
    ("halfcheetah", "halfcheetah", "medium", 1e-4, 0.0, 2, 1e-4, 10, 5.0, -366.0),
    ("hopper", "hopper", "random", 1e-2, 0.2, 2, 1e-2, 1, 10.0, -166.0),
    ("walker2d", "walker2d", "medium-replay", 1e-2, 0.0, 10, 1e-2, 1, 10.0, -229.0),
    ("hopper", "hopper", "medium", 1e-2, 0.0, 10, 1e-1, 1, 10.0, -166.0),
]


@pytest.mark.parametrize("env,family,quality,alpha,noise,subset,on_alpha,on_subset,scale,qmin", TABLE_11)
def test_pars_mujoco_rows_are_table_11(capsys, env, family, quality, alpha, noise, subset, on_alpha, on_subset, scale, qmin):
    for dataset in mujoco_ids(env, family, quality):
        row, v, src = show(capsys, "pars", dataset)
        assert row == f"{family}-{quality}"
        assert (v["pa_alpha"], v["policy_noise"], v["target_subset"]) == (alpha, noise, subset)
        assert (v["finetune.pa_alpha"], v["finetune.actor_q_subset"]) == (on_alpha, on_subset)
        assert (v["reward_scale"], v["q_min"], v["bc_weight"], v["num_critics"]) == (scale, qmin, 0.0, 10)
        assert v["actor_q"] == "min" and v["finetune.actor_q"] == "subset_mean" and v["finetune.utd"] == 20
        assert v["finetune.offline_ratio"] == (0.05 if family == "halfcheetah" or quality == "random" else 0.5)
        assert src["pa_alpha"] == f"PARS Table 11, {family}-{quality}"


# PARS Table 10: reward scale, offline beta, offline alpha, online beta (online alpha 1e-3).
TABLE_10 = [
    ("umaze-diverse", 10000.0, 0.005, 1e-3, 0.001),
    ("large-diverse", 10000.0, 0.01, 1e-2, 0.01),
    ("medium-play", 1000.0, 0.01, 1e-3, 0.0),
]


@pytest.mark.parametrize("maze,scale,beta,alpha,on_beta", TABLE_10)
def test_pars_antmaze_rows_are_table_10(capsys, maze, scale, beta, alpha, on_beta):
    for dataset in (f"D4RL/antmaze/{maze}-v1", f"antmaze-{maze}-v2"):
        row, v, src = show(capsys, "pars", dataset, "--action-dim", "8")
        assert row == f"antmaze-{maze}"
        assert (v["reward_scale"], v["pa_alpha"], v["finetune.pa_alpha"]) == (scale, alpha, 1e-3)
        assert v["bc_weight"] == pytest.approx(beta * 8) and v["finetune.bc_weight"] == pytest.approx(on_beta * 8)
        assert (v["num_critics"], v["pa_distance"], v["discount"], v["q_min"]) == (4, 1000.0, 0.995, 0.0)
        assert v["finetune.actor_q_subset"] == 1 and v["finetune.offline_ratio"] == 0.5
        assert v["train.eval_episodes"] == 100


def test_beta_times_d_says_it_needs_the_action_dim(capsys):
    _, v, src = show(capsys, "pars", "D4RL/antmaze/large-diverse-v1")
    assert v["bc_weight"] is None and "action dim" in src["bc_weight"]
    assert v["reward_scale"] == 10000.0  # the rest resolves from the id alone


# PARS Adroit rows: beta / alpha / online beta; reward scale 10; Table 8 Q_min.
ADROIT = [
    ("pen", "cloned", 0.01, 1e-2, 0.0, -715.0, 24),
    ("hammer", "cloned", 0.1, 1e-3, 0.0, -348.0, 26),
    ("door", "expert", 0.1, 1e-3, None, -42.0, 28),
]


@pytest.mark.parametrize("family,quality,beta,alpha,on_beta,qmin,d", ADROIT)
def test_pars_adroit_rows(capsys, family, quality, beta, alpha, on_beta, qmin, d):
    env = {"pen": "AdroitHandPen", "hammer": "AdroitHandHammer", "door": "AdroitHandDoor"}[family]
    for dataset in (f"D4RL/{family}/{quality}-v2", f"{family}-{quality}-v1", f"rlservice/{env}-v1/{quality}-v0"):
        assert parse_dataset(dataset).domain == "adroit"
        row, v, _ = show(capsys, "pars", dataset, "--action-dim", str(d))
        assert row == f"{family}-{quality}"
        assert (v["reward_scale"], v["pa_alpha"], v["q_min"], v["finetune.pa_alpha"]) == (10.0, alpha, qmin, 1e-3)
        assert v["bc_weight"] == pytest.approx(beta * d)
        if on_beta is not None:
            assert v["finetune.bc_weight"] == pytest.approx(on_beta * d)
        assert (v["actor_lr_schedule"], v["num_critics"], v["pa_distance"], v["discount"]) == ("cosine", 10, 100.0, 0.99)


def test_pen_ids_are_adroit_not_mujoco():
    for dataset in ("D4RL/pen/cloned-v2", "D4RL/pen/human-v2", "pen-expert-v1"):
        assert parse_dataset(dataset).domain == "adroit"
    assert parse_dataset("D4RL/antmaze/umaze-v1").domain == "antmaze"
    assert parse_dataset("rlservice/ant-v5/medium-v0").family == "ant"  # ant is not antmaze


# DMG Table 5: nu 0.1 (random, medium, medium-replay), 10 (medium-expert, expert), 0.5 on AntMaze.
@pytest.mark.parametrize("quality,nu", [("random", 0.1), ("medium-replay", 0.1), ("medium-expert", 10.0), ("expert", 10.0)])
def test_dmg_nu_by_quality(capsys, quality, nu):
    for dataset in mujoco_ids("walker2d", "walker2d", quality):
        row, v, _ = show(capsys, "dmg", dataset)
        assert row == f"walker2d-{quality}" and v["bc_weight"] == nu
        assert (v["dmg_lambda"], v["awr_temperature"], v["awr_max_weight"], v["expectile"]) == (0.25, 3.0, 3.0, 0.7)
        assert v["normalize_observations"] is True and v["finetune.utd"] == 1


@pytest.mark.parametrize("maze", ["umaze", "large-play"])
def test_dmg_antmaze(capsys, maze):
    row, v, _ = show(capsys, "dmg", f"D4RL/antmaze/{maze}-v1")
    assert row == f"antmaze-{maze}"
    assert (v["bc_weight"], v["awr_temperature"], v["awr_max_weight"], v["expectile"]) == (0.5, 10.0, 100.0, 0.9)
    assert v["normalize_observations"] is False and v["reward_shift"] == -1.0
    # official train_finetune.py: nu_end 0.005 absolute, exploration 0.1, discount 0.995 on antmaze-large
    assert (v["finetune.nu_end"], v["finetune.exploration_std"], v["finetune.offline_ratio"]) == (0.005, 0.1, "uniform")
    assert v.get("finetune.discount") == (0.995 if maze.startswith("large") else None)


def test_iql_td3bc_pani_general_values(capsys):
    _, v, src = show(capsys, "iql", "mujoco/hopper/medium-v0")
    assert (v["reward_normalization"], v["actor_lr_schedule"], v["expectile"], v["awr_temperature"]) == (
        "return_range", "cosine", 0.7, 3.0)
    _, v, _ = show(capsys, "iql", "D4RL/antmaze/umaze-v1")
    assert (v["reward_normalization"], v["reward_shift"], v["expectile"], v["awr_temperature"]) == ("none", -1.0, 0.9, 10.0)
    row, v, src = show(capsys, "td3bc", "mujoco/hopper/medium-v0")
    assert row is None and (v["bc_weight"], v["actor_q"], v["num_critics"], v["critic_layernorm"]) == (0.4, "first", 2, False)
    assert src["pa_alpha"] == "field default"
    _, v, _ = show(capsys, "pani", "mujoco/hopper/medium-v0")
    assert (v["actor_q"], v["noise_sigma"], v["actor_layernorm"], v["critic_layernorm"]) == ("first", 0.1, True, True)


def test_a_dataset_without_a_row_is_told_so(capsys):
    assert main(["presets", "show", "--preset", "pars", "--dataset", "mujoco/hopper/expert-v0"]) == 0
    out = capsys.readouterr().out
    assert "no row" in out.splitlines()[0] and "general values" in out
    row, v, _ = show(capsys, "pars", "mujoco/hopper/expert-v0")
    assert row is None and v["reward_scale"] == 10.0  # hopper's scale is per family, not per row


def test_eval_episodes_default_follows_the_domain():
    assert build_run_config("D4RL/antmaze/umaze-v1", "td3bc").train.eval_episodes == 100
    assert build_run_config("mujoco/hopper/medium-v0", "td3bc").train.eval_episodes == 10
    assert build_run_config("D4RL/antmaze/umaze-v1", "td3bc", overrides={"train.eval_episodes": 7}).train.eval_episodes == 7


def test_presets_list_and_bad_preset(capsys):
    assert main(["presets", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "hopper-medium" in rows["pars"]["PARS Table 11 (MuJoCo)"] and rows["td3bc"] == {}
    assert main(["presets", "show", "--preset", "bogus", "--dataset", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: preset='bogus'") and err.count("\n") == 1


def test_a_local_dataset_gives_its_action_dim(capsys, hopper_random_dataset):
    from rlservice.commands.presets import _local_action_dim

    assert _local_action_dim(hopper_random_dataset) == 3  # Hopper's action dim
    assert _local_action_dim("D4RL/antmaze/umaze-v1") is None  # not on this machine
    row, v, _ = show(capsys, "pars", hopper_random_dataset)
    assert row == "hopper-random" and (v["pa_alpha"], v["policy_noise"], v["target_subset"]) == (1e-2, 0.2, 2)


@pytest.mark.parametrize("dataset", ["rlservice/halfcheetah-v5/medium-v0", "mujoco/hopper/expert-v0"])
def test_pars_on_mujoco_says_what_it_needs(capsys, dataset):
    """Issue 23: no BC term on MuJoCo, published at 1M steps; the note says budget or a BC term, with the measured curve."""
    assert main(["presets", "show", "--preset", "pars", "--dataset", dataset]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  note: ")]
    assert any("1,000,000 steps" in n and "bc_weight" in n and "48.5 at 15k" in n and "bc_weight=0.4 gave 51.8" in n
               and "63.5 at 20k" in n for n in notes), notes
    assert main(["presets", "show", "--preset", "pars", "--dataset", "D4RL/antmaze/umaze-v1"]) == 0
    assert "1,000,000" not in capsys.readouterr().out  # AntMaze PARS has its BC term
