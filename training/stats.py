"""Win-rate statistics for policy-vs-SFT evaluation (numpy + stdlib only).

- outcomes: per prompt, 1 if the policy's mean reward beats the SFT's, 0.5 on a tie, 0 on a loss.
- wilson_interval: score interval for a binomial share (the decisive, non-tied prompts).
- bootstrap_ci: percentile interval of a statistic over prompts resampled with replacement (win rate
  with ties as half, mean reward change, length-controlled win rate).
- lc_win_rate: the length-controlled win rate of AlpacaEval 2: a logistic regression of the per-prompt
  outcome on tanh(length difference / its sd); sigmoid(intercept) is the win rate the policy would have
  had at equal length.
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


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-6, iters: int = 100) -> np.ndarray:
    """(..., 2) intercept and slope of P(y=1) = sigmoid(a + b x), by Newton's method, for each leading
    index at once (x, y: (..., n); y may be fractional, a tie is 0.5). A tiny l2 keeps a sample the
    policy wins (or loses) entirely finite instead of running off to infinity."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    design = np.stack([np.ones_like(x), x], axis=-1)                     # (..., n, 2)
    theta = np.zeros(x.shape[:-1] + (2,))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(design @ theta[..., None])[..., 0]))      # (..., n)
        grad = (design * (p - y)[..., None]).mean(-2) + l2 * theta      # (..., 2)
        hess = np.einsum("...ni,...nj,...n->...ij", design, design, p * (1 - p)) / x.shape[-1] \
            + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        theta = theta - step
        if np.abs(step).max() < 1e-12:
            break
    return theta


def lc_win_rate(values: np.ndarray, axis: int = -2) -> np.ndarray:
    """Length-controlled win rate: sigmoid(intercept) of logistic_fit(tanh(d / sd(d)), outcome).
    values: (..., n, 2) per prompt (outcome, policy-minus-SFT length); `axis` is the prompts axis
    (bootstrap_ci passes axis=1 with its (n_resamples, n, 2) resamples)."""
    v = np.moveaxis(np.asarray(values, dtype=float), axis, -2)
    out, d = v[..., 0], v[..., 1]
    sd = d.std(axis=-1, keepdims=True)
    x = np.tanh(np.divide(d, sd, out=np.zeros_like(d), where=sd > 0))
    a = logistic_fit(x, out)[..., 0]
    return 1 / (1 + np.exp(-a))
