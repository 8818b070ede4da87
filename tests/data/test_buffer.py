import numpy as np
import torch

from rlservice.data.buffer import ReplayBuffer


def test_sampled_rows_are_whole_transitions_of_the_dataset():
    """Each sampled row's fields come from one and the same transition, whatever the layout."""
    n, obs_dim, act_dim = 500, 3, 2
    ids = np.arange(n, dtype=np.float32)  # every field encodes its transition's index
    obs = ids[:, None] + np.linspace(0, 0.3, obs_dim, dtype=np.float32)
    actions = -ids[:, None] - np.linspace(0, 0.2, act_dim, dtype=np.float32)
    buffer = ReplayBuffer(obs, actions, 2 * ids, obs + 1000, (ids % 7 == 0).astype(np.float32))
    assert len(buffer) == n and torch.equal(buffer.actions, torch.as_tensor(actions))

    batch = buffer.sample(torch.Generator().manual_seed(0), seeds=3, batch_size=64)
    assert batch.obs.shape == (3, 64, obs_dim) and batch.actions.shape == (3, 64, act_dim)
    assert batch.rewards.shape == batch.dones.shape == (3, 64)
    i = batch.obs[..., 0]
    assert len(torch.unique(i)) > 100  # rows drawn across the dataset, differently per seed
    torch.testing.assert_close(batch.obs, i[..., None] + torch.linspace(0, 0.3, obs_dim))
    torch.testing.assert_close(batch.actions, -i[..., None] - torch.linspace(0, 0.2, act_dim))
    torch.testing.assert_close(batch.rewards, 2 * i)
    torch.testing.assert_close(batch.next_obs, batch.obs + 1000)
    assert torch.equal(batch.dones, (i % 7 == 0).float())
