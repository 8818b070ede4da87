import pytest
import torch

from rlservice.agent.diagnostics import (
    dead_units,
    diagnostics,
    diverged,
    dormant_ratio,
    q_bound,
)
from rlservice.agent.learner import Batch, Learner
from rlservice.config.run import AgentConfig


def test_dormant_ratio_is_the_zero_fraction_averaged_over_inputs_and_dead_units_sokars():
    # 2 seeds x 2 critics, 3 samples, 4 units: rows 0-1 belong to seed 0, rows 2-3 to seed 1.
    act = torch.rand(4, 3, 4) + 0.1
    act[0, :, 1] = 0.0  # zero for every sample: 3 zero outputs, one dead unit
    act[1, 0, 2] = 0.0  # zero for one sample only: 1 zero output, not dead
    act[2, :, :] = 0.0  # a whole critic of seed 1 zero: 12 zero outputs, 4 dead units
    layers = [act, torch.ones(4, 3, 4)]  # second layer never zero
    # PARS: zero outputs / all outputs (2 critics x 3 samples x 4 units x 2 layers = 48 per seed).
    torch.testing.assert_close(dormant_ratio(layers, seeds=2), torch.tensor([4 / 48, 12 / 48]))
    # Sokar: units zero on every input / all units (2 critics x 4 units x 2 layers = 16 per seed).
    torch.testing.assert_close(dead_units(layers, seeds=2), torch.tensor([1 / 16, 4 / 16]))


def test_dormant_ratio_of_a_hand_built_relu_layer():
    # One seed, one critic member, 2 inputs, 3 units; pre-activations chosen by hand.
    pre = torch.tensor([[[1.0, -2.0, 0.5], [-1.0, -3.0, 2.0]]])
    out = torch.relu(pre)  # zeros: unit 1 on both inputs, unit 0 on the second
    torch.testing.assert_close(dormant_ratio([out], seeds=1), torch.tensor([3 / 6]))
    torch.testing.assert_close(dead_units([out], seeds=1), torch.tensor([1 / 3]))


def test_divergence_reads_the_largest_q_of_any_critic():
    lrn = Learner(AgentConfig(num_critics=2, critic_hidden=8, actor_hidden=8), 3, 2, reward_min=0.0)
    with torch.no_grad():  # critic 2's head outputs a huge constant; the minimum stays small
        head = lrn.critic.net.head
        head.weight[1].zero_()
        head.bias[1].fill_(1e6)
    n = 16
    batch = Batch(torch.randn(1, n, 3), torch.rand(1, n, 2) * 2 - 1, torch.zeros(1, n), torch.zeros(1, n, 3), torch.zeros(1, n))
    out = diagnostics(lrn, batch, torch.Generator().manual_seed(0))
    assert out["q_data_max"].item() < 1e3  # the ensemble minimum does not see it
    assert out["q_abs_max"].item() == pytest.approx(1e6)


class FirstActionCritic(torch.nn.Module):
    """Q(s, a) = a_0 for a single critic; records one fake hidden activation."""

    def forward(self, obs, act, subset=None, activations=None):
        if activations is not None:
            activations.append(torch.relu(act))
        return act[..., 0].unsqueeze(1)


def test_ood_overestimation_is_the_fraction_of_uniform_actions_valued_above_data():
    lrn = Learner(AgentConfig(num_critics=2, critic_hidden=8, actor_hidden=8), 3, 2, reward_min=0.0)
    lrn.critic = FirstActionCritic()
    n = 20_000
    batch = Batch(torch.zeros(1, n, 3), torch.full((1, n, 2), 0.5), torch.zeros(1, n), torch.zeros(1, n, 3), torch.zeros(1, n))
    out = diagnostics(lrn, batch, torch.Generator().manual_seed(0))
    # P(U(-1, 1) > 0.5) = 0.25
    assert out["ood_overestimation"].item() == pytest.approx(0.25, abs=0.015)
    assert out["q_data_mean"].item() == pytest.approx(0.5) and out["q_data_max"].item() == pytest.approx(0.5)


def test_divergence_bound_and_check():
    assert q_bound(10.0, 2.0, 0.99) == pytest.approx(2000.0)
    assert not diverged(torch.tensor([1999.0]), {"critic_loss": torch.tensor([1.0])}, 2000.0)
    assert diverged(torch.tensor([2001.0]), {"critic_loss": torch.tensor([1.0])}, 2000.0)
    assert diverged(torch.tensor([1.0]), {"critic_loss": torch.tensor([float("nan")])}, 2000.0)
    assert diverged(torch.tensor([float("inf")]), {}, 2000.0)


def test_action_diagnostics_by_hand():
    """Critics made constant (head weight 0, biases 10, 12, 16: std over critics 2.494, min 10)
    so Q(s, a_data) = Q(s, a_uniform) -> sensitivity 0; the actor constant at 0.5 in each of 2 dims."""
    from rlservice.agent.diagnostics import action_diagnostics

    lrn = Learner(AgentConfig(num_critics=3, critic_hidden=8, actor_hidden=8), 3, 2, reward_min=0.0)
    with torch.no_grad():
        lrn.critic.net.head.weight.zero_()
        lrn.critic.net.head.bias.copy_(torch.tensor([10.0, 12.0, 16.0]).view(3, 1, 1))
        lrn.actor.net.head.weight.zero_()
        lrn.actor.net.head.bias.fill_(float(torch.atanh(torch.tensor(0.5))))
    actions = torch.tensor([[[0.5, 0.5], [-0.5, 0.5], [0.5, -1.0]]])  # distances 0, 1, 1.5
    batch = Batch(torch.randn(1, 3, 3), actions, torch.zeros(1, 3), torch.zeros(1, 3, 3), torch.zeros(1, 3))
    out = action_diagnostics(lrn, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["action_sensitivity"], torch.tensor([0.0]))
    spread = (((10 - 38 / 3) ** 2 + (12 - 38 / 3) ** 2 + (16 - 38 / 3) ** 2) / 3) ** 0.5
    torch.testing.assert_close(out["ensemble_spread"], torch.tensor([spread]))
    torch.testing.assert_close(out["policy_distance"], torch.tensor([2.5 / 3]))
