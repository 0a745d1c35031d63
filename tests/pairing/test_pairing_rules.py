"""pairing.rules: hand-worked numbers for every strategy, the exact sigmoid boundary, properties."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pairing import rules

# ---- one-prompt forms of the batch rules (rewards (k,) float64, all eligible): the hand-worked
# examples below read best one prompt at a time.

def _one(pairs: rules.Pairs) -> tuple[np.ndarray, np.ndarray]:
    _, chosen, rejected = pairs
    return chosen, rejected


def _row(rewards) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rewards, dtype=np.float64).reshape(1, -1)
    return r, np.ones(r.shape, dtype=bool)


def rs_dpo(rewards, tau: float, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 for one prompt. rewards [0, 1, 3], tau 1, eta 0.85 -> ([2, 2], [0, 1])."""
    return _one(rules.rs_dpo_batch(*_row(rewards), tau, eta))


def all_above_margin(rewards, margin: float) -> tuple[np.ndarray, np.ndarray]:
    return _one(rules.all_above_margin_batch(*_row(rewards), margin))


def best_worst(rewards) -> tuple[np.ndarray, np.ndarray]:
    return _one(rules.best_worst_batch(*_row(rewards)))


def best_random(rewards, key: int) -> tuple[np.ndarray, np.ndarray]:
    return _one(rules.best_random_batch(*_row(rewards), np.array([key], dtype=np.uint64)))


def sigma(rewards, c: float) -> tuple[np.ndarray, np.ndarray]:
    return _one(rules.sigma_batch(*_row(rewards), c))


def pairs_of(chosen, rejected):
    return list(zip(chosen.tolist(), rejected.tolist(), strict=True))


# ---- rs-dpo (Algorithm 1) -------------------------------------------------------------------------

def test_rs_dpo_paper_defaults():
    """rewards [0, 1, 3], tau 1, eta 0.85: threshold ln(0.85 / 0.15) = ln(5.667) = 1.7346.
    Gaps: 3-0 = 3 > 1.73 accept (2,0); 3-1 = 2 > 1.73 accept (2,1); 1-0 = 1 reject; every reverse
    gap is negative (sigmoid < 0.5). -> (2,0), (2,1) only."""
    assert pairs_of(*rs_dpo([0.0, 1.0, 3.0], tau=1.0, eta=0.85)) == [(2, 0), (2, 1)]
    assert math.isclose(rules.raw_threshold(1.0, 0.85), 1.7346, abs_tol=1e-4)


def test_rs_dpo_lower_tau_admits_smaller_gaps():
    """tau 0.5, eta 0.85: threshold 0.5 * 1.7346 = 0.8673, so 1-0 = 1 now passes too:
    sigmoid(1 / 0.5) = sigmoid(2) = 0.8808 > 0.85. -> (1,0), (2,0), (2,1)."""
    assert pairs_of(*rs_dpo([0.0, 1.0, 3.0], tau=0.5, eta=0.85)) == [(1, 0), (2, 0), (2, 1)]


def test_rs_dpo_higher_eta_needs_bigger_gaps():
    """eta 0.9, tau 1: threshold ln(9) = 2.1972. 3-0 = 3 passes, 3-1 = 2 does not. -> (2,0)."""
    assert pairs_of(*rs_dpo([0.0, 1.0, 3.0], tau=1.0, eta=0.9)) == [(2, 0)]


def test_rs_dpo_gap_exactly_at_threshold_is_rejected():
    """eta := sigmoid(2.0) = 0.8808 (as float64). A gap of exactly 2 gives sigmoid(2/1) == eta, and the
    rule is strict (>), so no pair; the next float above 2 gives sigmoid > eta, so a pair."""
    eta = float(rules.sigmoid(np.array([2.0]))[0])
    assert pairs_of(*rs_dpo([0.0, 2.0], tau=1.0, eta=eta)) == []
    assert pairs_of(*rs_dpo([0.0, np.nextafter(2.0, 3.0)], tau=1.0, eta=eta)) == [(1, 0)]
    # and in the paper's setting, exactly at the float boundary and one ulp above it:
    x_star = rules.logit_boundary(0.85)
    assert pairs_of(*rs_dpo([0.0, x_star], 1.0, 0.85)) == []
    assert pairs_of(*rs_dpo([0.0, np.nextafter(x_star, 9.0)], 1.0, 0.85)) == [(1, 0)]


def test_ties_never_pair():
    """sigmoid(0) = 0.5 < eta for every allowed eta; the argmax strategies need a strictly lower reward."""
    tied = [1.0, 1.0, 1.0]
    assert pairs_of(*rs_dpo(tied, 1e-9, 0.5000001)) == []
    assert pairs_of(*all_above_margin(tied, 0.0)) == []
    assert pairs_of(*best_worst(tied)) == []
    assert pairs_of(*best_random(tied, 12345)) == []
    assert pairs_of(*sigma(tied, 2.0)) == []


def test_threshold_form_equals_sigmoid_form_at_every_float_near_the_boundary():
    """Proof of the threshold implementation at the boundary. For each eta, the floats x whose true
    sigmoid lies within 16 ulps of eta form a window around logit_boundary(eta); outside it the
    rounded sigmoid cannot cross eta. Inside it, (x > boundary) must equal (sigmoid(x) > eta) and the
    rounded sigmoid must be non-decreasing (so the bisection found the unique switch point).
    Every float of the window is checked when it has <= 2 * 200k floats (all eta in [0.51, 0.9999]);
    for eta = 0.5000001 (window ~1.3e8 floats: x is tiny, so its ulps are) the central 400k floats are
    checked exhaustively and 200k more drawn uniformly from the whole window."""
    rng = np.random.default_rng(0)
    for eta in (0.5000001, 0.51, 0.6, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999, 0.9999):
        x_star = rules.logit_boundary(eta)
        need = int(16 * np.spacing(eta) / (eta * (1 - eta)) / np.spacing(x_star)) + 64   # window half-width
        half = min(need, 200_000)
        center = np.array([x_star]).view(np.int64)[0]
        offsets = np.arange(-half, half + 1, dtype=np.int64)
        if need > half:
            offsets = np.unique(np.concatenate([offsets, rng.integers(-need, need + 1, 200_000)]))
        xs = (center + offsets).view(np.float64)                      # sorted float64s around the boundary
        s = rules.sigmoid(xs)
        assert np.all(np.diff(s) >= 0), f"rounded sigmoid not monotone near eta={eta}"
        assert np.array_equal(xs > x_star, s > eta), f"threshold != sigmoid near eta={eta}"
        zero = np.searchsorted(offsets, 0)
        assert s[zero] <= eta < s[zero + 1]
        # the human-readable raw threshold agrees to rounding (tau = 1)
        assert math.isclose(x_star, rules.raw_threshold(1.0, eta), rel_tol=1e-6)


@settings(max_examples=150, deadline=None)
@given(x=st.floats(0, 40, allow_nan=False), tau=st.floats(0.01, 10), eta=st.floats(0.5001, 0.9999))
def test_batch_rule_matches_sigmoid_form_with_any_tau(x, tau, eta):
    """The batched rule divides the raw gap by tau and compares; the reference divides and takes the
    sigmoid. Rewards [0, d] with d = x * tau, including values right at the boundary."""
    for d in (x * tau, rules.logit_boundary(eta) * tau, np.nextafter(rules.logit_boundary(eta) * tau, 99)):
        got = len(rs_dpo([0.0, d], tau, eta)[0]) == 1
        want = bool(rules.sigmoid(np.array([(d - 0.0) / tau]))[0] > eta)
        assert got == want


# ---- the other strategies -------------------------------------------------------------------------

def test_best_worst():
    """[0.5, 2.0, -1.0, 2.0]: first argmax is index 1 (2.0, index 3 ties it), argmin is index 2 (-1.0)."""
    assert pairs_of(*best_worst([0.5, 2.0, -1.0, 2.0])) == [(1, 2)]


def test_best_random_picks_among_strictly_lower():
    """[0, 1, 3, 3]: chosen = first argmax = 2; candidates strictly below 3.0 are indices 0, 1 (index 3
    ties the best: excluded). pick = key mod 2: key 4 -> 0 -> index 0; key 7 -> 1 -> index 1."""
    assert pairs_of(*best_random([0.0, 1.0, 3.0, 3.0], 4)) == [(2, 0)]
    assert pairs_of(*best_random([0.0, 1.0, 3.0, 3.0], 7)) == [(2, 1)]


def test_stable_key_is_pinned():
    """blake2b-8 of '0\\x1fp' read little-endian: the same on every machine and Python version."""
    assert rules.stable_key(0, "p") == 15780306284661078033
    assert rules.stable_key(1, "p") != rules.stable_key(0, "p")


def test_all_above_margin():
    """[0, 1, 3]: gaps 3-0 = 3, 3-1 = 2, 1-0 = 1. margin 1.5 -> (2,0), (2,1); margin 0 -> all three;
    margin 2 -> only (2,0) (3-1 = 2 is not > 2)."""
    assert pairs_of(*all_above_margin([0.0, 1.0, 3.0], 1.5)) == [(2, 0), (2, 1)]
    assert pairs_of(*all_above_margin([0.0, 1.0, 3.0], 0.0)) == [(1, 0), (2, 0), (2, 1)]
    assert pairs_of(*all_above_margin([0.0, 1.0, 3.0], 2.0)) == [(2, 0)]


def test_sigma():
    """[0, 2, 4, 6, 10]: mu = 22/5 = 4.4; var = (4.4² + 2.4² + 0.4² + 1.6² + 5.6²)/5 = 59.2/5 = 11.84,
    sigma = 3.4409. Chosen = index 4 (10).
    c = 1: target 4.4 - 3.441 = 0.959 -> nearest below-best is 0 (dist 0.959; 2 is at 1.041) -> (4, 0).
    c = 0.5: target 4.4 - 1.720 = 2.680 -> 2 (dist 0.680) beats 4 (1.320) -> (4, 1).
    c = 0: target 4.4 -> 4 (dist 0.4) -> (4, 2)."""
    r = [0.0, 2.0, 4.0, 6.0, 10.0]
    assert pairs_of(*sigma(r, 1.0)) == [(4, 0)]
    assert pairs_of(*sigma(r, 0.5)) == [(4, 1)]
    assert pairs_of(*sigma(r, 0.0)) == [(4, 2)]


def test_sigma_never_rejects_the_chosen_or_a_tie():
    """[5, 5, 1]: mu = 11/3, c = 0 -> target 3.67; index 1 (5.0, dist 1.33) would be nearest but ties the
    best, so the rejected is index 2 (1.0)."""
    assert pairs_of(*sigma([5.0, 5.0, 1.0], 0.0)) == [(0, 2)]


def test_single_response_and_empty_give_nothing():
    for fn in (lambda r: rs_dpo(r, 1.0, 0.85), best_worst, lambda r: best_random(r, 3),
               lambda r: all_above_margin(r, 0.0), lambda r: sigma(r, 2.0)):
        assert pairs_of(*fn([1.0])) == []


# ---- properties ------------------------------------------------------------------------------------

reward_lists = st.lists(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]),
                                  st.floats(-20, 20, allow_nan=False, allow_infinity=False)),
                        min_size=0, max_size=12)


@settings(max_examples=150, deadline=None)
@given(r=reward_lists, tau=st.floats(0.01, 10), eta=st.floats(0.5001, 0.9999))
def test_rs_dpo_properties(r, tau, eta):
    """Exactly the ordered pairs the paper's double loop would emit (with the reference sigmoid), which
    are better-than, unique, never self-pairs, never ties, at most k(k-1)/2."""
    chosen, rejected = rs_dpo(r, tau, eta)
    got = pairs_of(chosen, rejected)
    ra = np.array(r, dtype=np.float64)
    accept = rules.sigmoid((ra[:, None] - ra[None, :]) / tau) > eta      # accept[j, l]: the reference rule
    want = [(j, l_) for j in range(len(r)) for l_ in range(len(r)) if j != l_ and accept[j, l_]]
    assert got == want
    assert all(r[j] > r[l_] and j != l_ for j, l_ in got)
    assert len(set(got)) == len(got) <= len(r) * (len(r) - 1) // 2


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), k=st.integers(1, 8), coarse=st.booleans())
def test_batch_forms_equal_the_one_prompt_forms_on_the_eligible_subset(seed, n, k, coarse):
    """Masked-out responses are invisible: each row of the batch equals the one-prompt rule on its
    eligible rewards, with indices mapped back. `coarse` rounds rewards to halves to force ties."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(n, k)) * 2                                      # (n, k) rewards
    r = np.round(r * 2) / 2 if coarse else r
    m = rng.random((n, k)) < 0.7                                         # (n, k) eligible
    keys = rng.integers(0, 2**63, size=n).astype(np.uint64)
    cases = [
        (rules.rs_dpo_batch(r, m, 0.7, 0.8), lambda x, i: rs_dpo(x, 0.7, 0.8)),
        (rules.all_above_margin_batch(r, m, 0.3), lambda x, i: all_above_margin(x, 0.3)),
        (rules.best_worst_batch(r, m), lambda x, i: best_worst(x)),
        (rules.best_random_batch(r, m, keys), lambda x, i: best_random(x, int(keys[i]))),
        (rules.sigma_batch(r, m, 1.5), lambda x, i: sigma(x, 1.5)),
    ]
    for (rows, ch, rj), one in cases:
        got = list(zip(rows.tolist(), ch.tolist(), rj.tolist(), strict=True))
        want = []
        for i in range(n):
            idx = np.flatnonzero(m[i])
            c1, r1 = one(r[i][idx], i)
            want += [(i, int(idx[a]), int(idx[b])) for a, b in zip(c1, r1, strict=True)]
        assert got == want
        assert all(r[i, a] > r[i, b] for i, a, b in got)
