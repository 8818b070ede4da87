"""The expected best score of n trials (Dodge et al. 2019) against a hand computation."""

import pytest

from rlservice.training.tuning_budget import budget_curve, expected_max


def test_expected_maximum_of_n_trials_by_hand():
    # Scores 10, 20, 40 (N = 3), n drawn with replacement:
    # n=1: the mean, 70/3. n=2: P(max=10)=1/9, P(max=20)=4/9-1/9=3/9, P(max=40)=1-4/9=5/9
    #      -> (10 + 60 + 200)/9 = 30. n=3: 1/27, 8/27-1/27=7/27, 19/27 -> (10 + 140 + 760)/27.
    got = expected_max([40, 10, 20])
    assert got.tolist() == pytest.approx([70 / 3, 30.0, 910 / 27])


def test_ties_and_a_single_trial():
    assert expected_max([5, 5, 5]).tolist() == pytest.approx([5, 5, 5])
    assert expected_max([7.5]).tolist() == [7.5]


def test_the_curve_rises_to_the_best_trial_inside_its_band():
    scores = [1.0, 2.0, 3.0, 30.0, 4.0, 2.5]
    curve = budget_curve(scores)
    means = curve["expected_max"]
    assert curve["trials"] == [1, 2, 3, 4, 5, 6]
    assert all(a < b for a, b in zip(means, means[1:])) and means[-1] < max(scores)
    assert all(lo <= m <= hi for lo, m, hi in zip(curve["low"], means, curve["high"]))
    assert curve["high"][-1] <= max(scores) and curve["low"][0] >= min(scores)
