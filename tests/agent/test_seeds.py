"""Vectorised seeds: K agents in one learner with stacked weights must behave exactly like K
separate one-seed learners, each with its own initial weights and its own batches, whether
they run all at once or in groups."""

import numpy as np
import pytest
import torch
from batches import random_batch

from rlservice.agent import pani, pars
from rlservice.agent.learner import Batch, Learner, seed_group_size
from rlservice.config.run import AgentConfig, TrainConfig
from rlservice.data.buffer import ReplayBuffer

OBS, ACT, B, K = 3, 2, 16, 3


def config(**knobs) -> AgentConfig:
    """Every loss on (V, DMG target and advantage weights, PA, PANI, cosine actor lr), small nets."""
    base = dict(critic_hidden=8, actor_hidden=8, num_critics=3, target_subset=3, dmg_lambda=0.25, pa_alpha=1e-3,
                noise_sigma=0.1, reward_scale=10.0, awr_temperature=3.0, awr_max_weight=3.0,
                actor_lr_schedule="cosine", actor_layernorm=True)
    return AgentConfig(**{**base, **knobs})


def seed_slice(t: torch.Tensor, k: int, seeds: int) -> torch.Tensor:
    """Seed k's part of a stacked tensor: the leading dim is seeds * members, seed-major."""
    return t.unflatten(0, (seeds, -1))[k]


def make_batch(seeds: int, seed: int):
    return random_batch(seeds, B, OBS, ACT, seed)


def test_each_seed_starts_from_its_own_weights():
    lrn = Learner(config(), OBS, ACT, reward_min=-1.0, seeds=K)
    for name, net in lrn.networks().items():
        for pname, p in net.named_parameters():
            if pname.startswith("net.norms"):
                continue  # LayerNorm starts at (1, 0) everywhere, as torch's does
            slices = [seed_slice(p, k, K) for k in range(K)]
            assert all(not torch.equal(slices[i], slices[j]) for i in range(K) for j in range(i + 1, K)), (name, pname)
    torch.testing.assert_close(lrn.critic_target.state_dict(), lrn.critic.state_dict())


def test_each_seed_draws_its_own_batch():
    n = 10_000
    rng = np.random.default_rng(0)
    obs = np.arange(n, dtype=np.float32)[:, None].repeat(OBS, 1)  # row i holds i: the index is visible
    buffer = ReplayBuffer(obs, rng.uniform(-1, 1, (n, ACT)), rng.standard_normal(n), obs, np.zeros(n))
    lrn = Learner(config(), OBS, ACT, reward_min=-1.0, seeds=K)
    batch = buffer.sample(lrn.generator, K, B)
    rows = batch.obs[..., 0]  # [K, B] sampled indices
    assert rows.shape == (K, B)
    assert all(not torch.equal(rows[i], rows[j]) for i in range(K) for j in range(i + 1, K))
    torch.testing.assert_close(batch.next_obs, batch.obs)  # the fields of a transition stay together


@pytest.fixture
def deterministic_noise(monkeypatch):
    """PANI's and PARS's random actions replaced by functions of the data actions, so that a
    K-seed learner and a one-seed learner see the same noisy and infeasible actions."""
    monkeypatch.setattr(pani, "noisy_actions", lambda a, *args: (a + 0.3 * torch.sin(7.0 * a)).clamp(-1, 1))
    monkeypatch.setattr(pars, "infeasible_actions", lambda shape, *args: torch.full(shape, 150.0))


@pytest.mark.parametrize("knobs", [{}, {"critic_layernorm": False, "dmg_lambda": 1.0, "awr_temperature": 0.0}])
def test_seed_k_of_a_vectorised_learner_equals_a_one_seed_learner(deterministic_noise, knobs):
    cfg = config(policy_noise=0.0, **knobs)  # with the critic subset = all critics, nothing else is random
    batches = [make_batch(K, seed=i) for i in range(4)]  # 4 steps: two critic-only, two with actor and targets
    vectorised = Learner(cfg, OBS, ACT, reward_min=-1.0, seeds=K, seed=7, total_steps=10)
    initial = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in vectorised.networks().items()}
    for batch in batches:
        vectorised.update(batch)

    for k in range(K):
        single = Learner(cfg, OBS, ACT, reward_min=-1.0, seeds=1, seed=100 + k, total_steps=10)
        for name, net in single.networks().items():
            net.load_state_dict({p: seed_slice(v, k, K) for p, v in initial[name].items()})
        for batch in batches:
            single.update(Batch(*(field[k : k + 1] for field in vars(batch).values())))
        for name, net in single.networks().items():
            trained = vectorised.networks()[name].state_dict()
            for p, v in net.state_dict().items():
                torch.testing.assert_close(v, seed_slice(trained[p], k, K), rtol=1e-5, atol=1e-6, msg=f"{name}.{p}")


def test_seed_groups_train_exactly_like_all_seeds_at_once(deterministic_noise):
    """Groups run on views of the K-seed parameters and write their gradients into views of the
    K-seed gradients: after a checkpoint round trip and four steps the weights must agree."""
    cfg = config(policy_noise=0.0)
    together = Learner(cfg, OBS, ACT, reward_min=-1.0, seeds=K, seed=7, total_steps=10)
    grouped = Learner(cfg, OBS, ACT, reward_min=-1.0, seeds=K, seed=8, total_steps=10, seed_group=2)
    assert [nets.seeds for _, nets in grouped.groups] == [2, 1]
    grouped.load_state_dict(together.state_dict())  # in place: the groups' views see the loaded weights
    for i in range(4):
        batch = make_batch(K, seed=i)
        a, b = together.update(batch), grouped.update(batch)
        assert a.keys() == b.keys() and all(v.shape == (K,) for v in b.values())
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name, net in together.networks().items():
        torch.testing.assert_close(grouped.networks()[name].state_dict(), net.state_dict(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grouped.state_dict()["critic_opt"], together.state_dict()["critic_opt"], rtol=1e-5, atol=1e-6)


def test_seed_group_size_keeps_cpu_activations_in_cache():
    pars_like = AgentConfig(num_critics=10, critic_hidden=256, pa_alpha=1e-3)  # 4 B x 512 rows x 10 x 256 = 5 MiB a seed
    cpu, cuda = TrainConfig(num_seeds=5, batch_size=256), TrainConfig(num_seeds=5, batch_size=256, device="cuda")
    assert seed_group_size(pars_like, cpu) == 1
    assert seed_group_size(pars_like.model_copy(update={"num_critics": 4}), cpu) == 3  # 2 MiB a seed
    assert seed_group_size(AgentConfig(num_critics=2, critic_hidden=256), cpu) == 5  # TD3+BC: 0.5 MiB a seed
    assert seed_group_size(pars_like, cuda) == 5
    assert seed_group_size(pars_like.model_copy(update={"critic_hidden": 4096}), cpu) == 1
    assert seed_group_size(pars_like, cpu.model_copy(update={"seed_group": 4})) == 4  # set by the user
