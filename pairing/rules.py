"""Pairing rules: pure numpy functions from rewards to (chosen, rejected) indices.

Every strategy has a batch form over a padded (n_prompts, k) reward array with an eligibility
mask, returning (rows, chosen, rejected) int64 arrays sorted by (row, chosen, rejected); one
prompt is a batch of one row. Rewards must be finite where
eligible (pairing.pairs routes NaN/inf rows to the error list before calling these). Ties never
pair in any strategy: every emitted pair has r_chosen > r_rejected.

Algorithm 1 (RS-DPO, arXiv 2402.10038) accepts the ordered pair (j, l) when
sigmoid((r_j - r_l) / tau) > eta. `sigmoid` below is the reference float64 evaluation of that
rule. Because the rounded sigmoid is non-decreasing in x, {x : sigmoid(x) > eta} is exactly
{x : x > logit_boundary(eta)}, where logit_boundary is the largest float64 x with sigmoid(x) <= eta,
found by bisection over the float's bit pattern with the same `sigmoid`. The batch rule compares
x = (r_j - r_l) / tau against that boundary (one subtraction, one division, one compare per
candidate) and is therefore the sigmoid rule, float for float; tests/pairing/test_rules.py checks
every float in a window around the boundary, wide enough to cover where the rounded sigmoid
is within several ulps of eta. In reward units the threshold is tau * ln(eta / (1 - eta))
(`raw_threshold`, 1.7346 at the paper's tau = 1, eta = 0.85), reported for humans.

Imports numpy and the stdlib only.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np

# Candidate (j, l) cells per chunk of the pairwise kernel: ~1M keeps the (b, k, k) temporaries
# (float64 + bools) around 10 MB, cache-friendly, whatever k is.
_CHUNK_CELLS = 1 << 20

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]   # (rows, chosen, rejected), int64 each


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Stable float64 logistic: 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) below (no overflow)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def raw_threshold(tau: float, eta: float) -> float:
    """Minimum raw reward gap Algorithm 1 needs: tau * ln(eta / (1 - eta)) (strictly above it)."""
    return tau * math.log(eta / (1.0 - eta))


@functools.lru_cache(maxsize=256)
def logit_boundary(eta: float) -> float:
    """Largest float64 x with sigmoid(x) <= eta, so that sigmoid(x) > eta <=> x > logit_boundary(eta)."""
    if not 0.5 < eta < 1.0:
        raise ValueError(f"eta={eta} must lie strictly inside (0.5, 1)")

    def accepts(bits: int) -> bool:
        return bool(sigmoid(np.array([bits], dtype=np.int64).view(np.float64))[0] > eta)

    # Positive float64s order like their bit patterns, so bisect on the integers.
    # Invariant: sigmoid(lo) <= eta < sigmoid(hi); sigmoid(0) = 0.5 and sigmoid(800) rounds to 1.0.
    lo = 0
    hi = int(np.array([800.0]).view(np.int64)[0])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if accepts(mid):
            hi = mid
        else:
            lo = mid
    return float(np.array([lo], dtype=np.int64).view(np.float64)[0])


def stable_key(seed: int, name: str) -> int:
    """64-bit key from (seed, name) via blake2b: the same on every machine and Python run (unlike hash())."""
    digest = hashlib.blake2b(f"{seed}\x1f{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


# ---- batch forms: rewards (n, k) float64, mask (n, k) bool (True = eligible response) ----------------

def _none() -> Pairs:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def _ordered_pairs(rewards: np.ndarray, mask: np.ndarray, scale: float, bound: float) -> Pairs:
    """Every eligible ordered (j, l) with (r_j - r_l) / scale > bound, one (b, k, k) block at a time."""
    n, k = rewards.shape
    step = max(1, _CHUNK_CELLS // max(1, k * k))
    rows, chosen, rejected = [], [], []
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, step):
            r = rewards[start:start + step]
            m = mask[start:start + step]
            x = r[:, :, None] - r[:, None, :]          # (b, k, k): x[b, j, l] = r_j - r_l, raw reward units
            if scale != 1.0:                           # x / 1.0 == x exactly: skip the division
                x /= scale
            ok = x > bound                             # the diagonal is 0 and bound >= 0: no self-pairs
            ok &= m[:, :, None]
            ok &= m[:, None, :]
            flat = np.flatnonzero(ok)                  # row-major: sorted by (row, chosen, rejected)
            b, jl = np.divmod(flat, k * k)
            j, l_ = np.divmod(jl, k)
            rows.append(b + start)
            chosen.append(j)
            rejected.append(l_)
    if not rows:
        return _none()
    return np.concatenate(rows), np.concatenate(chosen), np.concatenate(rejected)


def rs_dpo_batch(rewards: np.ndarray, mask: np.ndarray, tau: float, eta: float) -> Pairs:
    """Algorithm 1 over many prompts: every eligible ordered (j, l) with sigmoid((r_j - r_l)/tau) > eta."""
    return _ordered_pairs(rewards, mask, tau, logit_boundary(eta))


def all_above_margin_batch(rewards: np.ndarray, mask: np.ndarray, margin: float) -> Pairs:
    """Every eligible ordered (j, l) with r_j - r_l > margin (raw reward units, strict; margin >= 0)."""
    if margin < 0:
        raise ValueError(f"margin={margin} must be >= 0 (a negative margin would pair both directions)")
    return _ordered_pairs(rewards, mask, 1.0, margin)


def _top(rewards: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index of the largest eligible reward per row, and that reward (-inf for rows with none)."""
    masked = np.where(mask, rewards, -np.inf)
    best = masked.argmax(axis=1)
    return best, masked[np.arange(len(best)), best]


def best_worst_batch(rewards: np.ndarray, mask: np.ndarray) -> Pairs:
    """One pair per prompt: first argmax vs first argmin, when they differ in reward."""
    if not mask.any():                      # also k = 0, where argmax would raise
        return _none()
    best, top = _top(rewards, mask)
    masked = np.where(mask, rewards, np.inf)
    worst = masked.argmin(axis=1)
    rows = np.flatnonzero(top > masked[np.arange(len(worst)), worst])
    return rows, best[rows], worst[rows]


def best_random_batch(rewards: np.ndarray, mask: np.ndarray, keys: np.ndarray) -> Pairs:
    """One pair per prompt: first argmax vs the (key mod m)-th of the m eligible responses scoring below it.

    `keys` (n,) uint64 come from stable_key(seed, prompt_id), so a prompt's pick does not depend on
    its shard, batch or position.
    """
    if not mask.any():                      # also k = 0, where argmax would raise
        return _none()
    best, top = _top(rewards, mask)
    lower = mask & (rewards < top[:, None])            # strictly below the best: ties never pair
    count = lower.sum(axis=1)
    rows = np.flatnonzero(count > 0)
    pick = (np.asarray(keys, dtype=np.uint64)[rows] % count[rows].astype(np.uint64)).astype(np.int64)
    rank = np.cumsum(lower[rows], axis=1) - 1           # rank of each lower response among them
    hit = lower[rows] & (rank == pick[:, None])
    return rows, best[rows], hit.argmax(axis=1)


def sigma_batch(rewards: np.ndarray, mask: np.ndarray, c: float) -> Pairs:
    """One pair per prompt: first argmax vs the response below it nearest mu - c * sigma.

    mu and sigma (population std) are over the prompt's eligible rewards; distance ties go to the
    lowest index.
    """
    if not mask.any():                      # also k = 0, where argmax would raise
        return _none()
    count = np.maximum(mask.sum(axis=1), 1)
    mu = np.where(mask, rewards, 0.0).sum(axis=1) / count
    sd = np.sqrt((np.where(mask, rewards - mu[:, None], 0.0) ** 2).sum(axis=1) / count)
    target = mu - c * sd
    best, top = _top(rewards, mask)
    lower = mask & (rewards < top[:, None])
    dist = np.where(lower, np.abs(rewards - target[:, None]), np.inf)
    rows = np.flatnonzero(lower.any(axis=1))
    return rows, best[rows], dist[rows].argmin(axis=1)
