"""Config resolution and one-line refusals of bad values."""

import pytest

from rlservice.config.presets import PRESETS, preset_values
from rlservice.config.run import build_run_config, parse_overrides
from rlservice.errors import ConfigError

HOPPER = "rlservice/hopper-v5/medium-v0"


def test_resolution_order_defaults_preset_yaml_overrides():
    spec = {"agent": {"reward_scale": 3.0, "num_critics": 12}}
    cfg = build_run_config(HOPPER, "pars", spec, {"reward_scale": 7.0}).agent
    assert cfg.reward_scale == 7.0  # --set beats YAML
    assert cfg.num_critics == 12  # YAML beats preset (10)
    assert cfg.pa_alpha == 1e-2 and cfg.critic_layernorm  # preset beats defaults
    assert cfg.discount == 0.99  # default


def test_presets_follow_spec_table():
    td3bc = build_run_config(HOPPER, "td3bc").agent
    assert (td3bc.num_critics, td3bc.critic_layernorm, td3bc.bc_weight) == (2, False, 0.4)
    pars = build_run_config(HOPPER, "pars").agent
    assert (pars.num_critics, pars.bc_weight, pars.pa_distance, pars.reward_scale) == (10, 0.0, 100.0, 10.0)
    pani = build_run_config(HOPPER, "pani").agent
    assert pani.actor_layernorm and pani.critic_layernorm and pani.noise_kind == "hybrid" and pani.noise_sigma == 0.1
    assert pani.bc_weight == 0.4
    dmg = build_run_config(HOPPER, "dmg").agent
    assert (dmg.dmg_lambda, dmg.bc_weight, dmg.awr_temperature, dmg.awr_max_weight) == (0.25, 0.1, 3.0, 3.0)
    assert dmg.actor_lr_schedule == "cosine" and not dmg.critic_layernorm and dmg.has_value_net
    iql = build_run_config(HOPPER, "iql").agent
    assert iql.algorithm == "iql" and iql.dmg_lambda == 0.0 and iql.expectile == 0.7 and iql.has_value_net
    assert not td3bc.has_value_net


def test_antmaze_presets_use_antmaze_values():
    pars = preset_values("pars", "D4RL/antmaze/medium-play-v1", action_dim=8)
    assert pars["num_critics"] == 4 and pars["pa_distance"] == 1000.0 and pars["bc_weight"] == pytest.approx(0.08)
    dmg = build_run_config("D4RL/antmaze/umaze-v1", "dmg").agent
    assert (dmg.expectile, dmg.awr_temperature, dmg.awr_max_weight, dmg.bc_weight) == (0.9, 10.0, 100.0, 0.5)
    assert dmg.reward_shift == -1.0  # AntMaze reward shift for IQL/DMG
    assert build_run_config("D4RL/antmaze/umaze-v1", "td3bc").agent.reward_shift == 0.0


def test_combination_is_a_valid_config():
    cfg = build_run_config(HOPPER, "dmg", overrides={"pa_alpha": 0.001, "reward_scale": 10, "noise_sigma": 0.1}).agent
    assert cfg.dmg_lambda == 0.25 and cfg.pa_alpha == 0.001 and cfg.noise_sigma == 0.1


def test_overrides_parse_yaml_scalars_and_dotted_keys():
    assert parse_overrides(["pa_alpha=1e-3", "critic_layernorm=false", "train.steps=10"]) == {
        "pa_alpha": 1e-3,
        "critic_layernorm": False,
        "train.steps": 10,
    }
    assert build_run_config(HOPPER, "td3bc", overrides={"train.steps": 10, "batch_size": 32}).train.batch_size == 32


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"noise_sigma": -0.1}, "noise_sigma=-0.1"),
        ({"pa_alpha": -1}, "pa_alpha=-1"),
        ({"dmg_lambda": 1.5}, "dmg_lambda=1.5"),
        ({"expectile": 1.0}, "expectile=1.0"),
        ({"expectile": 0.0}, "expectile=0.0"),
        ({"nonsense": 3}, "unknown key 'nonsense'"),
        ({"train.nonsense": 3}, "unknown key 'train.nonsense'"),
        ({"num_critics": 1}, "target_subset=2 exceeds num_critics=1"),
        ({"reward_scale": float("nan")}, "reward_scale"),
        ({"noise_kind": "cauchy"}, "noise_kind='cauchy'"),
        ({"train.steps": 0}, "train.steps=0"),
    ],
)
def test_bad_values_fail_with_field_and_value(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_run_config(HOPPER, "td3bc", overrides=overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset_and_missing_dataset():
    with pytest.raises(ConfigError, match="preset='bogus' is unknown"):
        build_run_config(HOPPER, "bogus")
    with pytest.raises(ConfigError, match="dataset.id is missing"):
        build_run_config(None, "td3bc")
    with pytest.raises(ConfigError, match="unknown key 'agnet'"):
        build_run_config(HOPPER, "td3bc", yaml_spec={"agnet": {}})
    assert set(PRESETS) == {"td3bc", "pars", "pani", "dmg", "iql"}


@pytest.mark.parametrize("uri, problem", [
    ("s3://AKIAXXXX:secret@bucket/hopper", "credentials and options do not belong in the URI"),
    ("s3://bucket/hopper?access_key=AKIAXXXX", "credentials and options do not belong in the URI"),
    ("/mnt/datasets/hopper", "expected a URI"),
])
def test_a_dataset_uri_names_storage_never_credentials(uri, problem):
    with pytest.raises(ConfigError, match=problem) as raised:
        build_run_config("mujoco/hopper/medium-v0", None, None, {"dataset.uri": uri})
    assert "\n" not in str(raised.value)
    ok = build_run_config("mujoco/hopper/medium-v0", None, None, {"dataset.uri": "s3://bucket/datasets/hopper-medium-v0"})
    assert ok.dataset.uri == "s3://bucket/datasets/hopper-medium-v0"
