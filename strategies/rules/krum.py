"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017).

Variant pinned here (the paper's): with ``n`` updates of which at most ``f``
are Byzantine, row ``i``'s score is the sum of the *squared* Euclidean
distances to its ``n - f - 2`` nearest *other* rows; the rule needs
``n > 2f + 2`` (so at least one neighbour is counted). Krum returns the row
with the lowest score; Multi-Krum returns the unweighted mean of the ``m`` rows
with the lowest scores (``m = n - f`` by default; ``m = 1`` is Krum).
ByzFL and some other libraries count ``n - f - 1`` neighbours instead; this
module does not.

Ties: equal scores (e.g. two rows that are each other's only counted
neighbour when ``n - f - 2 = 1``) go to the row with the smaller total
distance to all rows, then to the lower index.

Against Flower 1.41 (``flwr.serverapp.strategy.Krum`` / ``MultiKrum``, which
call ``select_multikrum``):

* same score (squared distances, ``n - f - 2`` nearest others), same
  selection on inputs without score ties. Flower ranks ``argsort(distance)[1:]``,
  i.e. it assumes a row's own zero distance sorts first, and breaks score ties
  by ``numpy.argsort``'s (unstable) order;
* Flower does not check ``n > 2f + 2``: it clamps the neighbour count to
  ``max(1, n - f - 2)`` and silently runs outside the rule's guarantee; here
  :class:`RuleConfigError` is raised;
* Flower's ``MultiKrum`` default is ``num_nodes_to_select=1`` (plain Krum) and
  it averages the selected replies *weighted by the client-reported*
  ``num-examples``; here ``m`` defaults to ``n - f`` and the mean is
  unweighted (the paper's, and never trusting what a client says about itself).
  With equal ``num-examples`` the two agree.

Decision: ``selected`` is the ``m`` rows with the lowest scores (weight
``1/m`` each); the rows left out are not flagged (Krum selects, it does not
declare anyone malicious: ``detects = False``, ``flagged`` is empty).

Degenerate configurations: Multi-Krum with ``m = n`` averages every row, which
is exactly the plain mean; :meth:`MultiKrum.check_clients` refuses it (with the
default ``m = n - f`` that is ``f = 0``). Krum (``m = 1``) never is: it needs
``n > 2f + 2 >= 2`` rows and returns one of them.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules._common import (
    finish,
    int_param,
    nobody,
    pairwise_sq_dists,
    weighted_sum,
)
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, as_index, check_updates


def check_krum_clients(rule: str, n: int, f: int) -> None:
    """Raise :class:`RuleConfigError` unless ``n > 2f + 2``."""
    if n <= 2 * f + 2:
        raise RuleConfigError(
            f"{rule} needs n > 2f + 2 replies, got n={n} with f={f} (2f + 2 = {2 * f + 2}); "
            f"lower f or sample at least {2 * f + 3} clients per round"
        )


def krum_scores(sq_dists: Tensor, f: int) -> Tensor:
    """Krum scores from an ``(n, n)`` squared-distance matrix (sum over the ``n - f - 2`` nearest others)."""
    n = sq_dists.shape[0]
    k = n - f - 2
    off = sq_dists.clone()
    off.fill_diagonal_(float("inf"))
    return torch.topk(off, k, dim=1, largest=False).values.sum(dim=1)


def krum_order(sq_dists: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """Rows sorted from best (lowest score) to worst, and the scores.

    Ties go to the smaller total distance to all rows, then to the lower index.
    """
    scores = krum_scores(sq_dists, f)
    total = sq_dists.sum(dim=1)
    by_total = torch.argsort(total, stable=True)
    return by_total[torch.argsort(scores[by_total], stable=True)], scores


def _check(rule: str, n: int, f: int, m: int) -> tuple[int, int]:
    f = int_param(rule, "f", f, minimum=0)
    check_krum_clients(rule, n, f)
    m = int_param(rule, "m", m, minimum=1)
    if m > n:
        raise RuleConfigError(f"{rule}: m must be <= n, got m={m} with n={n}")
    return f, m


def multikrum_decision(sq_dists: Tensor, f: int, m: int, rule: str = "multikrum") -> Aggregate:
    """Multi-Krum's decision from the ``(n, n)`` squared distances alone, without the vector.

    Returns an :class:`Aggregate` whose ``vector`` is empty; ``weights``
    (``1/m`` on the ``m`` best rows) are in the distances' dtype. Used by
    :func:`krum`/:func:`multikrum` and by pre-aggregators that know the
    distances between mixed rows without forming them.
    """
    n = sq_dists.shape[0]
    f, m = _check(rule, n, f, m)
    device = sq_dists.device
    order, scores = krum_order(sq_dists, f)
    best = order[:m]
    weights = torch.zeros(n, dtype=sq_dists.dtype, device=device)
    weights[best] = 1.0 / m
    return Aggregate(
        vector=torch.zeros(0, dtype=sq_dists.dtype, device=device),
        weights=weights,
        selected=as_index(best.cpu()).to(device),
        flagged=nobody(device),
        info={"neighbours": float(n - f - 2), "best_score": float(scores[order[0]])},
    )


def _multikrum(updates: Tensor, f: int, m: int, rule: str) -> Aggregate:
    n = check_updates(updates)
    _check(rule, n, f, m)
    decision = multikrum_decision(pairwise_sq_dists(updates), f, m, rule)
    weights = decision.weights.to(updates.dtype)
    return dataclasses.replace(
        decision,
        vector=finish(weighted_sum(updates, weights), updates),
        weights=weights,
    )


def krum(updates: Tensor, *, f: int) -> Aggregate:
    """Krum: return the update with the lowest Krum score.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    f : int
        Assumed number of Byzantine updates; requires ``n > 2f + 2``.

    Returns
    -------
    Aggregate
        The selected row (weight 1); the others left out, none flagged.
    """
    return _multikrum(updates, f, 1, "krum")


def multikrum(updates: Tensor, *, f: int, m: int | None = None) -> Aggregate:
    """Multi-Krum: unweighted mean of the ``m`` updates with the lowest Krum scores.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    f : int
        Assumed number of Byzantine updates; requires ``n > 2f + 2``.
    m : int, optional
        How many updates to average, ``1 <= m <= n``; default ``n - f``.

    Returns
    -------
    Aggregate
        The ``m`` selected rows (weight ``1/m`` each); the others left out, none flagged.
    """
    n = check_updates(updates)
    return _multikrum(updates, f, n - f if m is None else m, "multikrum")


class Krum:
    """Krum as a configured rule (see :func:`krum`).

    Parameters
    ----------
    f : int
        Assumed number of Byzantine clients per round.
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, f: int) -> None:
        self.f = int_param("krum", "f", f, minimum=0)

    def check_clients(self, n: int) -> None:
        """Krum needs ``n > 2f + 2`` replies."""
        check_krum_clients("krum", n, self.f)

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        return krum(updates, f=self.f)

    def decide_from_sq_dists(self, sq_dists: Tensor) -> Aggregate:
        """The decision (no vector) from the rows' squared distances; see :func:`multikrum_decision`."""
        return multikrum_decision(sq_dists, self.f, 1, "krum")


class MultiKrum:
    """Multi-Krum as a configured rule (see :func:`multikrum`).

    Parameters
    ----------
    f : int
        Assumed number of Byzantine clients per round.
    m : int, optional
        How many updates to average; default ``n - f`` of each round. Must
        stay below each round's ``n`` (``m = n`` is the plain mean).
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, f: int, m: int | None = None) -> None:
        self.f = int_param("multikrum", "f", f, minimum=0)
        self.m = None if m is None else int_param("multikrum", "m", m, minimum=1)

    def check_clients(self, n: int) -> None:
        """Multi-Krum needs ``n > 2f + 2`` replies and averages fewer than all of them (``m < n``).

        ``m = n`` (with the default ``m = n - f``: ``f = 0``) averages every
        reply, exactly the plain mean, and is refused.
        """
        check_krum_clients("multikrum", n, self.f)
        if self.m is not None and self.m > n:
            raise RuleConfigError(f"multikrum: m must be <= n, got m={self.m} with n={n}")
        m = n - self.f if self.m is None else self.m
        if m == n:
            raise RuleConfigError(
                f"multikrum averages m={m} of n={n} replies (f={self.f}, m={self.m}): every reply, which is the "
                f"plain mean; set strategy.m below n or strategy.f >= 1 (m defaults to n - f), "
                f"or use strategy=fedavg for a plain mean"
            )

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        return multikrum(updates, f=self.f, m=self.m)

    def decide_from_sq_dists(self, sq_dists: Tensor) -> Aggregate:
        """The decision (no vector) from the rows' squared distances; see :func:`multikrum_decision`."""
        n = sq_dists.shape[0]
        return multikrum_decision(sq_dists, self.f, n - self.f if self.m is None else self.m)
