"""Preference pairs a judge is fitted and checked on, and the Bradley-Terry fit of its head
(stdlib + numpy only).

- reference_pairs: for each prompt with a reference answer (AlpacaEval's GPT-4 outputs), the
  reference against corrupted versions of it, one pair per Corruption. No model writes these, so
  they exist for held-out prompts too: a judge's pair accuracy on them says whether it ranks a good
  answer over a broken one at all (a weak judge is visibly weak).
- fit_bradley_terry: the weight vector w of a linear reward r(x) = w . h(x) over fixed features
  h, maximising the Bradley-Terry likelihood sigmoid(r(chosen) - r(rejected)) with an L2 penalty.

Used by rewarding/judge.py (python -m rewarding.judge).
"""

from __future__ import annotations

import random
from enum import StrEnum

import numpy as np

REFUSAL = "I'm sorry, but I can't help with that request."


class Corruption(StrEnum):
    """How the rejected answer of a reference pair is made from the reference (or another's)."""

    OTHER = "other"          # another prompt's reference, clipped to the same length: relevance
    TRUNCATED = "truncated"  # the reference's first third: completeness (rejected is shorter)
    REFUSAL = "refusal"      # a canned refusal: helpfulness
    SHUFFLED = "shuffled"    # the reference's words in random order: fluency (same length)
    REPEATED = "repeated"    # the reference's first sentence looped to the same length: degeneration
    APPENDED = "appended"    # the reference, then another prompt's answer: focus (rejected is longer)


def _first_sentence(words: list[str]) -> list[str]:
    for i, w in enumerate(words):
        if w.endswith((".", "!", "?", ":")) and i >= 3:
            return words[: i + 1]
    return words[: max(4, len(words) // 3)]


def reference_pairs(rows: list[tuple[str, list[dict], str]], words: int, seed: int) -> list[dict]:
    """rows: (prompt_id, conversation, reference) with a non-empty reference, at least two rows.
    The reference is clipped to its first `words` words (the length regime of the responses the
    judge will rank). Returns one dict per (prompt, corruption): prompt_id, prompt, chosen, rejected,
    kind. Deterministic in (rows, words, seed)."""
    if len(rows) < 2:
        raise ValueError(f"reference pairs need at least two prompts with a reference answer, got {len(rows)}")
    rng = random.Random(seed)
    clipped = [ref.split()[:words] for _, _, ref in rows]
    pairs = []
    for i, (pid, conv, _) in enumerate(rows):
        good = clipped[i]
        other = clipped[(i + 1 + rng.randrange(len(rows) - 1)) % len(rows)]  # never row i itself
        first = _first_sentence(good)
        shuffled = good[:]
        rng.shuffle(shuffled)
        for kind in Corruption:
            match kind:
                case Corruption.OTHER:
                    bad = other[: len(good)]
                case Corruption.TRUNCATED:
                    bad = good[: max(1, len(good) // 3)]
                case Corruption.REFUSAL:
                    bad = REFUSAL.split()
                case Corruption.SHUFFLED:
                    bad = shuffled
                case Corruption.REPEATED:
                    bad = (first * (len(good) // len(first) + 1))[: len(good)]
                case Corruption.APPENDED:
                    bad = good + other[: max(8, len(good) // 2)]
            chosen, rejected = " ".join(good), " ".join(bad)
            if chosen != rejected:  # e.g. a one-sentence reference looped is itself
                pairs.append({"prompt_id": pid, "prompt": conv, "chosen": chosen, "rejected": rejected,
                              "kind": kind.value})
    return pairs


def fit_bradley_terry(diff: np.ndarray, l2: float, iters: int = 50) -> np.ndarray:
    """(d,) w minimising mean(softplus(-diff @ w)) + l2/2 * |w|^2, by Newton's method (the loss is
    strictly convex for l2 > 0). diff: (n_pairs, d) features of chosen minus features of rejected."""
    diff = np.asarray(diff, dtype=np.float64)
    n, d = diff.shape
    w = np.zeros(d)
    for _ in range(iters):
        p = 1 / (1 + np.exp(diff @ w))                     # (n,) P(model prefers rejected)
        grad = -(diff * p[:, None]).mean(0) + l2 * w
        hess = (diff * (p * (1 - p))[:, None]).T @ diff / n + l2 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w
