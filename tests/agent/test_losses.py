"""Every loss term of SPEC.md against an independent computation.

The reference forward pass below evaluates one member of a batched network with explicit
per-member weights and plain matrix algebra (no BatchedLinear, no baddbmm), so the learner's
batched code is checked against a second, naive implementation of the same formulas.
"""

import math

import numpy as np
import pytest
import torch
from batches import random_batch

from rlservice.agent import dmg, pani, pars
from rlservice.agent.learner import Learner
from rlservice.config.run import AgentConfig

OBS, ACT, B = 3, 2, 16


def ref_mlp(mlp, member, x):
    """One member of a BatchedMLP, written out: x [B, in] -> [B, out]."""
    for i, linear in enumerate(mlp.hidden):
        x = x @ linear.weight[member] + linear.bias[member, 0]
        if mlp.norms is not None:
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            x = (x - mu) / torch.sqrt(var + 1e-5) * mlp.norms[i].weight[member, 0] + mlp.norms[i].bias[member, 0]
        x = torch.clamp(x, min=0)
    return x @ mlp.head.weight[member] + mlp.head.bias[member, 0]


def ref_q(critic, seed, i, s, a):
    return ref_mlp(critic.net, seed * critic.num_critics + i, torch.cat([s, a], -1))[:, 0]


def ref_actor(actor, seed, s):
    return torch.tanh(ref_mlp(actor.net, seed, s))


def ref_v(value, seed, s):
    return ref_mlp(value.net, seed, s)[:, 0]


def tiny(**knobs):
    base = dict(critic_hidden=8, actor_hidden=8, critic_layers=2, actor_layers=2, policy_noise=0.0)
    return AgentConfig(**{**base, **knobs})


def make_batch(seeds=1, seed=0):
    return random_batch(seeds, B, OBS, ACT, seed)


def learner(cfg, seeds=1, reward_min=-2.0):
    return Learner(cfg, OBS, ACT, reward_min=reward_min, seeds=seeds, seed=3)


# --------------------------------------------------------------------------- critic target
@pytest.mark.parametrize("layernorm", [False, True])
def test_lambda_one_is_td3_clipped_double_q_target(layernorm):
    cfg = tiny(num_critics=2, critic_layernorm=layernorm, reward_scale=5.0)
    lrn, b = learner(cfg), make_batch()
    s2, r, d = b.next_obs[0], b.rewards[0], b.dones[0]
    with torch.no_grad():
        a2 = ref_actor(lrn.actor_target, 0, s2)
        q_next = torch.minimum(ref_q(lrn.critic_target, 0, 0, s2, a2), ref_q(lrn.critic_target, 0, 1, s2, a2))
        expected = 5.0 * r + 0.99 * (1 - d) * q_next
        got = lrn.critic_target_value(b)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_iql_reward_normalisation_scales_rewards_by_the_return_range():
    from types import SimpleNamespace

    from rlservice.training.trainer import reward_factor

    cfg = tiny(algorithm="iql", dmg_lambda=0.0, reward_normalization="return_range", reward_scale=2.0)
    # episode returns 10, 260, 60: range 250 -> factor 1000 / 250 = 4
    assert reward_factor(cfg, SimpleNamespace(episode_returns=np.array([10.0, 260.0, 60.0]))) == pytest.approx(4.0)
    assert reward_factor(tiny(), SimpleNamespace(episode_returns=np.array([10.0, 260.0]))) == 1.0
    lrn = Learner(cfg, OBS, ACT, reward_min=-2.0, seed=3, reward_factor=4.0)
    b = make_batch()
    with torch.no_grad():
        expected = 2.0 * 4.0 * b.rewards[0] + 0.99 * (1 - b.dones[0]) * ref_v(lrn.value, 0, b.next_obs[0])
        torch.testing.assert_close(lrn.critic_target_value(b)[0], expected, rtol=1e-5, atol=1e-5)


def test_table_8_q_min_overrides_the_dataset_formula():
    assert learner(tiny(reward_scale=5.0, pa_alpha=1e-4, q_min=-366.0)).q_floor == -366.0
    assert learner(tiny(reward_scale=5.0, pa_alpha=1e-4)).q_floor == pytest.approx(5.0 * -2.0 / 0.01)


def test_target_policy_smoothing_noise_is_clipped():
    cfg = tiny(policy_noise=10.0, noise_clip=0.5)
    lrn, b = learner(cfg), make_batch()
    lrn.actor_target.net.head.bias.data.fill_(50.0)  # pi'(s') saturates at +1 ...
    lrn.actor_target.net.head.weight.data.zero_()
    seen = []
    original = lrn.critic_target.forward
    lrn.critic_target.forward = lambda s, a, subset=None, activations=None: seen.append(a) or original(s, a, subset)
    with torch.no_grad():
        lrn.critic_target_value(b)
    a2 = seen[0]
    # ... so the smoothed action is clip(1 + clip(noise, -0.5, 0.5), -1, 1) in [0.5, 1].
    assert a2.min() >= 0.5 - 1e-6 and a2.max() <= 1.0
    assert (a2 < 0.99).float().mean() > 0.3  # noise of std 10 is clipped, not absent


def test_lambda_zero_is_in_sample_target_and_mixture_in_between():
    b = make_batch()
    for lam in (0.0, 0.25):
        lrn = learner(tiny(dmg_lambda=lam, reward_scale=2.0))
        s2, r, d = b.next_obs[0], b.rewards[0], b.dones[0]
        with torch.no_grad():
            a2 = ref_actor(lrn.actor_target, 0, s2)
            q_next = torch.minimum(ref_q(lrn.critic_target, 0, 0, s2, a2), ref_q(lrn.critic_target, 0, 1, s2, a2))
            v_next = ref_v(lrn.value, 0, s2)
            expected = 2.0 * r + 0.99 * (1 - d) * (lam * q_next + (1 - lam) * v_next)
            torch.testing.assert_close(lrn.critic_target_value(b)[0], expected, rtol=1e-5, atol=1e-5)


def test_target_subset_takes_min_over_a_random_pair_of_critics():
    lrn, b = learner(tiny(num_critics=5, target_subset=2)), make_batch()
    s2, r, d = b.next_obs[0], b.rewards[0], b.dones[0]
    with torch.no_grad():
        a2 = ref_actor(lrn.actor_target, 0, s2)
        qs = [ref_q(lrn.critic_target, 0, i, s2, a2) for i in range(5)]
        candidates = {
            (i, j): r + 0.99 * (1 - d) * torch.minimum(qs[i], qs[j]) for i in range(5) for j in range(i + 1, 5)
        }
        full_min = r + 0.99 * (1 - d) * torch.stack(qs).min(0).values
        distinct, below_full_min = [], 0
        for _ in range(40):
            y = lrn.critic_target_value(b)[0]
            assert any(torch.allclose(y, value, atol=1e-5) for value in candidates.values()), (
                "y must be the min over a pair of distinct critics"
            )
            below_full_min += not torch.allclose(y, full_min, atol=1e-5)
            if not any(torch.equal(y, seen) for seen in distinct):
                distinct.append(y)
    assert len(distinct) > 2  # the pair is redrawn each step
    assert below_full_min > 0  # and it is not the min over the whole ensemble


# --------------------------------------------------------------------------- critic loss, PANI, PA
def test_td_loss_sums_critics_and_averages_batch():
    lrn, b = learner(tiny(num_critics=3)), make_batch()
    y = torch.randn(1, B)
    with torch.no_grad():
        expected = sum(((ref_q(lrn.critic, 0, i, b.obs[0], b.actions[0]) - y[0]) ** 2).mean() for i in range(3))
        got = lrn.critic_losses(b, y)["critic_loss"]
    assert got.shape == (1,)
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-5)


def test_pani_critic_trains_on_noisy_action_with_penalised_target(monkeypatch):
    lrn, b = learner(tiny(noise_sigma=0.3, noise_penalty=2.5, noise_kind="gaussian")), make_batch()
    a_hat = (b.actions + 0.2).clamp(-1, 1)
    monkeypatch.setattr(pani, "noisy_actions", lambda a, *args: a_hat)
    y = torch.randn(1, B)
    with torch.no_grad():
        penalty = 2.5 * ((b.actions[0] - a_hat[0]) ** 2).sum(-1)
        expected = sum(((ref_q(lrn.critic, 0, i, b.obs[0], a_hat[0]) - (y[0] - penalty)) ** 2).mean() for i in range(2))
        got = lrn.critic_losses(b, y)["critic_loss"][0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_pani_penalty_is_weighted_squared_distance():
    a = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    a_hat = torch.tensor([[0.3, -0.4], [1.0, -1.0]])
    torch.testing.assert_close(pani.noise_penalty(a, a_hat, 2.0), torch.tensor([2.0 * 0.25, 0.0]))


def test_pa_loss_pushes_infeasible_actions_to_q_min(monkeypatch):
    cfg = tiny(pa_alpha=1e-3, reward_scale=10.0, num_critics=3)
    lrn, b = learner(cfg, reward_min=-2.0), make_batch()
    a_inf = torch.full_like(b.actions, 150.0)
    monkeypatch.setattr(pars, "infeasible_actions", lambda *args: a_inf)
    q_min = 10.0 * -2.0 / (1 - 0.99)
    assert lrn.q_floor == pytest.approx(q_min)
    with torch.no_grad():
        expected = sum(((ref_q(lrn.critic, 0, i, b.obs[0], a_inf[0]) - q_min) ** 2).mean() for i in range(3))
        got = lrn.critic_losses(b, torch.zeros(1, B))["pa_loss"][0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


def test_pa_samples_penalise_the_first_states_only(monkeypatch):
    monkeypatch.setattr(pars, "infeasible_actions", lambda shape, *args: 150.0 + torch.arange(shape[1]).view(1, -1, 1).expand(shape))
    lrn, b = learner(tiny(pa_alpha=1e-3, num_critics=2, pa_samples=5)), make_batch()
    with torch.no_grad():
        a_inf = 150.0 + torch.arange(5.0).view(-1, 1).expand(5, ACT)
        expected = sum(((ref_q(lrn.critic, 0, i, b.obs[0, :5], a_inf) - lrn.q_floor) ** 2).mean() for i in range(2))
        expected_td = sum(((ref_q(lrn.critic, 0, i, b.obs[0], b.actions[0])) ** 2).mean() for i in range(2))
        got = lrn.critic_losses(b, torch.zeros(1, B))
    torch.testing.assert_close(got["pa_loss"][0], expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got["critic_loss"][0], expected_td, rtol=1e-5, atol=1e-5)  # the TD term keeps all B rows


def test_q_min_closed_form_and_config_reward_min_wins():
    assert pars.q_min(5.0, -1.0, 0.99) == pytest.approx(-500.0)
    assert learner(tiny(reward_min=0.5, reward_scale=4.0), reward_min=-9.0).q_floor == pytest.approx(4 * 0.5 / 0.01)


def test_infeasible_actions_lie_in_the_two_bands():
    g = torch.Generator().manual_seed(0)
    x = pars.infeasible_actions((64, 100, 6), 100.0, g, "cpu")
    assert ((x.abs() >= 100.0) & (x.abs() <= 200.0)).all()
    assert abs((x > 0).float().mean().item() - 0.5) < 0.01
    # uniform within a band: the mean of |x| is the band's midpoint
    assert x.abs().mean().item() == pytest.approx(150.0, rel=0.01)


# --------------------------------------------------------------------------- PANI noise distributions
def test_hybrid_noise_has_the_uniform_fraction_asked_for():
    g = torch.Generator().manual_seed(1)
    n, d, p = 200_000, 6, 0.1
    a = torch.zeros(n, d)
    a_hat = pani.noisy_actions(a, 1e-4, "hybrid", p, g)
    # The Gaussian part stays within 0.01 of a; a uniform draw lands there with prob 0.01^6.
    frac = (a_hat.abs().amax(-1) > 0.01).float().mean().item()
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_hybrid_noise_is_leptokurtic_with_mean_scale_sigma():
    g = torch.Generator().manual_seed(2)
    sigma = 0.05
    x = pani.noisy_actions(torch.zeros(400_000, 1), sigma, "hybrid", 0.0, g)[:, 0]
    # Scale ~ Exp(mean sigma) times N(0,1): E|x| = sigma * sqrt(2/pi), kurtosis = 3 * E[s^4]/E[s^2]^2 = 18.
    assert x.abs().mean().item() == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.02)
    kurtosis = (x**4).mean().item() / (x**2).mean().item() ** 2
    assert kurtosis > 10


@pytest.mark.parametrize("kind,std", [("gaussian", 0.1), ("laplace", 0.1 * math.sqrt(2))])
def test_gaussian_and_laplace_noise_scales(kind, std):
    g = torch.Generator().manual_seed(3)
    x = pani.noisy_actions(torch.zeros(200_000, 1), 0.1, kind, 0.1, g)[:, 0]
    assert x.std().item() == pytest.approx(std, rel=0.02)


def test_noisy_actions_are_clipped_to_the_box():
    g = torch.Generator().manual_seed(4)
    for kind in ("gaussian", "laplace", "hybrid"):
        x = pani.noisy_actions(torch.full((1000, 3), 0.99), 1.0, kind, 0.1, g)
        assert x.min() >= -1.0 and x.max() <= 1.0 and (x == 1.0).any()


# --------------------------------------------------------------------------- value and actor
def test_expectile_loss_is_asymmetric():
    u = torch.tensor([[2.0, -2.0]])
    # mean(0.7 * 4, 0.3 * 4) = 2.0
    torch.testing.assert_close(dmg.expectile_loss(u, 0.7), torch.tensor([2.0]))
    assert dmg.expectile_loss(torch.tensor([[1.0]]), 0.9) > dmg.expectile_loss(torch.tensor([[-1.0]]), 0.9)


def test_value_loss_regresses_v_to_min_target_q():
    lrn, b = learner(tiny(dmg_lambda=0.5, expectile=0.8, num_critics=3)), make_batch()
    with torch.no_grad():
        q = torch.stack([ref_q(lrn.critic_target, 0, i, b.obs[0], b.actions[0]) for i in range(3)]).min(0).values
        u = q - ref_v(lrn.value, 0, b.obs[0])
        expected = (torch.where(u < 0, 0.2, 0.8) * u**2).mean()
        torch.testing.assert_close(lrn.value_loss(b)[0], expected, rtol=1e-5, atol=1e-6)


def test_awr_weights_are_clipped():
    w = dmg.advantage_weights(torch.tensor([-1.0, 0.0, 0.1, 5.0]), 3.0, 3.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(-3.0), 1.0, math.exp(0.3), 3.0]))


def test_td3bc_actor_loss():
    lrn, b = learner(tiny(bc_weight=0.4)), make_batch()
    s, a = b.obs[0], b.actions[0]
    with torch.no_grad():
        pi = ref_actor(lrn.actor, 0, s)
        q = torch.minimum(ref_q(lrn.critic, 0, 0, s, pi), ref_q(lrn.critic, 0, 1, s, pi))
        expected = -q.mean() / q.abs().mean() + 0.4 * ((pi - a) ** 2).mean()
        torch.testing.assert_close(lrn.actor_loss(b)[0], expected, rtol=1e-5, atol=1e-6)


def test_dmg_actor_loss_weights_bc_by_clipped_advantage():
    lrn, b = learner(tiny(dmg_lambda=0.25, bc_weight=0.1, awr_temperature=3.0, awr_max_weight=3.0)), make_batch()
    lrn.value.net.head.bias.data.sub_(0.9)  # make some advantages large enough to clip
    s, a = b.obs[0], b.actions[0]
    with torch.no_grad():
        pi = ref_actor(lrn.actor, 0, s)
        q = torch.minimum(ref_q(lrn.critic, 0, 0, s, pi), ref_q(lrn.critic, 0, 1, s, pi))
        adv = torch.minimum(ref_q(lrn.critic_target, 0, 0, s, a), ref_q(lrn.critic_target, 0, 1, s, a)) - ref_v(lrn.value, 0, s)
        w = torch.clamp(torch.exp(3.0 * adv), max=3.0)
        assert (w == 3.0).any() and (w < 3.0).any()
        expected = -q.mean() / q.abs().mean() + 0.1 * (w * ((pi - a) ** 2).mean(-1)).mean()
        torch.testing.assert_close(lrn.actor_loss(b)[0], expected, rtol=1e-5, atol=1e-6)


def test_iql_actor_is_advantage_weighted_regression():
    lrn, b = learner(tiny(algorithm="iql", dmg_lambda=0.0, awr_temperature=3.0, awr_max_weight=100.0)), make_batch()
    s, a = b.obs[0], b.actions[0]
    with torch.no_grad():
        pi = ref_actor(lrn.actor, 0, s)
        adv = torch.minimum(ref_q(lrn.critic_target, 0, 0, s, a), ref_q(lrn.critic_target, 0, 1, s, a)) - ref_v(lrn.value, 0, s)
        expected = (torch.clamp(torch.exp(3.0 * adv), max=100.0) * ((pi - a) ** 2).mean(-1)).mean()
        torch.testing.assert_close(lrn.actor_loss(b)[0], expected, rtol=1e-5, atol=1e-6)


def test_actor_subset_mean_averages_chosen_critics():
    lrn, b = learner(tiny(num_critics=4, actor_q="subset_mean", actor_q_subset=2)), make_batch()
    s = b.obs[0]
    with torch.no_grad():
        pi = ref_actor(lrn.actor, 0, s)
        qs = [ref_q(lrn.critic, 0, i, s, pi) for i in range(4)]
        got = lrn.actor_q(b.obs, lrn.actor(b.obs))[0]
    pairs = [(qs[i] + qs[j]) / 2 for i in range(4) for j in range(i + 1, 4)]
    assert sum(torch.allclose(got, p, atol=1e-5) for p in pairs) == 1


def test_td3bc_actor_follows_the_first_critic_only():
    lrn, b = learner(tiny(num_critics=2, actor_q="first"), seeds=2), make_batch(seeds=2)
    a = b.actions.clone().requires_grad_(True)
    lrn.actor_q(b.obs, a).sum().backward()
    for k in range(2):
        a_ref = b.actions[k].clone().requires_grad_(True)
        ref_q(lrn.critic, k, 0, b.obs[k], a_ref).sum().backward()
        torch.testing.assert_close(a.grad[k], a_ref.grad, rtol=1e-5, atol=1e-6)
        a_other = b.actions[k].clone().requires_grad_(True)
        ref_q(lrn.critic, k, 1, b.obs[k], a_other).sum().backward()
        assert not torch.allclose(a.grad[k], a_other.grad, atol=1e-4)  # the second critic would differ
    # The second critic's input gradient is zero: changing its weights changes nothing.
    with torch.no_grad():
        for p in lrn.critic.net.parameters():
            p.view(2, 2, -1)[:, 1].mul_(-3.0)  # members are seed-major: [seed, critic, ...]
    a2 = b.actions.clone().requires_grad_(True)
    lrn.actor_q(b.obs, a2).sum().backward()
    torch.testing.assert_close(a2.grad, a.grad)


def test_dmg_finetune_decay_schedule():
    assert dmg.finetune_decay(0, 0.25, 0.1) == pytest.approx((0.25, 0.1))
    lam, nu = dmg.finetune_decay(2500, 0.25, 0.1)  # two decays: 0.99^2
    decay = 0.99**2
    assert lam == pytest.approx(0.5 - (0.5 - 0.25) * decay)
    assert nu == pytest.approx(0.005 + (0.1 - 0.005) * decay)  # nu_end 0.005 is absolute


# --------------------------------------------------------------------------- the update as a whole
def test_policy_delay_and_soft_target_update():
    lrn, b = learner(tiny(policy_freq=2, tau=0.005)), make_batch()
    before_actor = lrn.actor.net.head.weight.detach().clone()
    before_target = lrn.critic_target.net.head.weight.detach().clone()
    m1 = lrn.update(b)
    assert "actor_loss" not in m1 and torch.equal(lrn.actor.net.head.weight, before_actor)
    assert torch.equal(lrn.critic_target.net.head.weight, before_target)
    online = lrn.critic.net.head.weight.detach().clone()
    m2 = lrn.update(b)
    assert "actor_loss" in m2 and not torch.equal(lrn.actor.net.head.weight, before_actor)
    # target <- target + tau * (online_after_step2 - target)
    expected = before_target + 0.005 * (lrn.critic.net.head.weight - before_target)
    torch.testing.assert_close(lrn.critic_target.net.head.weight, expected)
    assert not torch.equal(online, lrn.critic.net.head.weight)


def test_soft_target_update_records_no_graph():
    """The targets stay plain leaves: an update recorded by autograd would chain a node onto them
    every step, a graph (and memory) growing for the whole run."""
    lrn, b = learner(tiny(policy_freq=1)), make_batch()
    for _ in range(3):
        lrn.update(b)
    for p in [*lrn.actor_target.parameters(), *lrn.critic_target.parameters()]:
        assert p.is_leaf and p.grad_fn is None and not p.requires_grad


def test_every_combination_updates_and_stays_finite():
    cfg = tiny(num_critics=4, dmg_lambda=0.25, pa_alpha=1e-3, noise_sigma=0.1, reward_scale=10.0,
               awr_temperature=3.0, awr_max_weight=3.0, actor_lr_schedule="cosine")
    lrn, b = learner(cfg, seeds=2), make_batch(seeds=2)
    for _ in range(6):
        metrics = lrn.update(b)
    assert set(metrics) == {"value_loss", "critic_loss", "pa_loss", "actor_loss"}
    assert all(v.shape == (2,) and torch.isfinite(v).all() for v in metrics.values())
