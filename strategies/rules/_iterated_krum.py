"""Iterated Krum selection (Bulyan's first stage) in O(n^2 log n) (private).

Bulyan picks ``count`` rows one at a time: at each step it scores the rows
still in play with Krum on that remaining set (``r`` rows, neighbours
``k(r) = min(r - 1, max(1, r - f - 2))``, Flower's count), takes the lowest
score and removes that row. Recomputing every score at every step costs
O(n^2) per step (O(n^3) overall, seconds at n = 1000). Here every row keeps its
distances sorted once, plus two Fenwick (binary indexed) trees over those
sorted positions: one counts the rows still in play, one sums their distances.
Removing a row is a point update in every tree and "sum of the k smallest
distances to rows in play" is a Fenwick descent, both O(log n) per row and
vectorised over rows, so a step costs O(n log n).

Numerics: distances are float64; sums of a prefix of *sorted* values only ever
combine values no larger than the prefix's last one, so the rounding error of a
score stays relative to the score itself. Non-finite distances are replaced by
a huge finite value (1e300) so that no Inf - Inf can turn a score into NaN.

Ties: when ``k = 1``, two rows that are each other's nearest neighbour have
exactly the same score, which happens in the last steps whenever ``f <= 2``.
Scores within a relative 1e-10 of the minimum count as tied (the Fenwick sums
and a direct sum may differ in the last bits), and a tie goes to the row with
the smallest sum of distances to all rows in play (the more central one), then
to the lowest index. This keeps the selection independent of row order on
generic data; Flower's ``aggregate_bulyan`` takes the first tied row instead.
"""

from __future__ import annotations

import numpy as np

_HUGE = 1e300
_TIE_RTOL = 1e-10


def _neighbours(r: int, f: int) -> int:
    return min(r - 1, max(1, r - f - 2))


def iterated_krum(sq_dists: np.ndarray, f: int, count: int) -> list[int]:
    """Indices chosen by ``count`` rounds of Krum-and-remove, in the order chosen.

    Parameters
    ----------
    sq_dists : ndarray
        ``(n, n)`` squared pairwise distances (the diagonal is ignored).
    f : int
        Assumed number of Byzantine rows.
    count : int
        How many rows to pick, ``1 <= count <= n``.
    """
    n = sq_dists.shape[0]
    if n == 1:
        return [0]
    m = n - 1  # sorted positions per row (every other row)
    dist = np.where(np.isfinite(sq_dists), sq_dists, _HUGE).astype(np.float64)
    np.fill_diagonal(dist, np.inf)  # sorts last, outside the m positions
    order = np.argsort(dist, axis=1, kind="stable")[:, :m]
    vals = np.take_along_axis(dist, order, axis=1)
    rows = np.arange(n)
    pos = np.full((n, n), m, dtype=np.int64)  # 0-based sorted position of column j in row i
    pos[rows[:, None], order] = np.arange(m)[None, :]

    # Fenwick trees, 1-based: node p covers sorted positions (p - lowbit(p), p].
    p1 = np.arange(1, m + 1)
    low = p1 & -p1
    prefix = np.concatenate([np.zeros((n, 1)), np.cumsum(vals, axis=1)], axis=1)
    tree_sum = np.zeros((n, m + 1))
    tree_sum[:, 1:] = prefix[:, p1] - prefix[:, p1 - low]
    tree_cnt = np.zeros((n, m + 1), dtype=np.int64)
    tree_cnt[:, 1:] = low[None, :]
    top = 1 << (m.bit_length() - 1)
    finite = dist.copy()
    np.fill_diagonal(finite, -1.0)  # marks "self" for the exact re-scoring in _pick

    alive = np.ones(n, dtype=bool)
    chosen: list[int] = []
    for _ in range(count):
        r = n - len(chosen)
        k = _neighbours(r, f)
        scores = _sum_smallest(tree_cnt, tree_sum, k, m, top) if k > 0 else np.zeros(n)
        best = _pick(scores, finite, alive, k)
        chosen.append(best)
        alive[best] = False
        _remove(tree_cnt, tree_sum, pos[:, best] + 1, dist[:, best], m)
    return chosen


def _pick(fenwick_scores: np.ndarray, finite: np.ndarray, alive: np.ndarray, k: int) -> int:
    """Lowest-score row in play; near-ties are re-scored exactly, then broken by centrality, then index.

    Rows whose Fenwick score is within the tolerance of the minimum are scored
    again directly (sum of the ``k`` smallest distances in sorted order, which
    does not depend on row order); the exact minimum wins, exact ties go to the
    smallest total distance to the rows in play, then to the lowest index.
    """
    s = np.where(alive, fenwick_scores, np.inf)
    low = s.min()
    scale = np.abs(s[alive]).mean()
    cand = np.nonzero(alive & (s <= low + _TIE_RTOL * abs(low) + 1e-12 * scale))[0]
    if cand.size == 1:
        return int(cand[0])
    others = finite[np.ix_(cand, np.nonzero(alive)[0])]
    others = np.sort(np.where(others == -1.0, np.inf, others), axis=1)[:, :-1]  # drop self
    exact = others[:, :k].sum(axis=1)
    total = others.sum(axis=1)
    tied = exact == exact.min()
    return int(cand[np.argmin(np.where(tied, total, np.inf))])


def _remove(tree_cnt: np.ndarray, tree_sum: np.ndarray, where: np.ndarray, value: np.ndarray, m: int) -> None:
    """Take one entry out of every row's trees at 1-based position ``where[i]`` (> m: skip)."""
    idx = np.nonzero(where <= m)[0]
    p = where[idx].copy()
    v = value[idx]
    while idx.size:
        tree_cnt[idx, p] -= 1
        tree_sum[idx, p] -= v
        p = p + (p & -p)
        keep = p <= m
        idx, p, v = idx[keep], p[keep], v[keep]


def _sum_smallest(tree_cnt: np.ndarray, tree_sum: np.ndarray, k: int, m: int, top: int) -> np.ndarray:
    """Per row, the sum of the ``k`` smallest values still present (Fenwick descent)."""
    n = tree_cnt.shape[0]
    at = np.zeros(n, dtype=np.int64)
    left = np.full(n, k, dtype=np.int64)
    total = np.zeros(n)
    rows = np.arange(n)
    step = top
    while step:
        nxt = at + step
        ok = nxt <= m
        cand = np.where(ok, nxt, 0)
        c = tree_cnt[rows, cand]
        take = ok & (c <= left)
        at = np.where(take, nxt, at)
        left = left - np.where(take, c, 0)
        total = total + np.where(take, tree_sum[rows, cand], 0.0)
        step >>= 1
    return total
