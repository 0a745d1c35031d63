"""Win-rate statistics for policy-vs-SFT evaluation (numpy + stdlib only).

- outcomes: per prompt, 1 if the policy's mean reward beats the SFT's, 0.5 on a tie, 0 on a loss.
- wilson_interval: score interval for a binomial share (the decisive, non-tied prompts).
- bootstrap_ci: percentile interval of a statistic over prompts resampled with replacement (win rate
  with ties as half, mean reward change).
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import numpy as np


def outcomes(policy: np.ndarray, sft: np.ndarray) -> np.ndarray:
    """(n_prompts,) 1.0 win / 0.5 tie / 0.0 loss of the policy's per-prompt reward against the SFT's."""
    policy, sft = np.asarray(policy, dtype=float), np.asarray(sft, dtype=float)
    return np.where(policy > sft, 1.0, np.where(policy == sft, 0.5, 0.0))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for successes / n; (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, center - half)), float(min(1.0, center + half))


def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], np.ndarray] = np.mean,
                 confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over `values` (resampled along axis 0)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))  # (n_resamples, n) resample indices
    stats = stat(values[idx], axis=1)
    lo, hi = np.quantile(stats, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(lo), float(hi)
