"""rewarding.preference: reference-vs-corrupted pairs and the Bradley-Terry head fit, by hand."""

import numpy as np
import pytest

from rewarding.preference import REFUSAL, Corruption, fit_bradley_terry, reference_pairs

ROWS = [
    ("a", [{"role": "user", "content": "Name a fruit."}], "Apples are a fruit. They grow on trees in orchards."),
    ("b", [{"role": "user", "content": "Name a colour."}], "Blue is a colour. The sky looks blue on clear days."),
]


def test_one_pair_per_corruption_with_the_clipped_reference_chosen():
    pairs = reference_pairs(ROWS, words=6, seed=0)
    a = {p["kind"]: p for p in pairs if p["prompt_id"] == "a"}
    assert set(a) == {c.value for c in Corruption}
    assert {p["chosen"] for p in a.values()} == {"Apples are a fruit. They grow"}  # first 6 words
    assert a["other"]["rejected"] == "Blue is a colour. The sky"          # the only other row, same length
    assert a["truncated"]["rejected"] == "Apples are"                     # 6 // 3 words
    assert a["refusal"]["rejected"] == REFUSAL
    assert sorted(a["shuffled"]["rejected"].split()) == sorted(a["shuffled"]["chosen"].split())
    assert a["repeated"]["rejected"] == "Apples are a fruit. Apples are"  # first sentence looped to 6 words
    assert a["appended"]["rejected"] == "Apples are a fruit. They grow Blue is a colour. The sky"  # + max(8, 3)
    assert reference_pairs(ROWS, words=6, seed=0) == pairs
    with pytest.raises(ValueError, match="at least two prompts"):
        reference_pairs(ROWS[:1], words=6, seed=0)


def test_bradley_terry_fit_by_hand():
    """One feature, diffs (+1, +1, +1, -1): the loss 3/4 softplus(-w) + 1/4 softplus(w) has its minimum
    where sigmoid(w) = 3/4 (no penalty), w = ln 3 = 1.098612. With l2 = 0.1 the gradient
    -3/4 (1 - s) + 1/4 s + 0.1 w = 0 moves it to s - 3/4 + 0.1 w = 0: w = 0.7369 (s = 0.6763)."""
    diff = np.array([[1.0], [1.0], [1.0], [-1.0]])
    assert fit_bradley_terry(diff, l2=1e-9)[0] == pytest.approx(np.log(3), abs=1e-5)
    w = fit_bradley_terry(diff, l2=0.1)[0]
    assert 1 / (1 + np.exp(-w)) - 0.75 + 0.1 * w == pytest.approx(0.0, abs=1e-9)
    assert w == pytest.approx(0.7369, abs=1e-4)
