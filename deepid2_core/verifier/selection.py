"""Greedy forward-backward patch selection (DeepID2, Sun et al. 2014, sec. 4:
"patches are selected by a forward-backward greedy algorithm on a validation
set"): sequential floating forward selection. Each round adds the candidate
that scores best with the current set; then, while dropping one member gives
a better score than the best set of that smaller size seen so far, it drops
it. Every subset is scored once (results are kept), so the search is cheap
next to what scoring a subset costs (fitting PCA + Joint Bayesian).
"""


def forward_backward(score, candidates, max_size=None, log=None):
    """Maximise score(subset) over subsets of candidates (hashable, sortable).
    Returns {size: (score, subset)}: the best subset found for each size, a
    subset being a sorted tuple. max_size defaults to all candidates."""
    candidates = sorted(set(candidates))
    if not candidates:
        raise ValueError("patch selection needs at least one candidate")
    max_size = len(candidates) if max_size is None else min(int(max_size), len(candidates))
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    seen, best = {}, {}          # subset -> score; size -> (score, subset) of visited sets

    def f(subset):
        if subset not in seen:
            seen[subset] = float(score(subset))
            if log:
                log(f"{seen[subset]:.4f} {list(subset)}")
        return seen[subset]

    def visit(subset):
        if len(subset) not in best or f(subset) > best[len(subset)][0]:
            best[len(subset)] = (f(subset), subset)

    current = ()
    while len(current) < max_size:
        grown = [tuple(sorted(current + (c,))) for c in candidates if c not in current]
        current = max(grown, key=f)              # ties: the first in candidate order
        visit(current)
        while len(current) > 1:                  # backward: drop while it beats that size's best
            top = max((tuple(c for c in current if c != r) for r in current), key=f)
            if f(top) <= best[len(top)][0]:
                break
            current = top
            visit(current)
    return dict(sorted(best.items()))
