"""The FLOP counter of rlservice.agent.flops: against a hand count, and against the matmuls a
learner step really runs (torch's FlopCounterMode); plus a smoke run of benchmarks/learner.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from batches import random_batch
from torch.utils.flop_counter import FlopCounterMode

from rlservice.agent.flops import cycle_matmuls, step_flops
from rlservice.agent.learner import Learner
from rlservice.agent.matmul import onednn_available
from rlservice.config.run import AgentConfig

ROOT = Path(__file__).resolve().parents[2]


def test_hand_count_of_a_tiny_td3bc_step():
    cfg = AgentConfig(num_critics=1, target_subset=1, critic_hidden=4, critic_layers=1, actor_hidden=4,
                      actor_layers=1, critic_layernorm=False, bc_weight=0.4, policy_freq=1, actor_q_subset=1)
    obs, act, batch = 3, 2, 2
    # A Linear [rows, i] -> [rows, o] costs 2 * rows * i * o. Actor 3 -> 4 -> 2; critic (3+2) -> 4 -> 1.
    actor_fwd = 2 * 2 * (3 * 4 + 4 * 2)  # 80
    critic_fwd = 2 * 2 * (5 * 4 + 4 * 1)  # 96
    target = actor_fwd + critic_fwd  # target actor on s', then the target critic on (s', a~')
    critic = (
        critic_fwd  # forward on (s, a)
        + critic_fwd  # weight gradients of both layers
        + 2 * 2 * 4 * 1  # input gradient of the head only: nothing below the first layer needs one
    )
    actor = (
        actor_fwd  # pi(s)
        + critic_fwd  # Q(s, pi(s))
        + critic_fwd  # input gradients through both critic layers (its weights are frozen: no weight gradients)
        + actor_fwd  # actor weight gradients
        + 2 * 2 * 4 * 2  # actor input gradient of the head only
    )
    assert (target, critic, actor) == (176, 208, 384)
    assert step_flops(cfg, obs, act, batch) == target + critic + actor == 768


@pytest.mark.parametrize("knobs,seeds", [
    (dict(), 1),  # TD3+BC-like: 2 critics
    (dict(actor_q="first", critic_layernorm=False), 2),  # TD3+BC: the actor on Q_1 only
    (dict(num_critics=5, target_subset=2, pa_alpha=1e-3, noise_sigma=0.1, critic_layernorm=True), 2),  # PARS + PANI
    (dict(num_critics=3, pa_alpha=1e-3, pa_samples=3), 2),  # PA on 3 of the 8 states
    (dict(dmg_lambda=0.25, awr_temperature=3.0, awr_max_weight=3.0, bc_weight=0.1), 1),  # DMG
    (dict(algorithm="iql", dmg_lambda=0.0, awr_temperature=3.0, policy_freq=1), 1),  # IQL
    (dict(num_critics=4, actor_q="subset_mean", actor_q_subset=2, critic_layers=3, policy_freq=3), 2),
])
@pytest.mark.parametrize("kernel", ["aten", "onednn"])
def test_counter_matches_the_matmuls_a_step_runs(knobs, seeds, kernel):
    cfg = AgentConfig(**{"critic_hidden": 16, "actor_hidden": 12, **knobs})
    obs, act, batch = 5, 3, 8
    learner = Learner(cfg, obs, act, reward_min=-1.0, seeds=seeds, matmul=kernel)
    b = random_batch(seeds, batch, obs, act, done_prob=0.0)
    with FlopCounterMode(display=False) as counter:
        for _ in range(cfg.policy_freq):  # one full cycle: critic steps and one actor step
            learner.update(b)
    # The input gradient of a single-output head runs as a broadcast multiply, which torch's
    # counter (matmuls only) does not see; every other matmul must be there, and no other.
    cycle = cycle_matmuls(cfg, obs, act, batch, seeds)
    unseen = sum(m.flops for m in cycle if m.kind == "input_grad" and m.out_features == 1)
    assert 0 < unseen < counter.get_total_flops() / 50
    assert counter.get_total_flops() + unseen == sum(m.flops for m in cycle)
    assert sum(m.flops for m in cycle) == cfg.policy_freq * step_flops(cfg, obs, act, batch, seeds)


def test_benchmark_prints_json_with_steps_and_a_flop_ratio():
    out = subprocess.run(
        [sys.executable, "benchmarks/learner.py", "--steps", "20", "--json", "--repeats", "1", "--warmup", "5",
         "--buffer-size", "20000", "--peak-size", "1024"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    result = json.loads(out)
    assert result["steps_per_second"] > 0
    assert 0 < result["peak_ratio"] <= 1.5
    assert result["flops_per_step"] > 0 and result["threads"] >= 1
    # Every kernel of the build is measured, at the square size and the ensemble's layer; the best is the peak.
    by_kernel = result["peak_flops_by_kernel"]
    assert set(by_kernel) == ({"aten", "onednn"} if onednn_available() else {"aten"})
    assert set(result["ensemble_layer_flops_by_kernel"]) == set(by_kernel)
    assert result["peak_flops"] == max(by_kernel.values()) and min(by_kernel.values()) > 0
    assert result["matmul"] in by_kernel
    assert result["matmul_seconds_per_step"] > 0
    assert result["matmul_seconds_per_step"] + result["other_seconds_per_step"] == pytest.approx(1 / result["steps_per_second"])


def test_paired_median_compares_each_repeat_with_its_neighbour(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from learner import paired_median

    # The machine's speed changes between repeats: the best repeats (10 against 6) say 1.67x,
    # the neighbouring pairs say 2x, 1x and 2x.
    assert paired_median([10.0, 6.0, 6.0], [5.0, 6.0, 3.0]) == 2.0
    assert paired_median([3.0, 1.0, 4.0, 8.0], [1.0, 1.0, 1.0, 2.0]) == 3.5
