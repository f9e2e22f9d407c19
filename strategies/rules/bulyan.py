"""Bulyan (El Mhamdi, Guerraoui and Rouault, ICML 2018, "The hidden vulnerability
of distributed learning in Byzantium").

With ``n >= 4f + 3`` updates:

1. selection: pick ``theta = n - 2f`` updates by *iterated Krum*: score the
   rows still in play with Krum on that set (``r`` rows, squared distances,
   ``max(1, r - f - 2)`` nearest others, capped at ``r - 1``), move the best
   row to the selection, repeat;
2. aggregation: for each coordinate, take the median of the ``theta`` selected
   values (numpy's definition: mean of the two middles for even ``theta``) and
   average the ``beta = theta - 2f`` values closest to it.

``selection="iterated"`` (default) is the paper's recursion and matches
Flower 1.41's *legacy* ``flwr.server.strategy.aggregate.aggregate_bulyan``
with ``aggregate_krum`` (same neighbour count, including its ``max(1, .)``
clamp for the last steps where ``r - f - 2 < 1``).

``selection="multikrum"`` scores all ``n`` rows once and keeps the ``theta``
best (one-shot Multi-Krum), which is what Flower 1.41's Message-API strategy
``flwr.serverapp.strategy.Bulyan`` does (``select_multikrum(replies, f,
theta)``). The two selections differ whenever removing a selected row
changes the ranking of the others; the tests construct such a case.

Other differences from Flower:

* ties between equal Krum scores (two rows that are each other's only counted
  neighbour, which happens in the last steps when ``f <= 2``) go to the more
  central row (smaller total distance to the rows in play), then to the lower
  index; Flower takes the first tied row in reply order, so its result can
  depend on the order in which replies arrive;
* in stage 2, when values on both sides of the median sit at exactly the
  ``beta``-th distance and not all of them fit, the free slots take their
  average (order-independent); Flower's ``argsort`` keeps whichever comes
  first. Without such exact ties the two agree;
* Flower's ``Bulyan`` logs a warning and skips the round when
  ``n < 4f + 3``; here :class:`RuleConfigError` is raised.

Per-row ``weights`` are each selected row's share of the averaged values over
all coordinates; ``selected`` is the ``theta`` rows of stage 1 (a selected row
may still have share 0). The ``2f`` rows stage 1 leaves out are not flagged:
Bulyan selects, it does not declare anyone malicious (``detects = False``,
``flagged`` is empty).

Degenerate configuration: with ``f = 0`` both stages keep every row
(``theta = beta = n``), which is exactly the plain mean;
:meth:`Bulyan.check_clients` refuses it. The function :func:`bulyan` computes
it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from strategies.rules._common import int_param, nobody, pairwise_sq_dists
from strategies.rules._coordinatewise import mean_closest_to_median
from strategies.rules._iterated_krum import iterated_krum
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, as_index, check_updates
from strategies.rules.krum import krum_order

Selection = Literal["iterated", "multikrum"]
_SELECTIONS = ("iterated", "multikrum")


def check_bulyan_clients(n: int, f: int) -> None:
    """Raise :class:`RuleConfigError` unless ``n >= 4f + 3``."""
    if n < 4 * f + 3:
        raise RuleConfigError(
            f"bulyan needs n >= 4f + 3 replies, got n={n} with f={f} (4f + 3 = {4 * f + 3}); "
            f"lower f or sample at least {4 * f + 3} clients per round"
        )


def _check_selection(selection: str) -> str:
    if selection not in _SELECTIONS:
        raise RuleConfigError(f"bulyan: selection must be one of {list(_SELECTIONS)}, got {selection!r}")
    return selection


def bulyan_select(updates: Tensor, *, f: int, selection: Selection = "iterated") -> Tensor:
    """Stage 1 of Bulyan: the ``theta = n - 2f`` selected row indices, in the order picked."""
    n = check_updates(updates)
    theta = n - 2 * f
    dist = pairwise_sq_dists(updates)
    if selection == "iterated":
        picked = iterated_krum(dist.cpu().to(torch.float64).numpy(), f, theta)
        return torch.tensor(picked, dtype=torch.long, device=updates.device)
    order, _ = krum_order(dist, f)
    return order[:theta]


def bulyan(updates: Tensor, *, f: int, selection: Selection = "iterated") -> Aggregate:
    """Bulyan over the rows of ``updates``.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    f : int
        Assumed number of Byzantine updates; requires ``n >= 4f + 3``.
    selection : {"iterated", "multikrum"}
        Stage-1 selection: the paper's iterated Krum (default) or Flower
        1.41 ``serverapp`` Bulyan's one-shot Multi-Krum.

    Returns
    -------
    Aggregate
        Bulyan vector; the ``theta`` selected rows; the other ``2f`` left out, none flagged.
    """
    f = int_param("bulyan", "f", f, minimum=0)
    selection = _check_selection(selection)  # type: ignore[assignment]
    n = check_updates(updates)
    check_bulyan_clients(n, f)
    theta = n - 2 * f
    beta = theta - 2 * f
    rows = bulyan_select(updates, f=f, selection=selection)
    vector, shares = mean_closest_to_median(updates, rows, beta)
    weights = torch.zeros(n, dtype=updates.dtype, device=updates.device)
    weights[rows] = shares.to(updates.dtype)
    return Aggregate(
        vector=vector,
        weights=weights,
        selected=as_index(rows.cpu()).to(updates.device),
        flagged=nobody(updates.device),
        info={"theta": float(theta), "beta": float(beta)},
    )


class Bulyan:
    """Bulyan as a configured rule (see :func:`bulyan`).

    Parameters
    ----------
    f : int
        Assumed number of Byzantine clients per round; ``f = 0`` is refused by
        :meth:`check_clients` (it is the plain mean).
    selection : {"iterated", "multikrum"}
        Stage-1 selection; default the paper's iterated Krum.
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, f: int, selection: Selection = "iterated") -> None:
        self.f = int_param("bulyan", "f", f, minimum=0)
        self.selection: Selection = _check_selection(selection)  # type: ignore[assignment]

    def check_clients(self, n: int) -> None:
        """Bulyan needs ``n >= 4f + 3`` replies and ``f >= 1`` (with ``f = 0`` it keeps every row: the plain mean)."""
        check_bulyan_clients(n, self.f)
        if self.f == 0:
            raise RuleConfigError(
                f"bulyan with f=0 keeps all n={n} replies in both stages (theta = beta = n), which is the plain "
                f"mean; set strategy.f >= 1 (and sample at least 7 clients per round) or use strategy=fedavg"
            )

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        return bulyan(updates, f=self.f, selection=self.selection)
