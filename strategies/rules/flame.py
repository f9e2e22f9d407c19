"""FLAME (Nguyen et al., USENIX Security 2022, "FLAME: taming backdoors in federated
learning").

Three steps per round:

1. **filtering**: cluster the updates on their pairwise cosine distances and
   keep the majority cluster. FLAME uses HDBSCAN with
   ``min_cluster_size = n // 2 + 1`` (and, in the public reimplementations,
   ``min_samples=1, allow_single_cluster=True``). With a minimum cluster size
   above n/2 the HDBSCAN hierarchy can never hold two clusters, and its
   labelling of the single (root) cluster keeps exactly the points still in
   it at its largest ``lambda``, i.e. **the first connected component of at
   least ``n // 2 + 1`` rows that appears when the single-linkage (minimum
   spanning tree) edges are added in increasing order of distance**. So the
   filter keeps the tightest group of (at least) ``n // 2 + 1`` updates and
   drops every update that joins it only at a larger distance, honest
   stragglers included, exactly as the library's labelling does. This
   module computes that component directly (Prim's MST on the ``n x n``
   distance matrix, then Kruskal-style union-find over its ``n - 1`` edges),
   without the ``hdbscan`` / scikit-learn dependency. With ``min_samples=1``
   the mutual-reachability distance gives the same single-linkage hierarchy
   as the plain distance (a point's core distance is its nearest-neighbour
   distance), so no core distances are needed. The equivalence was derived
   from HDBSCAN's labelling rule, not tested against the library (it is not
   installed).
2. **adaptive clipping**: ``S = median(||x_1||, ..., ||x_n||)`` over *all* n
   updates, as in FLAME's Algorithm 1 (``S_t = Median(e_1, ..., e_n)``; some
   reimplementations take the median over the admitted updates only), with
   numpy's even-n median; each kept update is scaled by
   ``min(1, S / ||x_i||)``; the kept, clipped updates are averaged (unweighted).
3. **noise**: ``N(0, (lambda * S)^2 I)`` is added to the average (drawn from
   ``context.generator``); the paper uses ``lambda = 0.001`` for image
   classification, 0.01 for NLP.

Deviation: FLAME's Algorithm 1 computes the cosine distances between the local
*models* ``W_i``; here they are computed between the updates ``W_i - G`` (what
the rule sees). Cosines between full models are all close to 1, dominated by
the shared global model, and their differences drown in float32 rounding,
while the updates carry the directions the filter is meant to compare.

FLAME is a detector (``detects = True``): ``flagged`` is the rows outside the
majority cluster; ``weights`` are the coefficients ``min(1, S / ||x_i||) / k``
of the ``k`` kept rows (before noise, the vector is exactly
``weights @ updates``).

Degenerate ``n``: with ``n <= 2`` the majority cluster needs
``n // 2 + 1 = n`` rows, i.e. every reply, so the filter can never drop
anyone and FLAME is only clipping plus noise; :meth:`Flame.check_clients`
refuses ``n < 3`` (the function computes it).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from strategies.rules._common import (
    cosine_similarity_matrix,
    everyone,
    finish,
    float_param,
    gaussian_noise,
    require_generator,
    row_norms,
    weighted_sum,
)
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def minimum_spanning_tree(dist: np.ndarray) -> list[tuple[float, int, int]]:
    """Prim's algorithm on a dense symmetric ``(n, n)`` matrix: the ``n - 1`` edges ``(w, i, j)``."""
    n = dist.shape[0]
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = dist[0].copy()
    parent = np.zeros(n, dtype=np.int64)
    edges: list[tuple[float, int, int]] = []
    for _ in range(n - 1):
        j = int(np.argmin(np.where(in_tree, np.inf, best)))
        i = int(parent[j])
        edges.append((float(best[j]), min(i, j), max(i, j)))
        in_tree[j] = True
        closer = dist[j] < best
        best = np.where(closer, dist[j], best)
        parent = np.where(closer, j, parent)
    return edges


def majority_cluster(dist: Tensor, min_size: int) -> Tensor:
    """Rows of the first single-linkage component with at least ``min_size`` members.

    Equals HDBSCAN(min_cluster_size=min_size > n/2, min_samples=1,
    allow_single_cluster=True)'s cluster on the precomputed distances (see the
    module docstring); MST edges tied with the one that completes the
    component are merged too, as HDBSCAN handles a whole distance level at
    once. Returns a boolean ``(n,)`` mask on CPU.
    """
    n = dist.shape[0]
    if min_size <= 1 or n <= 1:
        return torch.ones(n, dtype=torch.bool)
    parent = list(range(n))
    size = [1] * n

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(i: int, j: int) -> int:
        a, b = root(i), root(j)
        if a != b:
            if size[a] < size[b]:
                a, b = b, a
            parent[b] = a
            size[a] += size[b]
        return a

    d = np.nan_to_num(dist.detach().to(torch.float64).cpu().numpy(), nan=np.inf)
    edges = sorted(minimum_spanning_tree(d))
    for at, (w, i, j) in enumerate(edges):
        a = union(i, j)
        if size[a] >= min_size:
            for w2, i2, j2 in edges[at + 1 :]:
                if w2 != w:
                    break
                union(i2, j2)
            top = root(i)
            return torch.tensor([root(v) == top for v in range(n)], dtype=torch.bool)
    return torch.ones(n, dtype=torch.bool)  # unreachable: the last merge joins all n rows


def flame(
    updates: Tensor,
    *,
    noise_lambda: float = 0.001,
    generator: torch.Generator | None = None,
) -> Aggregate:
    """FLAME: majority cosine cluster, clip at the median norm, add noise.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    noise_lambda : float
        Noise level: std = ``noise_lambda * S`` (>= 0; 0 disables noise).
    generator : torch.Generator, optional
        Required when the noise std is positive.

    Returns
    -------
    Aggregate
        Noisy mean of the clipped majority cluster; the rest flagged.
    """
    noise_lambda = float_param("flame", "noise_lambda", noise_lambda, low=0.0)
    n = check_updates(updates)
    cos_dist = 1.0 - cosine_similarity_matrix(updates)
    cluster = majority_cluster(cos_dist, n // 2 + 1).to(updates.device)
    norms = row_norms(updates)
    bound = float(torch.quantile(norms.to(torch.float64), 0.5))  # mean of the two middles, like numpy
    scale = torch.where(norms > bound, bound / norms.clamp_min(torch.finfo(norms.dtype).tiny), 1.0)
    kept = int(cluster.sum())
    coef = torch.where(cluster, scale / kept, torch.zeros_like(scale))
    vector = weighted_sum(updates, coef)
    std = noise_lambda * bound
    if std > 0:
        gen = require_generator("flame", generator)
        vector = vector + gaussian_noise(updates.shape[1], std, gen, updates)
    return Aggregate(
        vector=finish(vector, updates),
        weights=coef.to(updates.dtype),
        selected=everyone(n, updates.device)[coef > 0],
        flagged=everyone(n, updates.device)[~cluster],
        info={
            "cluster_size": float(kept),
            "clip_bound": bound,
            "clipped": float((cluster & (norms > bound)).sum()),
            "noise_std": std,
        },
    )


class Flame:
    """FLAME as a configured rule (see :func:`flame`).

    Parameters
    ----------
    noise_lambda : float
        Noise std relative to the clipping bound; default 0.001 (the paper's
        value for image classification).
    """

    detects: ClassVar[bool] = True

    def __init__(self, *, noise_lambda: float = 0.001) -> None:
        self.noise_lambda = float_param("flame", "noise_lambda", noise_lambda, low=0.0)

    def check_clients(self, n: int) -> None:
        """At least 3 replies: below 3 the majority cluster is every reply and nothing can be filtered."""
        if n < 1:
            raise RuleConfigError(f"flame needs at least 1 reply, got n={n}")
        if n < 3:
            raise RuleConfigError(
                f"flame needs at least 3 replies to cluster, got n={n}: its majority cluster of n // 2 + 1 = "
                f"{n // 2 + 1} rows is every reply, so it filters nothing; sample at least 3 clients per round"
            )

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        generator = context.generator if context is not None else None
        return flame(updates, noise_lambda=self.noise_lambda, generator=generator)
