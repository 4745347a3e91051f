"""Forward-backward patch selection against brute force and a case where
plain forward selection is wrong."""
import itertools

import numpy as np
import pytest

from deepid2_core.verifier.selection import forward_backward


def test_additive_score_gives_the_brute_force_optimum_for_every_size():
    rng = np.random.default_rng(7)
    w = rng.uniform(-1, 1, 9)
    calls = []
    score = lambda s: (calls.append(s), sum(w[i] for i in s))[1]
    best = forward_backward(score, range(9))
    assert sorted(best) == list(range(1, 10))
    for k, (value, subset) in best.items():
        brute = max(itertools.combinations(range(9), k), key=lambda s: sum(w[i] for i in s))
        assert subset == tuple(sorted(brute))
        assert abs(value - sum(w[i] for i in subset)) < 1e-12
    assert len(calls) == len(set(calls))                  # each subset scored once


def test_backward_step_finds_the_pair_that_forward_selection_misses():
    table = {("a",): 0.6, ("b",): 0.5, ("c",): 0.5, ("a", "b"): 0.65, ("a", "c"): 0.6,
             ("b", "c"): 0.8, ("a", "b", "c"): 0.85}
    best = forward_backward(lambda s: table[s], "abc")
    assert best[1] == (0.6, ("a",))
    assert best[2] == (0.8, ("b", "c"))                   # forward alone stops at (a, b): 0.65
    assert best[3] == (0.85, ("a", "b", "c"))


def test_max_size_and_errors():
    best = forward_backward(lambda s: -abs(len(s) - 2) + 0.01 * sum(s), range(5), max_size=3)
    assert max(best) == 3 and best[2][1] == (3, 4)
    with pytest.raises(ValueError, match="at least one candidate"):
        forward_backward(len, [])
    with pytest.raises(ValueError, match="max_size"):
        forward_backward(len, [1, 2], max_size=0)
