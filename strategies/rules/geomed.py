"""Geometric median by the smoothed Weiszfeld algorithm: RFA (Pillutla, Kakade and
Harchaoui, IEEE TSP 2022, "Robust aggregation for federated learning").

Approximately minimises ``sum_i alpha_i * max(nu, ||v - x_i||)`` over ``v``
(the nu-smoothed geometric median objective), starting from the weighted mean:

    beta_i = alpha_i / max(nu, ||v - x_i||)
    v      = sum_i beta_i x_i / sum_i beta_i

and stops after ``max_iter`` iterations or when the objective
``sum_i alpha_i ||v - x_i||`` changes by at most ``tol`` times its value
(RFA's reference code stops the same way). Defaults are those of RFA's
reference implementation: ``max_iter=4``, ``nu=1e-5``, ``tol=1e-6``; the paper
reports that a few iterations suffice. Raise ``max_iter`` for a converged
geometric median.

``alpha`` is uniform, or the server-known example weights with
``weighted=True``. The per-row ``weights`` of the result are the final
normalised ``beta`` (the vector is exactly ``weights @ updates``); nothing is
flagged (``detects = False``).

Degenerate ``n``: one point is its own median, and for two points with equal
``alpha`` every Weiszfeld iterate stays at their mean (the start point is
equally far from both, so both get the same ``beta``): with ``n <= 2`` the rule
is exactly the plain mean. With unequal ``alpha`` two points only pull towards
the heavier one; two replies have no majority to protect either way.
:meth:`GeoMed.check_clients` refuses ``n <= 2``; the function computes it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules._common import (
    acc_dtype,
    everyone,
    finish,
    float_param,
    int_param,
    nobody,
    sq_dists_to,
    weighted_sum,
)
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def _alphas(weights: Tensor | None, n: int, like: Tensor) -> Tensor:
    acc = acc_dtype(like.dtype)
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=acc, device=like.device)
    a = torch.as_tensor(weights).to(device=like.device, dtype=acc).flatten()
    if a.shape[0] != n:
        raise ValueError(f"geomed: weights has {a.shape[0]} entries for {n} updates")
    if bool((a < 0).any()) or float(a.sum()) <= 0:
        raise ValueError(f"geomed: weights must be non-negative with a positive sum, got {a.tolist()}")
    return a / a.sum()


def geomed(
    updates: Tensor,
    *,
    weights: Tensor | None = None,
    max_iter: int = 4,
    tol: float = 1e-6,
    nu: float = 1e-5,
) -> Aggregate:
    """Smoothed-Weiszfeld geometric median (RFA).

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    weights : Tensor, optional
        ``(n,)`` non-negative ``alpha``; ``None`` for uniform.
    max_iter : int
        Maximum Weiszfeld iterations (>= 1).
    tol : float
        Relative change of the objective below which iteration stops (>= 0).
    nu : float
        Smoothing: distances below ``nu`` count as ``nu`` (> 0).

    Returns
    -------
    Aggregate
        The approximate geometric median; Weiszfeld weights; nothing flagged.
    """
    max_iter = int_param("geomed", "max_iter", max_iter, minimum=1)
    tol = float_param("geomed", "tol", tol, low=0.0)
    nu = float_param("geomed", "nu", nu, low=0.0, low_open=True)
    n = check_updates(updates)
    alpha = _alphas(weights, n, updates)
    beta = alpha
    v = weighted_sum(updates, alpha)
    dist = sq_dists_to(updates, v).sqrt()
    objective = float((alpha * dist).sum())
    done = 0
    converged = False
    while done < max_iter:
        beta = alpha / dist.clamp_min(nu)
        beta = beta / beta.sum()
        v = weighted_sum(updates, beta)
        dist = sq_dists_to(updates, v).sqrt()
        previous, objective = objective, float((alpha * dist).sum())
        done += 1
        if abs(previous - objective) <= tol * objective:
            converged = True
            break
    return Aggregate(
        vector=finish(v, updates),
        weights=beta.to(updates.dtype),
        selected=everyone(n, updates.device)[beta > 0],
        flagged=nobody(updates.device),
        info={"iterations": float(done), "objective": objective, "converged": float(converged)},
    )


class GeoMed:
    """Geometric median (RFA) as a configured rule (see :func:`geomed`).

    Parameters
    ----------
    max_iter, tol, nu
        Smoothed-Weiszfeld settings; defaults from RFA's reference code.
    weighted : bool
        ``True``: ``alpha`` = the server-known example weights of the round.
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, max_iter: int = 4, tol: float = 1e-6, nu: float = 1e-5, weighted: bool = False) -> None:
        self.max_iter = int_param("geomed", "max_iter", max_iter, minimum=1)
        self.tol = float_param("geomed", "tol", tol, low=0.0)
        self.nu = float_param("geomed", "nu", nu, low=0.0, low_open=True)
        if not isinstance(weighted, bool):
            raise RuleConfigError(f"geomed: weighted must be true or false, got {weighted!r}")
        self.weighted = weighted

    def check_clients(self, n: int) -> None:
        """At least 3 replies: the Weiszfeld iterate of ``n <= 2`` points is their plain mean."""
        if n < 1:
            raise RuleConfigError(f"geomed needs at least 1 reply, got n={n}")
        if n <= 2:
            raise RuleConfigError(
                f"geomed of n={n} replies is no defense: the Weiszfeld iterate of 1 or 2 equally weighted points "
                f"stays at their plain mean (and 2 weighted points have no majority); sample at least 3 clients "
                f"per round, or use strategy=fedavg for a plain mean"
            )

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        weights = context.weights if (self.weighted and context is not None) else None
        if self.weighted and weights is None:
            raise RuleConfigError("geomed(weighted=true) needs the partition sizes in the round context")
        return geomed(updates, weights=weights, max_iter=self.max_iter, tol=self.tol, nu=self.nu)
