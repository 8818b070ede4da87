import pytest
import torch
import torch.nn.functional as F

from rlservice.agent.networks import BatchedLinear, BatchedMLP, CriticEnsemble


def test_batched_linear_equals_separate_linears():
    layer = BatchedLinear(4, 5, 3)
    x = torch.randn(4, 7, 5)
    out = layer(x)
    for m in range(4):
        torch.testing.assert_close(out[m], F.linear(x[m], layer.weight[m].T, layer.bias[m, 0]))


@pytest.mark.parametrize("outputs", [1, 6])  # one output takes its own products (_SingleOutput)
def test_batched_linear_gradients_equal_separate_linears(outputs):
    layer = BatchedLinear(3, 5, outputs)
    x = torch.randn(3, 7, 5, requires_grad=True)
    upstream = torch.randn(3, 7, outputs)
    grads = torch.autograd.grad((layer(x) * upstream).sum(), (x, layer.weight, layer.bias))
    for m in range(3):
        xm, w, b = x[m].detach().requires_grad_(), layer.weight[m].detach().requires_grad_(), layer.bias[m, 0].detach().requires_grad_()
        expected = torch.autograd.grad((F.linear(xm, w.T, b) * upstream[m]).sum(), (xm, w, b))
        for got, want in zip((grads[0][m], grads[1][m], grads[2][m, 0]), expected):
            torch.testing.assert_close(got, want)


def test_batched_linear_init_matches_nn_linear_range():
    layer = BatchedLinear(3, 100, 50)
    assert layer.weight.abs().max() <= 0.1 and layer.weight.abs().max() > 0.09
    assert not torch.equal(layer.weight[0], layer.weight[1])  # members start different


def test_mlp_layernorm_equals_torch_layernorm_per_member():
    mlp = BatchedMLP(2, 4, 6, 1, 1, layernorm=True)
    torch.nn.init.normal_(mlp.norms[0].weight)
    torch.nn.init.normal_(mlp.norms[0].bias)
    x = torch.randn(2, 9, 4)
    got = mlp(x)
    for m in range(2):
        h = F.linear(x[m], mlp.hidden[0].weight[m].T, mlp.hidden[0].bias[m, 0])
        h = F.relu(F.layer_norm(h, (6,), mlp.norms[0].weight[m, 0], mlp.norms[0].bias[m, 0]))
        torch.testing.assert_close(got[m], F.linear(h, mlp.head.weight[m].T, mlp.head.bias[m, 0]))


def test_critic_ensemble_is_one_module_with_stacked_weights_and_subsets():
    critic = CriticEnsemble(seeds=2, num_critics=3, obs_dim=4, act_dim=2, hidden=8, layers=2, layernorm=True)
    assert critic.net.hidden[0].weight.shape == (6, 6, 8)  # [K*N, in, out]
    s, a = torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    q = critic(s, a)
    assert q.shape == (2, 3, 5)
    subset = torch.tensor([[2, 0], [1, 1]])
    q_sub = critic(s, a, subset)
    torch.testing.assert_close(q_sub[0, 0], q[0, 2])
    torch.testing.assert_close(q_sub[0, 1], q[0, 0])
    torch.testing.assert_close(q_sub[1, 0], q[1, 1])


def test_critics_of_a_seed_see_only_that_seeds_inputs():
    critic = CriticEnsemble(seeds=2, num_critics=2, obs_dim=3, act_dim=1, hidden=8, layers=1, layernorm=False)
    s, a = torch.randn(2, 4, 3), torch.randn(2, 4, 1)
    q = critic(s, a)
    s2 = s.clone()
    s2[1] += 1.0
    q2 = critic(s2, a)
    torch.testing.assert_close(q2[0], q[0])
    assert not torch.allclose(q2[1], q[1])
