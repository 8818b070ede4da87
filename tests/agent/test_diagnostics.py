import pytest
import torch

from rlservice.agent.diagnostics import diagnostics, diverged, dormant_ratio, q_bound
from rlservice.agent.learner import Batch, Learner
from rlservice.config.run import AgentConfig


def test_dormant_ratio_counts_units_dead_on_the_whole_batch_per_seed():
    # 2 seeds x 2 critics, 3 samples, 4 units: rows 0-1 belong to seed 0, rows 2-3 to seed 1.
    act = torch.rand(4, 3, 4) + 0.1
    act[0, :, 1] = 0.0  # dead for every sample: dormant
    act[1, 0, 2] = 0.0  # zero for one sample only: not dormant
    act[2, :, :] = 0.0  # a whole critic of seed 1 dead
    ratio = dormant_ratio([act, torch.ones(4, 3, 4)], seeds=2)
    torch.testing.assert_close(ratio, torch.tensor([1 / 16, 4 / 16]))


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
