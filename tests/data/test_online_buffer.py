import numpy as np
import pytest
import torch

from rlservice.agent.normalizer import ObservationNormalizer
from rlservice.data.online_buffer import OnlineReplayBuffer, Transitions

OBS, ACT = 3, 2


def transitions(first: int, n: int, source: int = 0, ends: dict[int, str] | None = None, starts=()) -> Transitions:
    """n transitions numbered first..first+n-1: obs rows hold the number, next_obs the number + 1."""
    ids = np.arange(first, first + n, dtype=np.float32)
    ends = ends or {}
    return Transitions(
        obs=np.repeat(ids[:, None], OBS, axis=1),
        actions=np.stack([np.tanh(ids / 7), -np.tanh(ids / 7)], axis=1).astype(np.float32),
        rewards=ids / 10,
        next_obs=np.repeat(ids[:, None] + 1, OBS, axis=1),
        terminated=np.array([ends.get(int(i)) == "terminated" for i in ids]),
        truncated=np.array([ends.get(int(i)) == "truncated" for i in ids]),
        episode_start=np.isin(ids, starts),
        source=np.full(n, source, np.int64),
    )


def numbers(t: Transitions) -> list[int]:
    return t.obs[:, 0].astype(int).tolist()


def test_add_and_sample():
    buffer = OnlineReplayBuffer(OBS, ACT, capacity=100)
    buffer.add(transitions(0, 30, ends={4: "terminated", 9: "truncated"}))
    assert len(buffer) == buffer.added == 30
    batch = buffer.sample(torch.Generator().manual_seed(0), seeds=3, batch_size=64)
    assert batch.obs.shape == batch.next_obs.shape == (3, 64, OBS)
    assert batch.actions.shape == (3, 64, ACT) and batch.rewards.shape == batch.dones.shape == (3, 64)
    ids = batch.obs[..., 0]
    assert set(ids.unique().int().tolist()) <= set(range(30)) and len(ids.unique()) > 20
    torch.testing.assert_close(batch.next_obs[..., 0], ids + 1)
    torch.testing.assert_close(batch.rewards, ids / 10)
    torch.testing.assert_close(batch.dones, (ids == 4).float())  # terminations only: a time-out bootstraps


def test_storage_grows_up_to_capacity_then_overwrites_the_oldest():
    buffer = OnlineReplayBuffer(OBS, ACT, capacity=3000)
    buffer.add(transitions(0, 1000))
    assert buffer._storage["obs"].shape[0] == 1024
    buffer.add(transitions(1000, 1500))
    assert buffer._storage["obs"].shape[0] == 2500  # grown to fit, more than doubling when needed
    buffer.add(transitions(2500, 1000))
    assert buffer._storage["obs"].shape[0] == 3000  # never beyond capacity
    assert (len(buffer), buffer.added) == (3000, 3500)
    assert numbers(buffer.transitions()) == list(range(500, 3500))
    assert numbers(buffer.transitions(end=800)) == list(range(500, 800))
    sampled = buffer.sample(torch.Generator().manual_seed(1), 1, 5000).obs[..., 0]
    assert sampled.min() >= 500 and sampled.max() <= 3499


def test_a_batch_larger_than_the_buffer_keeps_its_end():
    buffer = OnlineReplayBuffer(OBS, ACT, capacity=10)
    buffer.add(transitions(0, 4))
    buffer.add(transitions(4, 25))
    assert numbers(buffer.transitions()) == list(range(19, 29)) and buffer.added == 29


def test_state_dict_round_trip_keeps_contents_exactly(tmp_path):
    normalizer = ObservationNormalizer(np.full(OBS, 2.0), np.full(OBS, 4.0))
    buffer = OnlineReplayBuffer(OBS, ACT, capacity=50, normalizer=normalizer)
    for k in range(7):  # 70 transitions through a 50-row buffer: wrapped around
        buffer.add(transitions(10 * k, 10, source=k % 2, ends={10 * k + 9: "truncated"}, starts=[10 * k]))
    torch.save(buffer.state_dict(), tmp_path / "buffer.pt")

    restored = OnlineReplayBuffer(OBS, ACT, capacity=50, normalizer=normalizer)
    restored.load_state_dict(torch.load(tmp_path / "buffer.pt", weights_only=True))
    assert (restored.added, len(restored)) == (70, 50)
    for name, value in vars(buffer.transitions()).items():
        np.testing.assert_array_equal(getattr(restored.transitions(), name), value, err_msg=name)
    a = buffer.sample(torch.Generator().manual_seed(3), 2, 32)
    b = restored.sample(torch.Generator().manual_seed(3), 2, 32)
    for name in ("obs", "actions", "rewards", "next_obs", "dones"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    restored.add(transitions(70, 5))  # and it goes on from where it was
    assert numbers(restored.transitions())[-6:] == [69, 70, 71, 72, 73, 74]

    with pytest.raises(ValueError, match="does not fit"):
        OnlineReplayBuffer(OBS, ACT, capacity=60).load_state_dict(buffer.state_dict())


def test_sampled_observations_are_normalised_when_asked():
    buffer = OnlineReplayBuffer(OBS, ACT, capacity=20, normalizer=ObservationNormalizer(np.full(OBS, 1.0), np.full(OBS, 2.0)))
    buffer.add(transitions(0, 20))
    batch = buffer.sample(torch.Generator().manual_seed(0), 1, 50)
    raw = batch.rewards * 10  # the transition's number
    torch.testing.assert_close(batch.obs[..., 0], (raw - 1) / 2)
    torch.testing.assert_close(batch.next_obs[..., 0], raw / 2)
    assert numbers(buffer.transitions()) == list(range(20))  # stored raw


def test_episodes_regroup_interleaved_streams():
    """Two workers' batches interleave; each episode comes back whole, in the env's action units."""
    buffer = OnlineReplayBuffer(OBS, ACT, capacity=100)
    # worker 0: episode 0..5 terminates, episode 6.. is still running; worker 1: 100..103 truncated, then 104..
    buffer.add(transitions(0, 4, source=0, starts=[0]))
    buffer.add(transitions(100, 3, source=1, starts=[100]))
    buffer.add(transitions(4, 5, source=0, ends={5: "terminated"}, starts=[6]))
    buffer.add(transitions(103, 3, source=1, ends={103: "truncated"}, starts=[104]))
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 1.0])
    episodes = buffer.episodes(low, high)

    firsts = [int(ep.observations[0, 0]) for ep in episodes]
    assert firsts == [0, 100, 6, 104]  # ordered by arrival of their first transition
    lengths = [len(ep.actions) for ep in episodes]
    assert lengths == [6, 4, 3, 2]
    for ep in episodes:
        np.testing.assert_array_equal(ep.observations[1:, 0], ep.observations[:-1, 0] + 1)
        assert ep.observations.shape == (len(ep.actions) + 1, OBS)
        assert not (ep.terminations[:-1] | ep.truncations[:-1]).any()
    assert (episodes[0].terminations[-1], episodes[0].truncations[-1]) == (True, False)
    assert (episodes[1].terminations[-1], episodes[1].truncations[-1]) == (False, True)
    assert all(ep.truncations[-1] and not ep.terminations[-1] for ep in episodes[2:])  # cut: marked truncated
    unit = np.stack([np.tanh(np.arange(6) / 7), -np.tanh(np.arange(6) / 7)], axis=1)
    np.testing.assert_allclose(episodes[0].actions, low + (unit + 1) / 2 * (high - low), rtol=1e-6)

    before = buffer.episodes(low, high, end=5)  # the first five arrivals: 0..3 of worker 0, 100 of worker 1
    assert [int(ep.observations[0, 0]) for ep in before] == [0, 100]
    assert [len(ep.actions) for ep in before] == [4, 1] and all(ep.truncations[-1] for ep in before)
