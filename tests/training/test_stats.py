"""training.stats with numbers worked by hand."""

import numpy as np
import pytest

from training.stats import bootstrap_ci, outcomes, wilson_interval


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
