"""Coordinate-wise order statistics over the rows of an ``(n, d)`` matrix (private).

Each kernel walks the columns in cache-sized blocks and returns the aggregated
``(d,)`` vector together with each row's *share*: the fraction of all
(coordinate, kept value) slots that row filled. Shares sum to 1 and are what
these rules report as per-row ``weights`` (a row that never sits in the middle
of any coordinate gets 0).

How a block is processed:

1. **Thresholds.** The block is transposed so each column's ``m`` values are
   contiguous, and only the few order statistics a rule needs are found
   (median: the one or two middle values; trimmed mean: the smallest and
   largest kept value; Bulyan: the median, then the ``beta``-th smallest
   distance to it). On CPU this is ``numpy.partition`` with a *single* ``kth``
   per call, in place on progressively narrower views: numpy (>= 2.0) runs
   single-``kth`` selection with its SIMD quickselect (x86-simd-sort), which on
   an AVX-512 machine is about 3x faster than ``argpartition`` and 7x faster
   than ``partition`` with several ``kth`` at once (both fall back to scalar
   introselect). Elsewhere ``torch.sort`` gives every order statistic at once.
2. **Classification.** Every value is compared against the thresholds in the
   original row-major layout: strictly inside the kept range it counts once;
   values *equal* to a threshold share the slots left at that threshold
   equally. The kept multiset, and so the aggregate, is therefore exactly the
   rule's definition, and the shares do not depend on the order of the rows,
   also under ties (e.g. coordinates every client left unchanged).

bfloat16/float16 blocks are widened to float32 (exact); results are cast back.
numpy releases the GIL while it works, so on CPU the blocks are spread over
``torch.get_num_threads()`` worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from strategies.rules._common import column_slices

_BLOCK_ELEMENTS = 1 << 18  # 1 MB of float32 per block on CPU

# A block's work: ``(chunk (m, w) row-major values) -> (values (w,), shares (m,) float64)``.
Work = Callable[[Any], tuple[Any, Any]]


def _block(chunk: Any) -> Any:
    """The values of every column made contiguous: ``(w, m)``, a private copy that may be reordered."""
    if isinstance(chunk, np.ndarray):
        return chunk.T.copy(order="C")  # always a copy, even when the transpose is contiguous
    return torch.sort(chunk.T, dim=1).values


def _order_stats(block: Any, ks: Sequence[int]) -> list[Any]:
    """The ``k``-th smallest value in each row of ``block`` for each ``k`` in ``ks`` (ascending).

    On numpy, ``block`` is partitioned in place around every ``k``, so that
    afterwards ``block[:, a:b]`` holds exactly the order statistics ``a .. b-1``
    (in some order) for consecutive ``a, b`` in ``ks``. A torch block is sorted.
    """
    if isinstance(block, np.ndarray):
        out: list[Any] = []
        start = 0
        for k in ks:
            if k < start:  # the same k again
                out.append(out[-1])
                continue
            view = block[:, start:]
            view.partition(k - start, axis=1)  # single kth: numpy's SIMD quickselect
            out.append(view[:, k - start].copy())
            start = k + 1
        return out
    return [block[:, k] for k in ks]


def _middle_pair(block: Any, half: int) -> tuple[Any, Any]:
    """The order statistics ``half - 1`` and ``half`` of every row of ``block``."""
    (lo,) = _order_stats(block, (half - 1,))
    if isinstance(block, np.ndarray):
        return lo, block[:, half:].min(axis=1)  # the smallest of the upper part: cheaper than a partition
    return lo, block[:, half]


def _count(mask: Any, axis: int) -> Any:
    """Number of true entries along ``axis`` (int)."""
    if isinstance(mask, np.ndarray):
        return mask.view(np.uint8).sum(axis=axis, dtype=np.int32)  # much faster than summing bools
    return mask.sum(dim=axis)


def _f64(a: Any) -> Any:
    return a.astype(np.float64) if isinstance(a, np.ndarray) else a.to(torch.float64)


def _where(mask: Any, a: Any) -> Any:
    """``a`` where ``mask``, else 0 (numpy or torch)."""
    return np.where(mask, a, 0) if isinstance(a, np.ndarray) else torch.where(mask, a, 0)


def _masked_column_sums(chunk: Any, mask: Any) -> Any:
    """Per column, the sum of the values where ``mask`` holds (``chunk``, ``mask`` are (m, w)).

    On numpy ``(chunk * mask)`` is an order of magnitude faster than a masked
    ``where`` on random masks; the columns where an excluded Inf turned the
    product into NaN are recomputed exactly.
    """
    if not isinstance(chunk, np.ndarray):
        return torch.where(mask, chunk, 0).sum(dim=0)
    with np.errstate(invalid="ignore"):  # Inf * False = NaN, repaired below
        total = (chunk * mask).sum(axis=0)
    bad = ~np.isfinite(total)
    if bad.any():
        total[bad] = np.where(mask[:, bad], chunk[:, bad], 0).sum(axis=0)
    return total


def _fill_shares(eq: Any, slots: Any) -> Any:
    """Row totals of ``slots / count`` over the rows equal to a column's threshold (``eq`` is (m, w))."""
    count = _count(eq, 0)
    if bool((count == 1).all()) and bool((slots == 1).all()):  # no ties: one row fills the slot
        return _f64(_count(eq, 1))
    rate = _f64(slots) / _f64(count).clip(min=1)
    return _where(eq, rate[None, :]).sum(axis=1)


def _numpy_backend(device: torch.device) -> bool:
    """Whether blocks on ``device`` are processed with numpy (CPU) rather than torch."""
    return device.type == "cpu"


def _map_blocks(x: Tensor, rows: Tensor | None, work: Work) -> tuple[Tensor, Tensor]:
    """Run ``work`` over column blocks of ``x[rows]``; return ``(vector (d,), summed shares (m,))``."""
    m = x.shape[0] if rows is None else int(rows.numel())
    cpu = _numpy_backend(x.device)
    out = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    shares = torch.zeros(m, dtype=torch.float64, device=x.device)

    def one(cols: slice) -> tuple[slice, Any, Any]:
        chunk = x[:, cols] if rows is None else x[rows, cols]
        if chunk.dtype not in (torch.float32, torch.float64):
            chunk = chunk.to(torch.float32)
        values, used = work(chunk.numpy() if cpu else chunk)
        return cols, values, used

    blocks = column_slices(m, x.shape[1], x.device, _BLOCK_ELEMENTS if cpu else None)
    threads = torch.get_num_threads() if cpu else 1
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            done = list(pool.map(one, blocks))
    else:
        done = [one(cols) for cols in blocks]
    for cols, values, used in done:
        out[cols] = torch.as_tensor(values).to(device=x.device, dtype=x.dtype)
        shares += torch.as_tensor(used).to(device=x.device, dtype=torch.float64)
    return out, shares


def coordinate_median(x: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinate-wise median, numpy's definition (mean of the two middle values for even n).

    ``torch.median`` alone returns the *lower* middle value for even ``n``; here
    the two middle order statistics are averaged, as ``numpy.median`` (and so
    Flower's ``FedMedian``) does, in the input's (float32 at least) precision.

    Returns
    -------
    (vector, shares)
        ``(d,)`` in ``x``'s dtype; ``(n,)`` float64 shares (each middle value
        counts 1/2 for even ``n``, split among rows holding an equal value).
    """
    n, d = x.shape
    half = n // 2

    def work(chunk: Any) -> tuple[Any, Any]:
        block = _block(chunk)
        if n % 2 == 1:
            (mid,) = _order_stats(block, (half,))
            return mid, _fill_shares(chunk == mid[None, :], mid * 0 + 1)
        lo, hi = _middle_pair(block, half)
        ones = lo * 0 + 1
        used = 0.5 * _fill_shares(chunk == lo[None, :], ones) + 0.5 * _fill_shares(chunk == hi[None, :], ones)
        return (lo + hi) / 2, used

    out, shares = _map_blocks(x, None, work)
    return out, shares / d


def _edge_shares(chunk: Any, lo: Any, hi: Any, first: int, keep: int) -> Any:
    """Each row's kept count when order positions ``first .. first+keep-1`` are kept, under ties.

    ``lo``/``hi`` are the values at the first and last kept position. Values
    strictly between them are kept; the positions left at ``lo`` and at ``hi``
    are filled by the rows equal to them, shared equally.
    """
    m = chunk.shape[0]
    last = first + keep  # one past the last kept position
    inside = (chunk > lo[None, :]) & (chunk < hi[None, :])
    eq_lo, eq_hi = chunk == lo[None, :], chunk == hi[None, :]
    same = lo == hi
    below_lo = _count(chunk < lo[None, :], 0)
    below_hi = m - _count(chunk > hi[None, :], 0) - _count(eq_hi, 0)
    n_lo = _count(eq_lo, 0)
    at_lo = _where(~same, (below_lo + n_lo).clip(max=last) - first) + _where(same, lo * 0 + keep)
    at_hi = _where(~same, last - below_hi.clip(min=first))
    return _f64(_count(inside, 1)) + _fill_shares(eq_lo, at_lo) + _fill_shares(eq_hi & ~same[None, :], at_hi)


def coordinate_trimmed_mean(x: Tensor, cut: int) -> tuple[Tensor, Tensor]:
    """Mean of each column after dropping its ``cut`` smallest and ``cut`` largest values.

    Requires ``0 <= cut`` and ``n - 2 * cut >= 1``.
    """
    n, d = x.shape
    keep = n - 2 * cut
    if cut == 0:
        mean = x.sum(dim=0, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32) / n
        return mean.to(x.dtype), torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)

    def work(chunk: Any) -> tuple[Any, Any]:
        block = _block(chunk)
        lo, hi = _order_stats(block, (cut, n - cut - 1))
        values = block[:, cut : n - cut].sum(axis=1) / keep  # exactly the kept order statistics
        kept = (chunk >= lo[None, :]) & (chunk <= hi[None, :])
        if bool((_count(kept, 0) == keep).all()):  # no ties at the edges: the kept rows are exact
            return values, _f64(_count(kept, 1))
        return values, _edge_shares(chunk, lo, hi, cut, keep)

    out, shares = _map_blocks(x, None, work)
    return out, shares / (d * keep)


def mean_closest_to_median(x: Tensor, rows: Tensor, beta: int) -> tuple[Tensor, Tensor]:
    """Bulyan's second stage over the given rows of ``x``.

    For each coordinate, take the median (numpy's definition) of
    ``x[rows, j]`` and average the ``beta`` values closest to it. When values
    on both sides sit at exactly the ``beta``-th distance and not all of them
    fit, the free slots take their average (order-independent).

    Returns
    -------
    (vector, shares)
        ``(d,)`` in ``x``'s dtype; ``(len(rows),)`` float64 shares, in the
        order of ``rows``.
    """
    theta = int(rows.numel())
    d = x.shape[1]
    half = theta // 2

    def work(chunk: Any) -> tuple[Any, Any]:
        block = _block(chunk)
        if theta % 2 == 1:
            (med,) = _order_stats(block, (half,))
        else:
            lo, hi = _middle_pair(block, half)
            med = (lo + hi) / 2
        # distances in the block layout: the block is reordered within its rows, not changed
        spread = abs(block - med[:, None])
        if not isinstance(spread, np.ndarray):
            spread = torch.sort(spread, dim=1).values
        (reach,) = _order_stats(spread, (beta - 1,))
        dist = abs(chunk - med[None, :])  # the same numbers, in the rows' own order
        kept = dist <= reach[None, :]
        if bool((_count(kept, 0) == beta).all()):  # no ties at the edge
            return _masked_column_sums(chunk, kept) / beta, _f64(_count(kept, 1))
        near = dist < reach[None, :]
        at = dist == reach[None, :]
        free = beta - _count(near, 0)  # >= 1 slots filled by the values at distance ``reach``
        at_mean = _masked_column_sums(chunk, at) / _count(at, 0).clip(min=1)
        values = (_masked_column_sums(chunk, near) + free * at_mean) / beta
        return values, _f64(_count(near, 1)) + _fill_shares(at, free)

    out, shares = _map_blocks(x, rows, work)
    return out, shares / (d * beta)
