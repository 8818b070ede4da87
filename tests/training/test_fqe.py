"""Fitted Q Evaluation against the truth: the discounted return of the policy, measured by rolling
it out in the real env from the dataset's own start states."""

import json
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlservice.agent.fqe import fqe_target
from rlservice.agent.learner import Batch
from rlservice.agent.networks import Actor, CriticEnsemble
from rlservice.agent.normalizer import ObservationNormalizer
from rlservice.agent.policy import Policy
from rlservice.data.minari_io import Episode, load_offline_data, write_dataset
from rlservice.training.fqe import (
    episode_starts,
    fit_fqe,
    fqe_normalized,
    horizon_of,
    member_interval,
    ope_quality,
    steady_rate_factor,
)

GAMMA = 0.99
NOISE = 0.2  # exploration noise of the behaviour policy, in the env's action units (box [-1, 1])
EPISODES = 60  # ~1400 transitions: Hopper episodes of these policies last 15-30 steps
# Settings that converge in 1500 steps on these short episodes (measured: good 18.4 against a
# true 18.7, worse 9.8 against 9.6); the defaults (256 units, tau 0.005) need ~10x the steps.
FQE = {"steps": 1500, "hidden": 64, "tau": 0.05, "batch_size": 128}
TOLERANCE = 0.10  # relative, of the true discounted return


def linear_actor_policy(seed, head_scale=1.0):
    """A fixed deterministic policy: a seeded tiny actor network (head_scale > 1 saturates its actions)."""
    torch.manual_seed(seed)
    actor = Actor(1, 11, 3, 32, 2, False)
    with torch.no_grad():
        actor.net.head.weight.mul_(head_scale)
    return Policy(actor, ObservationNormalizer.identity(11), -np.ones(3), np.ones(3))


def rollouts(policy, noise, episodes=EPISODES):
    """Episodes from reset seeds 1000, 1001, ... (the same start states for every policy), and
    their mean discounted return."""
    env, rng = gym.make("Hopper-v5"), np.random.default_rng(0)
    out, discounted = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=1000 + i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            action = np.clip(policy.act(obs) + noise * rng.standard_normal(3), -1, 1).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            observations.append(obs), actions.append(action), rewards.append(reward)
            terms.append(terminated), truncs.append(truncated)
        rewards = np.array(rewards, np.float32)
        discounted.append(float((rewards * GAMMA ** np.arange(len(rewards))).sum()))
        out.append(Episode(np.array(observations, np.float32), np.array(actions), rewards, np.array(terms),
                           np.array(truncs)))
    env.close()
    return out, float(np.mean(discounted))


@pytest.fixture(scope="module")
def behaviour_data(_session_minari_root):
    good = linear_actor_policy(2)
    episodes, _ = rollouts(good, NOISE)
    write_dataset("test/fqe-hopper-v0", "Hopper-v5", episodes, ref_min_score=0.0, ref_max_score=100.0, overwrite=True)
    return load_offline_data("test/fqe-hopper-v0")


@pytest.mark.slow
def test_fqe_matches_the_policys_discounted_return_and_ranks_a_worse_policy_lower(behaviour_data):
    good, worse = linear_actor_policy(2), linear_actor_policy(2, head_scale=5.0)
    _, true_good = rollouts(good, 0.0)
    _, true_worse = rollouts(worse, 0.0)
    assert true_worse < 0.7 * true_good  # the premise: clearly worse (measured 9.6 against 18.7)

    est_good = fit_fqe(good, behaviour_data, discount=GAMMA, **FQE)
    est_worse = fit_fqe(worse, behaviour_data, discount=GAMMA, **FQE)
    assert est_good.start_states == EPISODES
    assert abs(est_good.fqe_return - true_good) < TOLERANCE * true_good, (est_good.fqe_return, true_good)
    assert abs(est_worse.fqe_return - true_worse) < 2 * TOLERANCE * true_worse, (est_worse.fqe_return, true_worse)
    assert est_worse.fqe_score < est_good.fqe_score
    summary = est_good.summary()
    low, high = summary["fqe_return_interval"]
    assert low <= summary["fqe_return"] <= high and len(summary["members"]) == 5


def test_fqe_target_bootstraps_from_the_policys_own_action_and_stops_at_terminals():
    torch.manual_seed(0)
    actor, critic = Actor(1, 3, 2, 8, 1, False), CriticEnsemble(2, 1, 3, 2, 8, 1, False)
    obs = torch.randn(2, 4, 3)
    batch = Batch(obs, torch.zeros(2, 4, 2), torch.arange(8.0).view(2, 4), torch.randn(2, 4, 3),
                  torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 2))
    y = fqe_target(critic, actor, batch, 0.9)
    for m in range(2):
        for b in range(4):
            s2 = batch.next_obs[m, b].view(1, 1, 3)
            q = critic(s2.expand(2, 1, 3), actor(s2).expand(2, 1, 2))[m, 0, 0]  # member m at (s', pi(s'))
            expected = batch.rewards[m, b] + 0.9 * (1 - batch.dones[m, b]) * q
            assert torch.isclose(y[m, b], expected, atol=1e-6)


def test_normalisation_by_the_steady_rate_discounted_references():
    # k = (1 - 0.99^1000) / (0.01 * 1000) = 0.0999957...
    k = (1 - 0.99**1000) / 10.0
    assert steady_rate_factor(0.99, 1000) == pytest.approx(k)
    # A discounted value of 50 is worth 50 / k undiscounted: with refs 0 and 1000, 100 * (50 / k) / 1000.
    assert fqe_normalized(50.0, 0.99, 1000, 0.0, 1000.0) == pytest.approx(5.0 / k)
    k20 = (1 - 0.9**20) / (0.1 * 20)
    assert fqe_normalized(2 * k20, 0.9, 20, 10.0, 30.0) == pytest.approx(100 * (2 - 10) / 20)
    assert steady_rate_factor(0.5, 1) == pytest.approx(1.0)  # one step: nothing is discounted


def test_episode_starts_and_horizon():
    data = SimpleNamespace(terminals=np.array([0, 1, 0, 0, 0, 0.0]), timeouts=np.array([0, 0, 0, 1, 0, 1.0]),
                           rewards=np.zeros(6), metadata={})
    assert episode_starts(data).tolist() == [0, 2, 4]
    assert horizon_of(data) == 2
    data.metadata = {"env_spec": json.dumps({"id": "X-v0", "max_episode_steps": 1000})}
    assert horizon_of(data) == 1000


def test_member_interval_is_the_student_t_interval():
    # mean 2, sample std 1 over 4 values -> half width t(0.975, 3) * 1 / 2 = 3.182446 / 2
    low, high = member_interval([1.0, 2.0, 2.0, 3.0])
    half = 3.182446305284263 * np.std([1, 2, 2, 3], ddof=1) / 2
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert member_interval([5.0]) == (5.0, 5.0)


def test_spearman_and_regret_against_a_hand_computation():
    # Five policies. Online ranks (1 = lowest): 10->1, 40->4, 20->2, 50->5, 30->3.
    online = [10.0, 40.0, 20.0, 50.0, 30.0]
    # FQE's scores are their own ranks: [1, 5, 3, 2, 4].
    fqe = [1.0, 5.0, 3.0, 2.0, 4.0]
    # d = online rank - fqe rank = [0, -1, -1, 3, -1]; sum d^2 = 12; rho = 1 - 6 * 12 / (5 * 24) = 0.4
    # FQE picks policy 1 (fqe 5), whose online score is 40; the online best is 50: regret 10.
    quality = ope_quality(online, fqe)
    assert quality == {"spearman": pytest.approx(0.4), "regret": pytest.approx(10.0), "policies": 5}
    # Ties take their mean rank: fqe [1, 2, 2] -> ranks [1, 2.5, 2.5]; online ranks [1, 2, 3];
    # Pearson of the ranks: deviations [-1, 0, 1] and [-1, .5, .5]: 1.5 / sqrt(2 * 1.5) = sqrt(3) / 2.
    assert ope_quality([1.0, 2.0, 3.0], [1.0, 2.0, 2.0])["spearman"] == pytest.approx(3**0.5 / 2)
    assert ope_quality([3.0, 1.0], [0.0, 1.0]) == {"spearman": pytest.approx(-1.0), "regret": 2.0, "policies": 2}
