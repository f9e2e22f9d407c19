"""Coordinate-wise order statistics over the rows of an ``(n, d)`` matrix (private).

Each kernel walks the columns in cache-sized blocks, transposed so that each
column's ``n`` values are contiguous, and returns the aggregated ``(d,)``
vector together with each row's *share*: the fraction of all (coordinate,
kept value) slots that row filled. Shares sum to 1 and are what these rules
report as per-row ``weights`` (a row that never sits in the middle of any
coordinate gets 0).

Selection backend: on CPU, ``numpy.argpartition`` with several ``kth`` at once
(introselect; the same machinery as ``numpy.median`` and Flower's
``trim_mean``), called on the tensor's memory without copying it beyond the
block transpose; elsewhere, ``torch.argsort``. Torch has no multi-``kth``
partition, and two ``kthvalue`` passes (or a full sort) cost about twice as
much on CPU. bfloat16/float16 blocks are widened to float32 for the selection
(exact), results are cast back. numpy's selection is single-threaded and
releases the GIL, so on CPU the blocks are spread over
``torch.get_num_threads()`` worker threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from strategies.rules._common import acc_dtype, column_slices

_BLOCK_ELEMENTS = 1 << 18  # 1 MB of float32 per transposed block on CPU


def _blocks(x: Tensor, rows: Tensor | None = None) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(cols, block)``: ``block`` is ``x[rows][:, cols].T`` contiguous, ``(width, n)``."""
    n = x.shape[0] if rows is None else int(rows.numel())
    budget = _BLOCK_ELEMENTS if x.device.type == "cpu" else None
    for cols in column_slices(n, x.shape[1], x.device, budget):
        part = x[:, cols] if rows is None else x[rows, cols]
        block = part.T.contiguous()
        if block.device.type == "cpu" and block.dtype not in (torch.float32, torch.float64):
            block = block.to(torch.float32)
        yield cols, block


def _map_blocks(
    x: Tensor, rows: Tensor | None, work: Callable[[Tensor], tuple[Tensor, Tensor]], n_out: int
) -> tuple[Tensor, Tensor]:
    """Run ``work(block) -> (values (width,), counts (n_out,))`` over all blocks, in parallel on CPU."""
    out = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    counts = torch.zeros(n_out, dtype=torch.float64, device=x.device)

    def one(item: tuple[slice, Tensor]) -> tuple[slice, Tensor, Tensor]:
        cols, block = item
        values, used = work(block)
        return cols, values, used

    threads = torch.get_num_threads() if x.device.type == "cpu" else 1
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = pool.map(one, _blocks(x, rows))
            for cols, values, used in results:
                out[cols] = values.to(x.dtype)
                counts += used
    else:
        for cols, values, used in map(one, _blocks(x, rows)):
            out[cols] = values.to(x.dtype)
            counts += used
    return out, counts


def _arrange(block: Tensor, kth: tuple[int, ...]) -> Tensor:
    """Per row of ``block`` (one column of the data), indices partitioned around the ``kth`` positions."""
    if block.device.type == "cpu":
        return torch.from_numpy(np.argpartition(block.numpy(), sorted(set(kth)), axis=1))
    return torch.argsort(block, dim=1)


def coordinate_median(x: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinate-wise median, numpy's definition (mean of the two middle values for even n).

    ``torch.median`` alone returns the *lower* middle value for even ``n``; here
    the two middle order statistics are averaged, as ``numpy.median`` (and so
    Flower's ``FedMedian``) does, in the accumulation dtype.

    Returns
    -------
    (vector, shares)
        ``(d,)`` in ``x``'s dtype; ``(n,)`` float64 shares (each middle value
        counts 1/2 for even ``n``).
    """
    n, d = x.shape
    acc = acc_dtype(x.dtype)
    half = n // 2
    kth = (half,) if n % 2 == 1 else (half - 1, half)

    def work(block: Tensor) -> tuple[Tensor, Tensor]:
        mids = _arrange(block, kth)[:, kth[0] : half + 1].to(block.device)
        values = block.gather(1, mids).to(acc).mean(dim=1)  # (a + b) / 2, or the single middle
        used = torch.bincount(mids.flatten(), minlength=n).to(device=x.device, dtype=torch.float64)
        return values, used / mids.shape[1]

    out, counts = _map_blocks(x, None, work, n)
    return out, counts / d


def coordinate_trimmed_mean(x: Tensor, cut: int) -> tuple[Tensor, Tensor]:
    """Mean of each column after dropping its ``cut`` smallest and ``cut`` largest values.

    Requires ``0 <= cut`` and ``n - 2 * cut >= 1``.
    """
    n, d = x.shape
    keep = n - 2 * cut
    acc = acc_dtype(x.dtype)
    if cut == 0:
        mean = x.sum(dim=0, dtype=acc) / n
        return mean.to(x.dtype), torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)

    def work(block: Tensor) -> tuple[Tensor, Tensor]:
        middle = _arrange(block, (cut, n - cut - 1))[:, cut : n - cut].to(block.device)
        values = block.gather(1, middle).sum(dim=1, dtype=acc) / keep
        used = torch.bincount(middle.flatten(), minlength=n).to(device=x.device, dtype=torch.float64)
        return values, used

    out, counts = _map_blocks(x, None, work, n)
    return out, counts / (d * keep)


def mean_closest_to_median(x: Tensor, rows: Tensor, beta: int) -> tuple[Tensor, Tensor]:
    """Bulyan's second stage over the given rows of ``x``.

    For each coordinate, take the median (numpy's definition) of
    ``x[rows, j]`` and average the ``beta`` values closest to it.

    Returns
    -------
    (vector, shares)
        ``(d,)`` in ``x``'s dtype; ``(len(rows),)`` float64 shares, in the
        order of ``rows``.
    """
    theta = int(rows.numel())
    d = x.shape[1]
    acc = acc_dtype(x.dtype)
    half = theta // 2
    kth = (half,) if theta % 2 == 1 else (half - 1, half)

    def work(block: Tensor) -> tuple[Tensor, Tensor]:
        mids = _arrange(block, kth)[:, kth[0] : half + 1].to(block.device)
        med = block.gather(1, mids).to(acc).mean(dim=1, keepdim=True)
        near = torch.topk((block.to(acc) - med).abs(), beta, dim=1, largest=False, sorted=False).indices
        values = block.gather(1, near).sum(dim=1, dtype=acc) / beta
        used = torch.bincount(near.flatten(), minlength=theta).to(device=x.device, dtype=torch.float64)
        return values, used

    out, counts = _map_blocks(x, rows, work, theta)
    return out, counts / (d * beta)
