"""Job files: every shipped one validates; bad ones fail with one line naming field and value;
knobs are sampled only where they have an effect. No Ray here."""

from pathlib import Path

import optuna
import pytest
import yaml

from rlservice.config.tuning import confirmation_seeds, load_job, validate_job
from rlservice.errors import ConfigError
from rlservice.runtime.search import DefineByRun

TUNING = Path(__file__).resolve().parents[2] / "tuning"


def minimal(**changes):
    spec = {
        "name": "t",
        "dataset": {"id": "rlservice/hopper-v5/random-v0"},
        "preset": "pars",
        "search_space": {"pa_alpha": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "trials": 4,
        "steps": 1000,
        "eval_every": 100,
        "eval_episodes": 2,
        "mlflow": {"experiment": "e", "registered_model": "m"},
    }
    spec.update(changes)
    return spec


@pytest.mark.parametrize("path", sorted(TUNING.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_file_validates(path):
    job = load_job(path)
    assert job.trials >= 1 and job.search_space
    assert job.run_config().dataset.id == job.dataset.id


def test_shipped_files_cover_the_knobs_of_the_issue():
    searched = {knob for path in TUNING.glob("*.yaml") for knob in load_job(path).search_space}
    assert {"reward_scale", "pa_alpha", "noise_sigma", "noise_penalty", "dmg_lambda", "dmg_nu", "num_critics"} <= searched
    names = {p.name for p in TUNING.glob("*.yaml")}
    assert {"quickstart.yaml", "hopper-medium-pars.yaml", "hopper-medium-pani.yaml", "hopper-medium-dmg.yaml",
            "hopper-medium-combined.yaml"} <= names


def test_paper_scale_jobs_use_the_paper_budget():
    for name in ("pars", "pani", "dmg", "combined"):
        job = load_job(TUNING / f"hopper-medium-{name}.yaml")
        assert (job.dataset.id, job.steps, job.eval_every, job.eval_episodes) == ("rlservice/hopper-v5/medium-v0", 1_000_000, 5000, 10)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"search_space": {"pa_alfa": {"type": "uniform", "low": 0, "high": 1}}}, "search_space.pa_alfa: unknown knob"),
        ({"search_space": {}}, "search_space is empty"),
        ({"trials": 0}, "trials=0"),
        ({"steps": -5}, "steps=-5"),
        ({"search_space": {"dmg_lambda": {"type": "uniform", "low": 0.0, "high": 1.5}}}, "search_space.dmg_lambda allows 1.5"),
        ({"search_space": {"noise_sigma": {"type": "loguniform", "low": 0.0, "high": 1.0}}}, "positive"),
        ({"search_space": {"num_critics": {"type": "choice"}}}, "non-empty `values`"),
        ({"search_space": {"pa_alpha": {"type": "uniform", "low": 0, "high": 1, "condition": {"use_pa": True}}}},
         "refers to a knob that is not searched"),
        ({"fixed": {"pa_alpha": 0.01}}, "fixed.pa_alpha=0.01: the knob is also in search_space"),
        ({"fixed": {"steps": 10}}, "fixed.steps=10: set it with the job's `steps` field"),
        ({"fixed": {"bogus": 1}}, "unknown key 'bogus'"),
        ({"preset": "nope"}, "preset='nope' is unknown"),
        ({"scheduler": {"type": "asha", "grace_period": 5000}}, "scheduler.grace_period=5000"),
        ({"surprise": 1}, "surprise"),
        ({"seed": 999_999_999}, "reach the confirmation seeds"),
        ({"confirm": {"checkpoints": ["latest"]}}, "confirm.checkpoints"),
        ({"confirm": {"top_k": -1}}, "confirm.top_k=-1"),
    ],
)
def test_bad_job_files_fail_with_one_line(changes, message):
    with pytest.raises(ConfigError) as raised:
        validate_job(minimal(**changes))
    text = str(raised.value)
    assert message in text and "\n" not in text


def test_set_overrides_reach_nested_fields_and_dotted_knobs(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    job = load_job(path, ["trials=2", "scheduler.grace_period=200", "fixed.train.log_every=50", "fixed.critic_hidden=32"])
    assert job.trials == 2 and job.scheduler.grace_period == 200
    config = job.run_config({"pa_alpha": 1e-3})
    assert config.train.log_every == 50 and config.agent.critic_hidden == 32 and config.agent.pa_alpha == 1e-3


def sample(job, n):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = DefineByRun(job, job.run_config().agent.model_dump())
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        space(trial)
        study.tell(trial, 0.0)
        out.append(trial.params)
    return out


def test_switches_and_conditions_gate_their_knobs():
    job = load_job(TUNING / "hopper-medium-combined.yaml")
    configs = sample(job, 40)
    for params in configs:
        assert ("pa_alpha" in params) == params["use_pa"]
        assert ("noise_sigma" in params) == params["use_pani"]
        assert ("noise_penalty" in params) == params["use_pani"]  # refines noise_sigma: only where it is on
        assert ("dmg_lambda" in params) == params["use_dmg"]
        assert ("dmg_nu" in params) == params["use_dmg"]  # explicit condition
        agent = job.run_config(params).agent
        if not params["use_pa"]:
            assert agent.pa_alpha == 0.0
        if not params["use_pani"]:
            assert agent.noise_sigma == 0.0
        if params["use_dmg"]:
            assert agent.bc_weight == params["dmg_nu"] and agent.dmg_lambda == params["dmg_lambda"]
        else:
            assert agent.dmg_lambda == 1.0
    assert {p["use_pa"] for p in configs} == {True, False}


def test_a_refining_knob_is_not_sampled_while_its_method_is_off():
    off = validate_job(minimal(preset="td3bc", search_space={"noise_penalty": {"type": "uniform", "low": 0.1, "high": 2},
                                                             "reward_scale": {"type": "loguniform", "low": 1, "high": 10}}))
    assert all("noise_penalty" not in p for p in sample(off, 5))
    on = validate_job(minimal(preset="pani", search_space=off.model_dump()["search_space"]))
    assert all("noise_penalty" in p for p in sample(on, 5))


def test_the_define_by_run_space_pickles():
    """Ray saves the searcher with pickle to resume a job; a closure would lose the study."""
    import pickle

    job = load_job(TUNING / "quickstart.yaml")
    space = pickle.loads(pickle.dumps(DefineByRun(job, job.run_config().agent.model_dump())))
    assert space.order == job.search_order()


def test_trial_eval_episodes_follow_the_domain_unless_set(tmp_path):
    spec = minimal(dataset={"id": "D4RL/antmaze/umaze-v1"})
    del spec["eval_episodes"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_job(path).run_config({"pa_alpha": 1e-3}, action_dim=8).train.eval_episodes == 100
    path.write_text(yaml.safe_dump(minimal()))
    assert load_job(path).run_config({"pa_alpha": 1e-3}).train.eval_episodes == 2


def test_confirmation_defaults_and_seeds_disjoint_from_selection():
    job = validate_job(minimal())
    assert (job.confirm.top_k, job.confirm.checkpoints) == (3, ["best", "final"])
    assert job.confirm.episodes_for(job.dataset.id) == 50
    assert job.confirm.episodes_for("D4RL/antmaze/umaze-v1") == 100  # SPEC.md: AntMaze is evaluated on 100 episodes
    assert validate_job(minimal(confirm={"top_k": 0})).confirm.top_k == 0
    assert list(job.selection_seeds()) == [0, 1]
    assert not set(job.selection_seeds()) & set(confirmation_seeds(50))


# ---------------------------------------------------------------- PARS's budget warning (issue 23)
def _warnings(**changes):
    from rlservice.config.tuning import budget_warnings

    return budget_warnings(validate_job(minimal(**changes)))


def test_a_short_pars_job_on_mujoco_is_warned_once_naming_both_budgets():
    lines = _warnings(steps=50_000, scheduler={"type": "asha", "grace_period": 5000, "reduction_factor": 2})
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "steps=50,000" in lines[0] and "scheduler.grace_period=5,000" in lines[0] and "1,000,000" in lines[0]


def test_the_grace_period_alone_is_warned_about_at_the_full_budget():
    lines = _warnings(steps=1_000_000, eval_every=5000,
                      scheduler={"type": "asha", "grace_period": 100_000, "reduction_factor": 3})
    assert len(lines) == 1 and "steps=" not in lines[0] and "grace_period=100,000" in lines[0]
    assert _warnings(steps=1_000_000, eval_every=5000, scheduler={"type": "none"}) == []  # every trial runs it all


@pytest.mark.parametrize("changes", [
    {"preset": "dmg", "search_space": {"dmg_lambda": {"type": "uniform", "low": 0.1, "high": 0.9}}},
    {"fixed": {"bc_weight": 0.06}},  # PARS with a BC term
    {"search_space": {"pa_alpha": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                      "bc_weight": {"type": "uniform", "low": 0.0, "high": 0.1}}},
    {"dataset": {"id": "D4RL/antmaze/umaze-v1"}},  # AntMaze PARS has its BC term
])
def test_no_warning_where_pars_without_bc_on_mujoco_is_not_what_is_tuned(changes):
    assert _warnings(**changes) == []


def test_the_tune_command_says_the_warning_once_the_checks_have_passed(tmp_path, capsys, monkeypatch):
    import rlservice.jobs.tune as driver
    from rlservice.cli import main
    from rlservice.errors import ConfigError

    def run_job(job, name, *args, started, face, **kwargs):  # the driver, stopped right after its checks
        started(name)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(driver, "run_job", run_job)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(minimal(steps=2000, eval_every=500)))
    assert main(["tune", "run", str(job), "--name", "w1", "--verbose"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tuning job w1") and out[1].startswith("warning: steps=2,000 ")
