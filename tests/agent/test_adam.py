import math

import pytest
import torch
from batches import random_batch

from rlservice.agent.adam import FusedAdam, cosine_lr
from rlservice.agent.learner import Learner
from rlservice.config.run import AgentConfig


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(3, 4, 5), (3, 1, 5), (7,)]]


def _set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def test_fused_adam_takes_the_textbook_adam_steps():
    """Against torch's per-parameter Python Adam (a separate implementation), a learning-rate
    change halfway included."""
    ours, theirs = _params(0), _params(0)
    fused, textbook = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, foreach=False)
    for step in range(6):
        if step == 3:
            fused.lr = textbook.param_groups[0]["lr"] = 3e-3
        _set_grads(ours, step)
        _set_grads(theirs, step)
        fused.step()
        textbook.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours[0], _params(0)[0])


def test_first_fused_adam_step_moves_each_weight_by_lr_against_its_gradient_sign():
    """Bias-corrected Adam's first step is -lr * g / (|g| + eps): a hand value."""
    (p,) = params = [torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))]
    p.grad = torch.tensor([0.3, -4.0, 1e-3])
    FusedAdam(params, lr=0.1).step()
    expected = torch.tensor([1.0 - 0.1, -2.0 + 0.1, 0.5 - 0.1 * 1e-3 / (1e-3 + 1e-8)])
    torch.testing.assert_close(p.detach(), expected)


def test_fused_adam_state_round_trip_continues_identically():
    a, b = _params(1), _params(1)
    first, second = FusedAdam(a, lr=1e-2), FusedAdam(b, lr=5.0)
    for step in range(3):
        _set_grads(a, step)
        first.step()
    second.load_state_dict(first.state_dict())
    for p, q in zip(a, b):
        q.data.copy_(p.data)
    for step in range(3, 5):
        _set_grads(a, step)
        _set_grads(b, step)
        first.step()
        second.step()
    assert second.lr == 1e-2 and second.step_count.item() == 5
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_zero_grad_in_place_keeps_the_gradient_tensors():
    params = _params(2)
    _set_grads(params, 0)
    kept = [p.grad for p in params]
    opt = FusedAdam(params, lr=1e-3)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(params, kept))
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("done, expected", [(0, 1.0), (25, 0.5 + 0.5 * math.cos(math.pi / 4)), (50, 0.5), (100, 0.0), (150, 0.0)])
def test_cosine_lr_hand_values(done, expected):
    assert cosine_lr(2.0, done, 100) == pytest.approx(2.0 * expected)


def test_learner_anneals_the_actor_lr_by_cosine_per_actor_update():
    cfg = AgentConfig(actor_hidden=16, critic_hidden=16, policy_freq=2, actor_lr=1e-3, actor_lr_schedule="cosine")
    learner = Learner(cfg, 3, 2, reward_min=0.0, total_steps=8)  # 4 actor updates
    lrs = []
    for step in range(8):
        learner.update(random_batch(1, 8, 3, 2, seed=step))
        lrs.append(learner.actor_opt.lr)
    half = 0.5e-3 * (1 + math.cos(math.pi / 4))
    assert lrs == pytest.approx([1e-3, half, half, 0.5e-3, 0.5e-3, 1e-3 - half, 1e-3 - half, 0.0])
    assert learner.critic_opt.lr == cfg.critic_lr  # only the actor is scheduled
