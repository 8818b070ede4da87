"""benchmarks/pars_curve.py on the tiny Hopper fixture and a budget of a few steps (the real curve
is an experiment, not a test)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
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
    assert table["bc_td3bc"] == {"agent.bc_weight": pytest.approx(0.4)}  # TD3+BC: -2.5 Q/mean|Q| + mse, over 2.5
    assert table["no_layernorm"] == {"agent.critic_layernorm": False}
    assert table["no_pa"] == {"agent.pa_alpha": 0.0}
    assert table["target_subset_10"] == {"agent.target_subset": 10}
    assert table["actor_mean"] == {"agent.actor_q": "subset_mean", "agent.actor_q_subset": 10}
    assert table["reward_scale_1"]["agent.reward_scale"] == 1.0
    assert table["fast_targets"] == {"agent.tau": 0.02}  # 4x the preset's 0.005


@pytest.mark.slow
def test_pars_curve_logs_every_evaluation_to_mlflow_and_plots(hopper_random_dataset, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--dataset", hopper_random_dataset, "--seeds", "2", "--seed", "3", "--steps", "4", "--eval-every", "2",
            "--eval-episodes", "1", "--ablation", "no_pa", "--tracking-uri", uri, "--out", str(tmp_path),
            "--no-progress"]
    assert pars_curve.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["ablation"] for r in out["results"]] == ["preset", "no_pa"]
    for r in out["results"]:
        assert r["status"] == "completed" and [c["step"] for c in r["curve"]] == [2, 4]
        assert (r["seeds"], r["first_seed"]) == (2, 3)
        assert all(len(c["episode_scores"]) == 2 and len(c["episode_scores"][0]) == 1 for c in r["curve"])
        assert all(KEYS <= set(c) for c in r["curve"])
        for c in r["curve"]:  # every score with the interval and what it rests on: 2 seeds x 1 episode
            assert c["score_ci_low"] <= c["normalized_score"] <= c["score_ci_high"]
            assert (c["score_seeds"], c["score_episodes"]) == (2, 1)
        history = mlflow.MlflowClient(uri).get_metric_history(r["run_id"], "action_sensitivity")
        assert sorted(m.step for m in history) == [2, 4]
    assert (tmp_path / "pars_curve.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "pars_curve.json").read_text()) == out  # the file ends as what is printed
    assert pars_curve.main([*args, "--ablation", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown ablation 'bogus'") and err.count("\n") == 1


def _printed(dataset: str, name: str, scores: list[float], status: str = "completed") -> str:
    """What a pars_curve run prints last, with a made-up curve: 2 seeds x 10 episodes per evaluation."""
    curve = [{"step": 5000 * (i + 1), "normalized_score": s, "score_ci_low": s - 1, "score_ci_high": s + 2,
              "score_seeds": 2, "score_episodes": 10, "action_sensitivity": 0.0234, "ensemble_spread": 1.5,
              "policy_distance": 1.25, "ood_overestimation": 0.5, "dormant_ratio": 0.25, "q_data_mean": 300.4}
             for i, s in enumerate(scores)]
    return "progress noise\n" + json.dumps({"dataset": dataset, "results": [
        {"ablation": name, "status": status, "seeds": 2, "curve": curve}]})


def test_merge_puts_runs_from_separate_processes_in_one_table_and_figure(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(_printed("d/x/medium-v0", "preset", [2.5, 21.74]))
    b.write_text(_printed("d/x/medium-v0", "bc", [30.0]))
    assert pars_curve.main(["--merge", str(a), "--merge", str(b), "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [
        "| preset | 5,000 | 2.5 [1.5, 4.5] (2 x 10) | 0.023 | 1.50 | 1.25 | 0.50 | 0.25 | 300 |",
        "| preset | 10,000 | 21.7 [20.7, 23.7] (2 x 10) | 0.023 | 1.50 | 1.25 | 0.50 | 0.25 | 300 |",
        "| bc | 5,000 | 30.0 [29.0, 32.0] (2 x 10) | 0.023 | 1.50 | 1.25 | 0.50 | 0.25 | 300 |"]
    assert (tmp_path / "pars_curve.png").stat().st_size > 10_000


def test_merge_refuses_runs_on_different_datasets_and_files_that_are_not_a_run(tmp_path, capsys):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(_printed("d/x/medium-v0", "preset", [1.0]))
    b.write_text(_printed("d/y/medium-v0", "bc", [1.0]))
    c.write_text("Traceback (most recent call last):\n")
    train_json = tmp_path / "train.json"  # what `rlservice train --json` prints: a run, but not a curve
    train_json.write_text(json.dumps({"dataset": "d/x/medium-v0", "preset": "td3bc", "normalized_score": 45.5}))
    assert pars_curve.main(["--merge", str(a), "--merge", str(b), "--out", str(tmp_path)]) == 2
    assert pars_curve.main(["--merge", str(c), "--out", str(tmp_path)]) == 2
    assert pars_curve.main(["--merge", str(train_json), "--out", str(tmp_path)]) == 2
    assert pars_curve.main(["--out", str(tmp_path)]) == 2  # neither --dataset nor --merge
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: --merge: runs on different datasets")
    assert err[1].startswith(f"error: --merge {c}: not the JSON")
    assert err[2].startswith(f"error: --merge {train_json}: not the JSON")
    assert err[3].startswith("error: --dataset is required") and len(err) == 4


@pytest.fixture
def launch():
    """launch(args, err) starts pars_curve.py in its own process; any still running when the test
    ends (it failed before stopping them) is killed."""
    procs = []

    def start(args: list[str], err: Path) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "pars_curve.py"), *args],
                                      stdout=subprocess.DEVNULL, stderr=err.open("w")))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_rows(proc: subprocess.Popen, saved: Path, rows: int) -> None:
    deadline = time.monotonic() + 240
    while True:
        results = json.loads(saved.read_text())["results"] if saved.exists() else []
        if results and len(results[-1]["curve"]) >= rows:
            return
        assert proc.poll() is None and time.monotonic() < deadline, f"no {rows} evaluations were saved"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_stopped_then_killed_run_resumes_to_the_curve_it_would_have_had(hopper_random_dataset, tmp_path, capsys,
                                                                          launch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--dataset", hopper_random_dataset, "--seeds", "1", "--eval-every", "2", "--eval-episodes", "1",
              "--ablation", "no_pa", "--tracking-uri", uri, "--no-progress"]
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    stopped.mkdir(), whole.mkdir()
    saved = stopped / "pars_curve.json"
    endless = [*common, "--steps", "1000000", "--out", str(stopped)]

    proc = launch(endless, tmp_path / "term.err")  # SIGTERM: stops at a step, starts no other configuration
    _wait_for_rows(proc, saved, 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    assert "run the same command with --resume" in (tmp_path / "term.err").read_text()
    (first,) = json.loads(saved.read_text())["results"]
    assert first["status"] == "interrupted" and first["ablation"] == "preset"

    proc = launch([*endless, "--resume"], tmp_path / "kill.err")  # SIGKILL: nothing but the saved files
    _wait_for_rows(proc, saved, len(first["curve"]) + 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (second,) = json.loads(saved.read_text())["results"]
    assert second["status"] == "running" and second["run_id"] != first["run_id"]
    assert second["steps"] == second["curve"][-1]["step"] > first["curve"][-1]["step"]
    assert pars_curve.main(["--merge", str(saved), "--out", str(tmp_path)]) == 0  # the curve so far, marked
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| preset")]
    assert len(rows) == len(second["curve"]) and all(row.startswith("| preset (running) | ") for row in rows)
    target = second["curve"][-1]["step"] + 2

    budget = [*common, "--steps", str(target)]
    assert pars_curve.main([*budget, "--out", str(stopped), "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pars_curve.main([*budget, "--out", str(whole)]) == 0
    uninterrupted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["ablation"] for r in resumed["results"]] == ["preset", "no_pa"]
    for r, u in zip(resumed["results"], uninterrupted["results"], strict=True):
        assert r["status"] == u["status"] == "completed" and r["steps"] == target
        assert [c["step"] for c in r["curve"]] == list(range(2, target + 1, 2))
        assert r["curve"] == u["curve"]  # every score, interval, episode and diagnostic, exactly

    store = mlflow.MlflowClient(uri)
    third = resumed["results"][0]
    assert store.get_run(third["run_id"]).data.tags["resumed_from"] == second["run_id"]
    killed_run = store.get_run(second["run_id"])
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["continued_in"] == third["run_id"]
    assert store.get_run(first["run_id"]).data.tags["continued_in"] == second["run_id"]
    history = store.get_metric_history(third["run_id"], "action_sensitivity")
    assert sorted(m.step for m in history) == list(range(2, target + 1, 2))  # the new run holds the whole curve

    assert pars_curve.main([*budget, "--out", str(stopped), "--resume"]) == 0  # nothing left to train
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"] == resumed["results"]
    assert pars_curve.main([*budget, "--seed", "1", "--out", str(stopped), "--resume", "--steps", str(target + 2)]) == 2
    (tmp_path / "pars_curve.json").write_text("{not json")
    assert pars_curve.main([*budget, "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: --resume: ") and "other settings" in err[0]
    assert err[1].startswith(f"error: --resume: {tmp_path / 'pars_curve.json'} is not a saved") and len(err) == 2
    assert pars_curve.saved_results(whole / "nothing.json", hopper_random_dataset, ["preset"]) == {}  # a first start


@pytest.mark.slow
def test_a_run_killed_before_its_first_evaluation_starts_afresh_and_ends_the_old_run(hopper_random_dataset, tmp_path,
                                                                                     capsys, launch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--dataset", hopper_random_dataset, "--seeds", "1", "--eval-episodes", "1", "--tracking-uri", uri,
              "--no-progress", "--out", str(tmp_path)]
    saved = tmp_path / "pars_curve.json"
    proc = launch([*common, "--steps", "1000000", "--eval-every", "1000000"], tmp_path / "kill.err")
    _wait_for_rows(proc, saved, 0)  # saved as soon as its MLflow run exists
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed,) = json.loads(saved.read_text())["results"]
    assert (killed["status"], killed["steps"], killed["curve"]) == ("running", 0, [])

    assert pars_curve.main([*common, "--steps", "4", "--eval-every", "2", "--resume"]) == 0
    (fresh,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert fresh["status"] == "completed" and [c["step"] for c in fresh["curve"]] == [2, 4]
    store = mlflow.MlflowClient(uri)
    old = store.get_run(killed["run_id"])
    assert (old.info.status, old.data.tags["status"], old.data.tags["continued_in"]) == ("KILLED", "interrupted",
                                                                                         fresh["run_id"])
    assert "resumed_from" not in store.get_run(fresh["run_id"]).data.tags  # nothing was carried over


def _seed_run(first_seed: int, episode_scores: list, spread: float, status: str = "completed") -> str:
    """What a pars_curve run of the preset on seeds first_seed.. prints: per step, [seeds][episodes]."""
    curve = [{"step": 5000 * (i + 1), "normalized_score": -1.0, "score_ci_low": -1.0, "score_ci_high": -1.0,
              "score_seeds": len(scores), "score_episodes": len(scores[0]), "action_sensitivity": 0.02,
              "ensemble_spread": spread, "policy_distance": 1.5, "ood_overestimation": 0.2, "dormant_ratio": 0.5,
              "q_data_mean": 100.0 * spread, "q_pi_mean": 90.0, "episode_scores": scores}
             for i, scores in enumerate(episode_scores)]
    return json.dumps({"dataset": "d/x/medium-v0", "results": [
        {"ablation": "preset", "status": status, "seeds": len(episode_scores[0]), "first_seed": first_seed,
         "curve": curve}]})


def test_merge_pools_one_configuration_run_as_one_process_per_seed(tmp_path, capsys):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(_seed_run(0, [[[10.0, 20.0]], [[30.0, 50.0]]], spread=1.0))  # seed 0, to 10k
    b.write_text(_seed_run(1, [[[0.0, 0.0], [40.0, 40.0]]], spread=2.5, status="running"))  # seeds 1-2, killed at 5k
    assert pars_curve.main(["--merge", str(a), "--merge", str(b), "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| preset")]
    assert len(rows) == 1  # only the step every run reached
    cells = [x.strip() for x in rows[0].split("|")[1:-1]]
    # per-seed means 15, 0, 40: mean 18.3 over 3 seeds x 2 episodes; spread (1.0 + 2 x 2.5) / 3 seeds = 2.00
    assert cells[:2] == ["preset (running)", "5,000"]
    mean, low, high, rests = re.fullmatch(r"(\S+) \[(\S+), (\S+)\] \((3 x 2)\)", cells[2]).groups()
    assert float(mean) == 18.3 and float(low) < 18.3 < float(high) and rests == "3 x 2"
    assert cells[4] == "2.00" and cells[8] == "200"  # Q(s, a_data): (100 + 2 x 250) / 3
    pooled = pars_curve.pool_seeds([json.loads(a.read_text())["results"][0], json.loads(b.read_text())["results"][0]])
    (row,) = pooled["curve"]
    assert row["normalized_score_std"] == pytest.approx(((15 - 55 / 3) ** 2 + (55 / 3) ** 2 + (40 - 55 / 3) ** 2) ** 0.5
                                                        / 3 ** 0.5)
    assert (pooled["seeds"], pooled["first_seed"], pooled["steps"]) == (3, 0, 5000)

    c.write_text(_seed_run(0, [[[1.0, 2.0]]], spread=1.0))  # seed 0 again
    assert pars_curve.main(["--merge", str(a), "--merge", str(c), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --merge: 'preset' is in several runs with the same seeds") and err.count("\n") == 1
