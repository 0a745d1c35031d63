"""training.stats with numbers worked by hand."""

import numpy as np
import pytest

from training.stats import bootstrap_ci, lc_win_rate, logistic_fit, outcomes, wilson_interval


def test_outcomes_win_tie_loss():
    assert outcomes([0.5, 0.2, 0.1], [0.4, 0.2, 0.3]).tolist() == [1.0, 0.5, 0.0]


def test_wilson_interval_by_hand():
    """8 of 10 at 95 %: z = 1.959964, z^2 = 3.841459, p = 0.8.
    denom = 1 + z^2/n = 1.384146; center = (0.8 + z^2/(2n)) / denom = 0.992073 / 1.384146 = 0.716740;
    half = z/denom * sqrt(p(1-p)/n + z^2/(4n^2)) = 1.415994 * sqrt(0.016 + 0.009604) = 0.226576;
    interval = [0.490164, 0.943316]."""
    lo, hi = wilson_interval(8, 10, 0.95)
    assert lo == pytest.approx(0.490164, abs=1e-5) and hi == pytest.approx(0.943316, abs=1e-5)


def test_wilson_edges():
    """0 of 5: p = 0, center = (z^2/10)/(1 + z^2/5) = 0.384146/1.768292 = 0.217242 = half -> [0, 0.434484]."""
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and hi == pytest.approx(0.434484, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    x = np.array([0.0, 1.0] * 50)
    lo, hi = bootstrap_ci(x, n_resamples=2000, seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.3  # sd of the mean = 0.05 -> about +-0.1
    assert bootstrap_ci(x, seed=0) == (lo, hi)
    assert bootstrap_ci(np.ones(7)) == (1.0, 1.0)


def test_logistic_fit_recovers_two_groups_by_hand():
    """Group x=+1: 5 wins of 6; group x=-1: 1 of 2. The model has one free rate per group, so the MLE
    fits both exactly: a + b = logit(5/6) = ln 5, a - b = logit(1/2) = 0 -> a = b = ln(5)/2 = 0.804719."""
    x = np.array([1.0] * 6 + [-1.0] * 2)
    y = np.array([1, 1, 1, 1, 1, 0, 1, 0], dtype=float)
    a, b = logistic_fit(x, y)
    assert a == pytest.approx(np.log(5) / 2, abs=1e-4) and b == pytest.approx(np.log(5) / 2, abs=1e-4)


def test_lc_win_rate_discounts_a_win_that_came_with_length_by_hand():
    """The policy is longer on 6 prompts (+20 tokens, wins 5) and shorter on 2 (-20 tokens, wins 1):
    raw win rate 6/8 = 0.75. d = (+20 x6, -20 x2) has sd 17.320508, so x = tanh(+-1.154701) = +-0.819;
    two groups again: a + b t = ln 5, a - b t = 0 -> a = ln(5)/2 whatever t, and the length-controlled
    rate is sigmoid(a) = sqrt(5) / (1 + sqrt(5)) = 0.690983."""
    out = np.array([1, 1, 1, 1, 1, 0, 1, 0], dtype=float)
    d = np.array([20.0] * 6 + [-20.0] * 2)
    assert float(lc_win_rate(np.stack([out, d], -1))) == pytest.approx(np.sqrt(5) / (1 + np.sqrt(5)), abs=1e-4)
    assert out.mean() == 0.75


def test_lc_win_rate_equals_the_win_rate_without_length_differences_and_bootstraps():
    """All d = 0: x = 0, only the intercept fits, sigmoid(a) = mean outcome = (1 + 1 + 0.5 + 0) / 4 = 0.625.
    Under bootstrap_ci each resample is refitted; a policy that wins everything stays finite and near 1."""
    out = np.array([1.0, 1.0, 0.5, 0.0])
    v = np.stack([out, np.zeros(4)], -1)
    assert float(lc_win_rate(v)) == pytest.approx(0.625, abs=1e-6)
    lo, hi = bootstrap_ci(v, stat=lc_win_rate, n_resamples=300, seed=1)
    assert 0.0 <= lo <= 0.625 <= hi <= 1.0
    assert 0.99 < float(lc_win_rate(np.stack([np.ones(5), np.arange(5.0)], -1))) <= 1.0
