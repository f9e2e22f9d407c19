"""Coordinate-wise order statistics over the rows of an ``(n, d)`` matrix (private).

Each kernel walks the columns in bounded chunks (see ``_common.column_slices``)
and returns the aggregated ``(d,)`` vector together with each row's *share*:
the fraction of all (coordinate, kept value) slots that row filled. Shares sum
to 1 and are what these rules report as per-row ``weights`` (a row that never
sits in the middle of any coordinate gets 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from strategies.rules._common import acc_dtype, column_slices


def _rows_view(x: Tensor, rows: Tensor | None, cols: slice) -> Tensor:
    return x[:, cols] if rows is None else x[rows, cols]


def coordinate_median(x: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinate-wise median, numpy's definition (mean of the two middle values for even n).

    ``torch.median`` alone returns the *lower* middle value for even ``n``; here
    the two middle order statistics are averaged, as ``numpy.median`` (and so
    Flower's ``FedMedian``) does.

    Returns
    -------
    (vector, shares)
        ``(d,)`` in ``x``'s dtype; ``(n,)`` float64 shares (each middle value
        counts 1/2 for even ``n``).
    """
    n, d = x.shape
    acc = acc_dtype(x.dtype)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    counts = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in column_slices(n, d, x.device):
        block = x[:, cols]
        if n % 2 == 1:
            med = torch.median(block, dim=0)
            out[cols] = med.values
            counts += torch.bincount(med.indices, minlength=n).to(torch.float64)
        else:
            lo = torch.kthvalue(block, n // 2, dim=0)
            hi = torch.kthvalue(block, n // 2 + 1, dim=0)
            out[cols] = ((lo.values.to(acc) + hi.values.to(acc)) / 2).to(x.dtype)
            both = torch.bincount(lo.indices, minlength=n) + torch.bincount(hi.indices, minlength=n)
            counts += both.to(torch.float64) / 2
    return out, counts / d


def coordinate_trimmed_mean(x: Tensor, cut: int) -> tuple[Tensor, Tensor]:
    """Mean of each column after dropping its ``cut`` smallest and ``cut`` largest values.

    Requires ``0 <= cut`` and ``n - 2 * cut >= 1``.
    """
    n, d = x.shape
    keep = n - 2 * cut
    acc = acc_dtype(x.dtype)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    counts = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in column_slices(n, d, x.device):
        block = x[:, cols]
        if cut == 0:
            out[cols] = (block.sum(dim=0, dtype=acc) / n).to(x.dtype)
            continue
        srt = torch.sort(block, dim=0)
        middle = srt.values[cut : n - cut]
        out[cols] = (middle.sum(dim=0, dtype=acc) / keep).to(x.dtype)
        counts += torch.bincount(srt.indices[cut : n - cut].flatten(), minlength=n).to(torch.float64)
    if cut == 0:
        return out, torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)
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
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    counts = torch.zeros(theta, dtype=torch.float64, device=x.device)
    for cols in column_slices(theta, d, x.device):
        block = _rows_view(x, rows, cols)
        med, _ = coordinate_median(block)
        dist = (block.to(acc) - med.to(acc)).abs()
        idx = torch.topk(dist, beta, dim=0, largest=False).indices
        out[cols] = (torch.gather(block, 0, idx).sum(dim=0, dtype=acc) / beta).to(x.dtype)
        counts += torch.bincount(idx.flatten(), minlength=theta).to(torch.float64)
    return out, counts / (d * beta)
