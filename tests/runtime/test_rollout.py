import time

import numpy as np
import pytest
import ray
import torch

from rlservice.agent.learner import Learner
from rlservice.agent.networks import Actor
from rlservice.agent.normalizer import ObservationNormalizer
from rlservice.agent.policy import Policy
from rlservice.config.run import AgentConfig
from rlservice.data.online_buffer import OnlineReplayBuffer
from rlservice.runtime.rollout import RolloutPool, RolloutWorker, to_unit

ENV = "InvertedPendulum-v5"  # 4-d observations, action box [-3, 3]: normalising is not the identity
HIDDEN = 32
SHAPE = (HIDDEN, 2, False)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def random_policy(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    return Policy(Actor(1, 4, 1, HIDDEN, 2, False), ObservationNormalizer.identity(4), np.array([-3.0]), np.array([3.0]))


def test_worker_returns_consistent_transitions_and_follows_its_policy():
    policy = random_policy()
    worker = RolloutWorker.remote(ENV, 7, 3, 0.0, 40, SHAPE)  # no exploration noise: actions are the policy's
    worker.set_policy.remote(policy.state_dict())
    first, second = ray.get([worker.collect.remote(150), worker.collect.remote(150)])
    t = first.transitions
    n = 150
    assert t.obs.shape == t.next_obs.shape == (n, 4) and t.actions.shape == (n, 1)
    assert t.rewards.shape == t.terminated.shape == t.truncated.shape == t.episode_start.shape == t.source.shape == (n,)
    assert t.obs.dtype == t.actions.dtype == t.rewards.dtype == np.float32
    assert np.abs(t.actions).max() <= 1.0 and (t.source == 3).all()

    ends = t.terminated | t.truncated
    assert ends.sum() >= 2  # an untrained pendulum falls within a few dozen steps
    assert t.episode_start[0] and (t.episode_start[1:] == ends[:-1]).all()
    inside = np.flatnonzero(~ends[:-1])
    np.testing.assert_array_equal(t.next_obs[inside], t.obs[inside + 1])
    assert len(first.episode_returns) == ends.sum()
    np.testing.assert_allclose(first.episode_returns.sum(), t.rewards[: np.flatnonzero(ends)[-1] + 1].sum(), rtol=1e-5)

    expected = to_unit(policy.act(t.obs), policy.action_low, policy.action_high)
    assert not np.allclose(t.actions[:40], expected[:40], atol=1e-4)  # the random start
    np.testing.assert_allclose(t.actions[40:], expected[40:], atol=1e-5)
    # The next batch goes on where the first stopped: in the same episode, unless that one had just ended.
    assert second.transitions.episode_start[0] == ends[-1]
    if not ends[-1]:
        np.testing.assert_array_equal(second.transitions.obs[0], t.next_obs[-1])
    ray.kill(worker)


def test_exploration_noise_stays_in_the_box():
    worker = RolloutWorker.remote(ENV, 1, 0, 0.5, 0, SHAPE)
    policy = random_policy()
    worker.set_policy.remote(policy.state_dict())
    t = ray.get(worker.collect.remote(300)).transitions
    deterministic = to_unit(policy.act(t.obs), policy.action_low, policy.action_high)
    noise = t.actions - deterministic
    assert np.abs(t.actions).max() <= 1.0
    assert 0.3 < noise[np.abs(t.actions[:, 0]) < 1.0].std() < 0.6
    ray.kill(worker)


def test_pool_collects_from_every_worker_while_the_learner_keeps_stepping():
    pool = RolloutPool(ENV, 2, seed=0, exploration_std=0.1, start_steps=0, actor_shape=SHAPE, num_cpus=0.5)
    agent = AgentConfig(critic_layernorm=False, bc_weight=0.0, actor_hidden=HIDDEN, critic_hidden=HIDDEN,
                        normalize_observations=False)
    learner = Learner(agent, 4, 1, reward_min=0.0)
    buffer = OnlineReplayBuffer(4, 1, capacity=10_000)
    pool.set_policy(Policy.from_learner(learner, 0, ObservationNormalizer.identity(4), [-3.0], [3.0]).state_dict())
    assert pool.submit(200) and pool.submit(200) and not pool.submit(200)  # two workers, both busy now
    for rollout in pool.wait():  # something to train on
        buffer.add(rollout.transitions)

    # A worker whose process starts late may miss the first rounds: go on until both have delivered.
    updates_in_flight, rounds, sources, started = 0, 0, set(), time.monotonic()
    while (rounds < 4 or len(sources) < 2) and time.monotonic() - started < 120:
        tick = time.perf_counter()
        finished = pool.poll()
        assert time.perf_counter() - tick < 0.5  # polling never waits for a rollout
        for rollout in finished:
            buffer.add(rollout.transitions)
            sources.update(rollout.transitions.source.tolist())
            rounds += 1
        while pool.submit(500):
            pass
        learner.update(buffer.sample(learner.generator, 1, 64))
        updates_in_flight += pool.in_flight > 0
    pool.close()

    assert rounds >= 4 and sources == {0, 1}
    assert updates_in_flight >= 20, updates_in_flight
