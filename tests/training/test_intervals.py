"""Score intervals: rliable's stratified bootstrap over seeds x episodes, checked against the
normal approximation and against what fewer episodes must do to them."""

import numpy as np
import pytest
import rliable.library

from rlservice.training.intervals import Interval, score_interval


def test_the_interval_comes_from_rliable(monkeypatch):
    calls = []
    real = rliable.library.get_interval_estimates

    def spy(score_dict, *args, **kwargs):
        calls.append({k: v.shape for k, v in score_dict.items()} | {"task_bootstrap": kwargs.get("task_bootstrap")})
        return real(score_dict, *args, **kwargs)

    monkeypatch.setattr(rliable.library, "get_interval_estimates", spy)
    scores = np.random.default_rng(1).normal(40, 10, (3, 20))
    interval = score_interval(scores)
    assert calls == [{"scores": (20, 3), "task_bootstrap": True}]  # episodes are runs, seeds are strata
    assert interval.mean == pytest.approx(scores.mean())
    assert (interval.seeds, interval.episodes) == (3, 20)


def test_one_seed_interval_matches_the_normal_approximation():
    scores = np.random.default_rng(2).normal(30, 6, 400)
    interval = score_interval(scores)
    half_width = 1.96 * scores.std() / np.sqrt(len(scores))  # independent of any bootstrap
    assert interval.low < interval.mean < interval.high
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.15)
    assert interval.seeds == 1  # one seed: its episode interval, not a zero std over seeds


def test_fewer_episodes_give_a_wider_interval():
    scores = np.random.default_rng(3).normal(50, 8, (2, 100))
    widths = [score_interval(scores[:, :n]).high - score_interval(scores[:, :n]).low for n in (100, 25, 5)]
    assert widths[0] < widths[1] < widths[2]


def test_identical_scores_have_no_spread_and_the_bootstrap_is_reproducible():
    flat = score_interval(np.full((2, 10), 12.5))
    assert (flat.low, flat.mean, flat.high) == (12.5, 12.5, 12.5)
    scores = np.random.default_rng(4).normal(0, 1, (2, 10))
    state = np.random.get_state()[1].copy()
    assert score_interval(scores) == score_interval(scores)
    assert (np.random.get_state()[1] == state).all()  # NumPy's global generator is given back


def test_text_says_what_the_interval_rests_on_in_its_unit():
    scores = [[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]
    assert score_interval(scores).text().endswith(" (2 seeds x 3 ep)")
    fqe = score_interval([[1.0, 2.0, 3.0, 4.0, 5.0]], unit="FQE critics")
    assert fqe.text().startswith("3.00 [") and fqe.text().endswith(" (1 seed x 5 FQE critics)")
    assert Interval(**fqe.to_json()) == fqe  # the unit survives the JSON the tuner writes
