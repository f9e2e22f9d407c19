"""Shared building blocks of the aggregation rules (private).

Everything here works on whatever device and dtype the updates have. Work over
the ``d`` columns is done in column chunks of bounded size, so temporaries stay
at a few tens of MB on CPU even for ``n = 1000`` clients and ``d`` in the
millions; Python only loops over chunks (``d / chunk`` iterations), never over
single coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from strategies.rules.base import RuleConfigError

# Elements per column chunk: 4 Mi on CPU (16 MB of float32), 64 Mi on accelerators.
_CPU_CHUNK_ELEMENTS = 1 << 22
_ACCEL_CHUNK_ELEMENTS = 1 << 26


# --------------------------------------------------------------------------- validation


def int_param(rule: str, name: str, value: object, *, minimum: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleConfigError(f"{rule}: {name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise RuleConfigError(f"{rule}: {name} must be >= {minimum}, got {name}={value}")
    return value


def float_param(
    rule: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check that ``value`` is a finite real number inside the given interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RuleConfigError(f"{rule}: {name} must be a finite number, got {value!r}")
    v = float(value)
    lo_bad = low is not None and (v <= low if low_open else v < low)
    hi_bad = high is not None and (v >= high if high_open else v > high)
    if lo_bad or hi_bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise RuleConfigError(f"{rule}: {name} must be in {left}{lo}, {hi}{right}, got {name}={value!r}")
    return v


# --------------------------------------------------------------------------- dtypes, chunks


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def column_slices(n: int, d: int, device: torch.device, elements: int | None = None) -> Iterator[slice]:
    """Yield column slices of an ``(n, d)`` matrix with at most about ``elements`` entries each.

    The default budget suits matrix products; order statistics use smaller,
    cache-sized blocks.
    """
    budget = elements or (_CPU_CHUNK_ELEMENTS if device.type == "cpu" else _ACCEL_CHUNK_ELEMENTS)
    width = max(1, min(d, budget // max(n, 1)))
    for start in range(0, d, width):
        yield slice(start, min(d, start + width))


# --------------------------------------------------------------------------- norms, Gram, distances


def row_norms(x: Tensor) -> Tensor:
    """L2 norm of each row, ``(n,)`` in the accumulation dtype."""
    return torch.linalg.vector_norm(x, dim=1, dtype=acc_dtype(x.dtype))


def gram(x: Tensor, center: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """``(x - center) @ (x - center).T`` accumulated over column chunks.

    Returns an ``(n, n)`` matrix in the accumulation dtype. ``center`` is a
    ``(d,)`` vector subtracted from every row (``None``: no centring).
    ``rows`` restricts the matrix to those rows of ``x`` (read chunk by chunk,
    never copied whole).
    """
    n = x.shape[0] if rows is None else int(rows.numel())
    d = x.shape[1]
    acc = acc_dtype(x.dtype)
    g = torch.zeros(n, n, dtype=acc, device=x.device)
    for cols in column_slices(n, d, x.device):
        block = (x[:, cols] if rows is None else x[rows, cols]).to(acc)
        if center is not None:
            block = block - center[cols].to(acc)
        g.addmm_(block, block.T)
    return (g + g.T) / 2  # exactly symmetric, whatever the BLAS summation order


def sq_dists_from_gram(g: Tensor) -> Tensor:
    """Squared distances ``g_ii + g_jj - 2 g_ij`` from a Gram matrix, clamped at 0, zero diagonal."""
    sq = torch.diagonal(g)
    dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist


def pairwise_sq_dists(x: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``x``, ``(n, n)``.

    Uses the Gram trick ``|a|^2 + |b|^2 - 2 a.b`` on rows centred at their mean
    (distances do not depend on the centre, cancellation does). When a far
    outlier drags the mean so far that float cancellation could swamp the
    distance from some row to its nearest neighbour (relative error bound above
    1e-3), the Gram matrix is recomputed once, centred at the medoid row (the
    row with the smallest median distance to the others), which an honest
    majority keeps among the honest rows.
    """
    n = x.shape[0]
    if n == 1:
        return torch.zeros(1, 1, dtype=acc_dtype(x.dtype), device=x.device)
    g = centered_gram(x)
    dist = sq_dists_from_gram(g)
    if not gram_distances_accurate(g, dist) and bool(torch.isfinite(dist).all()):
        medoid = int(torch.argmin(dist.median(dim=1).values))
        dist = sq_dists_from_gram(gram(x, x[medoid]))
    return dist


def centered_gram(x: Tensor) -> Tensor:
    """The Gram matrix of the rows centred at their mean (see :func:`gram`)."""
    return gram(x, x.mean(dim=0, dtype=acc_dtype(x.dtype)))


def gram_distances_accurate(g: Tensor, dist: Tensor) -> bool:
    """Whether every row's distance to its nearest neighbour, taken from ``g``, is accurate to 1e-3.

    The Gram trick loses ``8 eps (|a|^2 + |b|^2)`` to cancellation; when that
    bound exceeds 1e-3 of the nearest-neighbour distance somewhere (a far
    outlier dragging the centre away), the distances are not trusted.
    """
    n = g.shape[0]
    if n == 1:
        return True
    sq = torch.diagonal(g)
    eps = torch.finfo(g.dtype).eps
    off = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype, device=dist.device))
    nearest, who = off.min(dim=1)
    bound = 8.0 * eps * (sq + sq[who])
    return not bool((bound > 1e-3 * nearest).any())


def cosine_similarity_matrix(x: Tensor, rows: Tensor | None = None) -> Tensor:
    """Pairwise cosine similarities of the rows (``rows`` of them only), ``(n, n)``; a zero row has similarity 0."""
    g = gram(x, rows=rows)
    norms = torch.sqrt(torch.diagonal(g).clamp_min(0.0))
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    cos = g / safe[:, None] / safe[None, :]
    cos = torch.where((norms[:, None] > 0) & (norms[None, :] > 0), cos, torch.zeros_like(cos))
    return cos.clamp_(-1.0, 1.0)


def sq_dists_to(x: Tensor, v: Tensor) -> Tensor:
    """Squared distance from every row of ``x`` to the vector ``v``, ``(n,)``."""
    n, d = x.shape
    acc = acc_dtype(x.dtype)
    out = torch.zeros(n, dtype=acc, device=x.device)
    for cols in column_slices(n, d, x.device):
        out += (x[:, cols].to(acc) - v[cols].to(acc)).square().sum(dim=1)
    return out


# --------------------------------------------------------------------------- weighted sums


def weighted_sum(x: Tensor, w: Tensor) -> Tensor:
    """``sum_i w_i x_i`` over the rows with ``w_i != 0`` only, ``(d,)`` in the accumulation dtype.

    Rows with weight 0 are never read, so a dropped row holding huge values (or
    Inf) cannot leak into the result through ``0 * x``.
    """
    n, d = x.shape
    acc = acc_dtype(x.dtype)
    w = w.to(device=x.device, dtype=acc)
    keep = torch.nonzero(w, as_tuple=False).flatten()
    if keep.numel() == n:
        return w @ x if x.dtype == acc else w @ x.to(acc)
    out = torch.zeros(d, dtype=acc, device=x.device)
    if keep.numel() == 0:
        return out
    wk = w[keep]
    for cols in column_slices(int(keep.numel()), d, x.device):
        out[cols] = wk @ x[keep, cols].to(acc)
    return out


def gaussian_noise(d: int, std: float, generator: torch.Generator, like: Tensor) -> Tensor:
    """``N(0, std^2)`` noise of length ``d`` drawn from ``generator``, in the accumulation dtype.

    The draw is always float32 on the generator's device, then moved to
    ``like``'s device and dtype, so one seed gives the same noise whatever the
    updates' dtype, and on CPU and GPU runs that share a CPU generator.
    """
    z = torch.randn(d, generator=generator, device=generator.device, dtype=torch.float32)
    return (z.to(device=like.device, dtype=acc_dtype(like.dtype))) * std


def require_generator(rule: str, generator: torch.Generator | None) -> torch.Generator:
    """Return ``generator`` or raise a clear error: rules draw randomness from nowhere else."""
    if generator is None:
        raise RuleConfigError(f"{rule} draws random numbers and needs context.generator (got None)")
    return generator


def finish(vector: Tensor, like: Tensor) -> Tensor:
    """Cast an accumulated result back to the input's dtype and device."""
    return vector.to(device=like.device, dtype=like.dtype)


def everyone(n: int, device: torch.device) -> Tensor:
    """All row indices ``0 .. n-1``."""
    return torch.arange(n, device=device)


def nobody(device: torch.device) -> Tensor:
    """An empty long index tensor."""
    return torch.zeros(0, dtype=torch.long, device=device)


def mask_to_index(mask: Tensor) -> Tensor:
    """Sorted long indices of the true entries of a boolean mask."""
    return torch.nonzero(mask, as_tuple=False).flatten()
