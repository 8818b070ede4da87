"""The learner's performance paths compute what the plain formulation computes."""

import contextlib

import pytest
import torch
from batches import random_batch

import rlservice.agent.learner as learner_module
from rlservice.agent.learner import Learner, _named
from rlservice.agent.networks import BatchedLinear
from rlservice.config.run import AgentConfig


def test_single_output_layer_matches_baddbmm_values_and_gradients():
    layer = BatchedLinear(4, 6, 1).double()
    x = torch.randn(4, 5, 6, dtype=torch.double, requires_grad=True)
    members = torch.tensor([3, 0, 3])
    for idx in (None, members):
        w, b = (layer.weight, layer.bias) if idx is None else (layer.weight[idx], layer.bias[idx])
        xs = x if idx is None else x[:3]
        expected = torch.baddbmm(b, xs, w)
        got = layer(xs, idx)
        torch.testing.assert_close(got, expected)
        g = torch.randn_like(got)
        grads = torch.autograd.grad(got, (xs, layer.weight, layer.bias), g)
        expected_grads = torch.autograd.grad(expected, (xs, layer.weight, layer.bias), g)
        for a, e in zip(grads, expected_grads):
            torch.testing.assert_close(a, e)


def test_frozen_critic_gives_the_actor_the_plain_gradient_and_the_critic_none(monkeypatch):
    cfg = AgentConfig(critic_hidden=8, actor_hidden=8, num_critics=3, critic_layernorm=True)
    b = random_batch(2, 16, 3, 2, done_prob=0.0)
    lrn = Learner(cfg, 3, 2, reward_min=-1.0, seeds=2, seed_group=1)  # per-seed groups: gradients land in views
    with monkeypatch.context() as m:
        m.setattr(learner_module, "frozen", lambda params: contextlib.nullcontext())  # the plain formulation
        plain = torch.autograd.grad(lrn.actor_loss(b).sum(), list(lrn.actor.parameters()))
    monkeypatch.setattr(lrn.actor_opt, "step", lambda: None)  # keep the gradients, leave the weights

    lrn._step(lrn.actor_opt, lambda batch, nets: _named("actor_loss", lrn.actor_loss(batch, nets)), b)
    for p, expected in zip(lrn.actor.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, expected)
    assert all(not p.grad.any() for p in lrn.critic.parameters())  # no critic weight gradients in the actor step
    assert all(p.requires_grad for p in lrn.critic.parameters())  # and the critic is trainable again after it


@pytest.mark.parametrize("kernel", ["aten", "onednn"])  # compile sees through the oneDNN custom op
def test_compiled_learner_takes_the_eager_learners_steps(kernel):
    cfg = AgentConfig(critic_hidden=8, actor_hidden=8, num_critics=3, critic_layernorm=True, pa_alpha=1e-3,
                      policy_noise=0.0)
    b = random_batch(2, 16, 3, 2, done_prob=0.0)
    eager = Learner(cfg, 3, 2, reward_min=-1.0, seeds=2, seed=5, matmul=kernel)
    compiled = Learner(cfg, 3, 2, reward_min=-1.0, seeds=2, seed=5, compile=True, matmul=kernel)
    assert compiled.matmul == eager.matmul
    for _ in range(2):  # a critic step, then one with the actor and the targets
        torch.testing.assert_close(compiled.update(b), eager.update(b), rtol=1e-4, atol=1e-5)
    for name, net in eager.networks().items():
        torch.testing.assert_close(compiled.networks()[name].state_dict(), net.state_dict(), rtol=1e-4, atol=1e-5)
