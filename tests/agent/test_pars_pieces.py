"""Each piece of PARS (Kim et al., ICML 2025) against the paper, independently of the learner's
code (issue 23): the infeasible-action sampler, Q_min, the PA gradient on every critic, the random
target subset, the actor's min over the ensemble, and LayerNorm before the ReLU in the critics.

Statistical checks state their tolerance: binomial frequencies within 5 standard errors, a
chi-square at p = 1e-4 (fixed generator seeds, so they are deterministic; the tolerances say how
wrong an implementation could be and still pass).
"""

import itertools
import math

import pytest
import torch
from batches import random_batch
from test_losses import ref_actor, ref_q

from rlservice.agent import pars
from rlservice.agent.learner import Learner
from rlservice.config.run import AgentConfig, build_run_config

OBS, ACT, B = 3, 2, 64


def tiny(**knobs):
    base = dict(critic_hidden=8, actor_hidden=8, critic_layers=2, actor_layers=2, policy_noise=0.0, bc_weight=0.0)
    return AgentConfig(**{**base, **knobs})


def within(count, n, p, sigmas=5.0):
    return abs(count / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------- infeasible actions
def test_infeasible_sampler_support_and_independent_fair_sides():
    """a_inf per dimension uniform on [-2L, -L] U [L, 2L], each side with probability 1/2,
    independently across dimensions (and of the magnitude)."""
    n, d, L = 100_000, 4, 100.0
    x = pars.infeasible_actions((n, d), L, torch.Generator().manual_seed(0), "cpu")
    assert ((x.abs() >= L) & (x.abs() <= 2 * L)).all()
    positive = x > 0
    for j in range(d):  # each side 1/2, per dimension
        assert within(int(positive[:, j].sum()), n, 0.5)
    # Independence: each of the 2^d sign patterns has probability 1/16.
    codes = (positive.long() * (2 ** torch.arange(d))).sum(dim=1)
    counts = torch.bincount(codes, minlength=2**d)
    assert all(within(int(c), n, 1 / 2**d) for c in counts)
    # Within a side, uniform on the band: (|x| - L) / L ~ U(0, 1), the same on both sides.
    u = (x.abs() - L) / L
    for side in (positive, ~positive):
        v = u[side]
        m = v.numel()
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert within(int((v <= q).sum()), m, q)


# --------------------------------------------------------------------------- Q_min
def test_q_min_hand_values():
    # c = 5, r_min = -0.7, gamma = 0.99: 5 * -0.7 / 0.01 = -350; c = 10, r_min = 0: 0.
    assert pars.q_min(5.0, -0.7, 0.99) == pytest.approx(-350.0)
    assert pars.q_min(10.0, 0.0, 0.995) == 0.0
    lrn = Learner(tiny(reward_scale=5.0, pa_alpha=1e-4), OBS, ACT, reward_min=-0.7)
    assert lrn.q_floor == pytest.approx(-350.0)


# PARS Table 8, typed from the paper (scaled-reward units), with one dataset id per family.
TABLE_8 = {
    "rlservice/halfcheetah-v5/medium-v0": -366.0,
    "mujoco/hopper/medium-v0": -166.0,
    "mujoco/walker2d/medium-v0": -229.0,
    "D4RL/antmaze/large-diverse-v1": 0.0,
    "D4RL/pen/cloned-v2": -715.0,
    "D4RL/door/cloned-v2": -42.0,
    "D4RL/hammer/cloned-v2": -348.0,
    "D4RL/relocate/cloned-v2": 0.0,
}


@pytest.mark.parametrize("dataset_id,value", TABLE_8.items())
def test_preset_q_min_is_table_8_and_reaches_the_learner(dataset_id, value):
    run = build_run_config(dataset_id, "pars", action_dim=6)
    assert run.agent.q_min == value
    lrn = Learner(run.agent.model_copy(update=dict(num_critics=2, critic_hidden=8, actor_hidden=8, target_subset=2)),
                  OBS, ACT, reward_min=-123.0)
    assert lrn.q_floor == value  # the dataset's r_min does not replace the paper's value


# --------------------------------------------------------------------------- PA gradient
@pytest.mark.parametrize("seed_group", [None, 1])
def test_pa_gradient_reaches_every_critic_with_the_hand_derivative(seed_group, monkeypatch):
    """d(alpha * L_PA)/d(head bias of critic i) = 2 alpha mean_b(Q_i(s_b, a_inf_b) - Q_min), and
    L_PA alone gives every parameter of every member a gradient; checked through the learner's
    critic objective (TD term included, with its own hand derivative 2 mean_b(Q_i - y))."""
    seeds, n_critics, alpha = 2, 4, 1e-2
    cfg = tiny(num_critics=n_critics, target_subset=n_critics, pa_alpha=alpha, reward_scale=5.0)
    lrn = Learner(cfg, OBS, ACT, reward_min=-1.0, seeds=seeds, seed=1, seed_group=seed_group)
    b = random_batch(seeds, B, OBS, ACT, 2)
    drawn = []
    original = pars.infeasible_actions
    monkeypatch.setattr(pars, "infeasible_actions", lambda *a: drawn.append(original(*a)) or drawn[-1])
    for group, nets in lrn.groups:  # what Learner._step does, without the optimiser's step
        loss, _ = lrn._critic_objective(b if group is None else b.select(group), nets)
        loss.sum().backward()
    a_inf = torch.cat(drawn, dim=0)  # [K, B, d], the groups in seed order
    q_floor = 5.0 * -1.0 / 0.01
    grad = lrn.critic.net.head.bias.grad.view(seeds, n_critics)
    with torch.no_grad():
        for k in range(seeds):
            s2, a2 = b.next_obs[k], ref_actor(lrn.actor_target, k, b.next_obs[k])
            q_next = torch.stack([ref_q(lrn.critic_target, k, i, s2, a2) for i in range(n_critics)]).min(0).values
            y = 5.0 * b.rewards[k] + 0.99 * (1 - b.dones[k]) * q_next
            for i in range(n_critics):
                td = 2 * (ref_q(lrn.critic, k, i, b.obs[k], b.actions[k]) - y).mean()
                pa = 2 * alpha * (ref_q(lrn.critic, k, i, b.obs[k], a_inf[k]) - q_floor).mean()
                assert abs(float(pa)) > 1e-3 * abs(float(td))  # the PA part is not lost in rounding
                torch.testing.assert_close(grad[k, i], td + pa, rtol=1e-4, atol=1e-5)


def test_pa_loss_alone_gives_every_member_a_gradient():
    seeds, n_critics = 2, 3
    lrn = Learner(tiny(num_critics=n_critics, pa_alpha=1e-3), OBS, ACT, reward_min=-1.0, seeds=seeds, seed=4)
    b = random_batch(seeds, B, OBS, ACT, 5)
    lrn.critic_losses(b, torch.zeros(seeds, B))["pa_loss"].sum().backward()
    for name, p in lrn.critic.net.named_parameters():
        per_member = p.grad.reshape(seeds * n_critics, -1).abs().sum(dim=1)
        assert (per_member > 0).all(), f"{name}: a critic gets no gradient from L_PA"


# --------------------------------------------------------------------------- random target subset
def _consistent_pairs(y, pairs, mins):
    """The pairs (i, j) whose row-wise min (mins [P, B]) reproduces y [B] on every row."""
    match = torch.isclose(mins, y.expand_as(mins), atol=1e-5).all(dim=1)
    return [pairs[p] for p in match.nonzero()[:, 0].tolist()]


def test_target_subset_is_one_subset_per_update_shared_by_the_batch_and_uniform():
    """Each update draws one pair of critics for the whole batch (identified from y alone: the
    pairs whose row-wise min reproduces every row's target), and across updates the 10 pairs of 5
    critics are equally likely (chi-square, 9 dof, p = 1e-4 threshold 33.7)."""
    n_critics = 5
    lrn = Learner(tiny(num_critics=n_critics, target_subset=2), OBS, ACT, reward_min=-1.0, seed=7)
    b = random_batch(1, B, OBS, ACT, 8)
    b = type(b)(b.obs, b.actions, torch.zeros_like(b.rewards), 3 * b.next_obs, torch.zeros_like(b.dones))
    with torch.no_grad():
        a2 = ref_actor(lrn.actor_target, 0, b.next_obs[0])
        qs = [ref_q(lrn.critic_target, 0, i, b.next_obs[0], a2) for i in range(n_critics)]
        pairs = list(itertools.combinations(range(n_critics), 2))
        mins = torch.stack([0.99 * torch.minimum(qs[i], qs[j]) for i, j in pairs])
        counts = dict.fromkeys(pairs, 0)
        draws = 300
        for _ in range(draws):
            found = _consistent_pairs(lrn.critic_target_value(b)[0], pairs, mins)
            assert len(found) == 1, f"no single pair of critics explains every row: {found}"
            counts[found[0]] += 1
    expected = draws / len(pairs)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 33.7, counts


# --------------------------------------------------------------------------- the actor
def test_pars_actor_uses_the_min_over_all_ten_critics():
    run = build_run_config("rlservice/halfcheetah-v5/medium-v0", "pars")
    assert run.agent.actor_q == "min" and run.agent.num_critics == 10 and run.agent.bc_weight == 0.0
    cfg = run.agent.model_copy(update=dict(critic_hidden=8, actor_hidden=8))
    lrn = Learner(cfg, OBS, ACT, reward_min=-1.0, seed=9)
    b = random_batch(1, B, OBS, ACT, 10)
    s = b.obs[0]
    loss = lrn.actor_loss(b)[0]
    grads = torch.autograd.grad(loss, list(lrn.actor.parameters()))
    params = [p.detach().clone().requires_grad_(True) for p in lrn.actor.parameters()]
    with torch.no_grad():
        for dst, src in zip(lrn.actor.parameters(), params):
            dst.copy_(src)
    pi = ref_actor(lrn.actor, 0, s)
    q_all = torch.stack([ref_q(lrn.critic, 0, i, s, pi) for i in range(10)])
    q = q_all.min(0).values
    assert len(set(q_all.argmin(0).tolist())) > 1  # the min is taken per row, over many critics
    expected = -q.mean() / q.abs().mean().detach()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    want = torch.autograd.grad(expected, list(lrn.actor.parameters()))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- LayerNorm before ReLU
def test_every_hidden_layer_of_every_critic_is_relu_of_layernorm():
    """Module structure: one LayerNorm per hidden layer; numerically: the hidden activations of
    each member are ReLU(LN(x W + b)) written out by hand, with per-member gain and bias."""
    seeds, n_critics, layers, hidden = 2, 3, 3, 8
    cfg = tiny(num_critics=n_critics, critic_layers=layers, critic_hidden=hidden)
    lrn = Learner(cfg, OBS, ACT, reward_min=-1.0, seeds=seeds, seed=11)
    net = lrn.critic.net
    assert net.norms is not None and len(net.norms) == len(net.hidden) == layers
    with torch.no_grad():
        for norm in net.norms:  # members must use their own affine parameters
            norm.weight.normal_(1.0, 0.5)
            norm.bias.normal_(0.0, 0.5)
    b = random_batch(seeds, B, OBS, ACT, 12)
    acts = []
    with torch.no_grad():
        lrn.critic(b.obs, b.actions, activations=acts)
        assert len(acts) == layers
        for k in range(seeds):
            for i in range(n_critics):
                m = k * n_critics + i
                x = torch.cat([b.obs[k], b.actions[k]], dim=-1)
                for layer in range(layers):
                    z = x @ net.hidden[layer].weight[m] + net.hidden[layer].bias[m, 0]
                    mu = z.sum(-1, keepdim=True) / hidden
                    var = ((z - mu) ** 2).sum(-1, keepdim=True) / hidden  # biased, as LayerNorm
                    ln = (z - mu) / torch.sqrt(var + 1e-5) * net.norms[layer].weight[m, 0] + net.norms[layer].bias[m, 0]
                    x = torch.where(ln > 0, ln, torch.zeros_like(ln))
                    torch.testing.assert_close(acts[layer][m], x, rtol=1e-5, atol=1e-5)
    # LN after the ReLU would have no exact zeros; ReLU(LN) zeroes a good share of units.
    assert all(0.1 < float((a == 0).float().mean()) < 0.9 for a in acts)


# --------------------------------------------------------------------------- how fast values grow
@pytest.mark.parametrize("tau", [0.05, 0.01])
def test_target_critics_climb_no_faster_than_the_soft_update_allows(tau):
    """With constant reward r = 1 (no terminals), V* = c r / (1 - gamma), and the target critics
    move by tau * (y - Q') a step at most, so Q'/V* <= 1 - (1 - tau (1 - gamma))^n after n steps
    (benchmarks/pars_value_growth.py measures it at PARS's sizes). A critic lr high enough for the
    fit to keep up makes the bound nearly attained, so the test also sees that it is the limit."""
    gamma, c, n = 0.9, 2.0, 300
    cfg = tiny(num_critics=2, critic_hidden=16, actor_hidden=16, critic_lr=1e-2, tau=tau, discount=gamma,
               reward_scale=c, policy_freq=1)
    lrn = Learner(cfg, OBS, ACT, reward_min=1.0, seed=13)
    b = random_batch(1, B, OBS, ACT, 14)
    b = type(b)(b.obs, b.actions, torch.ones_like(b.rewards), b.next_obs, torch.zeros_like(b.dones))
    with torch.no_grad():
        start = float(lrn.critic_target(b.obs, b.actions).mean())
    for _ in range(n):
        lrn.update(b)
    v_star = c / (1 - gamma)
    bound = 1 - (1 - tau * (1 - gamma)) ** n
    with torch.no_grad():
        reached = (float(lrn.critic_target(b.obs, b.actions).mean()) - start) / (v_star - start)
    assert reached <= bound + 0.05
    assert reached >= 0.6 * bound
