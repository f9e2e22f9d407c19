"""Coordinate-wise median (Yin et al., ICML 2018, "Byzantine-robust distributed
learning: towards optimal statistical rates").

Each coordinate of the aggregate is the median of that coordinate over the
``n`` updates. For even ``n`` the median is the *mean of the two middle values*
(numpy's definition, hence Flower 1.41's ``FedMedian``, which calls
``np.median(..., axis=0)``); note that ``torch.median`` alone would return the
lower middle value instead.

Against Flower 1.41 ``flwr.serverapp.strategy.FedMedian``: the same numbers on
the same inputs (it aggregates full models, this rule deltas; the median
commutes with adding the same global model to every row, up to rounding).

Per-row ``weights`` are each row's share of the median values over all
coordinates (a middle value counts 1/2 for even ``n``); ``selected`` is the
rows with a positive share; nothing is flagged (``detects = False``).

Degenerate ``n``: the median of one value is that value and the median of two
is their mean, so with ``n <= 2`` replies the rule is exactly the plain mean;
:meth:`Median.check_clients` refuses ``n <= 2`` (the function computes it).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from strategies.rules._common import mask_to_index, nobody
from strategies.rules._coordinatewise import coordinate_median
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def median(updates: Tensor) -> Aggregate:
    """Coordinate-wise median of the rows of ``updates`` (numpy's even-n definition).

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.

    Returns
    -------
    Aggregate
        Median vector; per-row share of median values as ``weights``; no flags.
    """
    check_updates(updates)
    vector, shares = coordinate_median(updates)
    weights = shares.to(updates.dtype)
    return Aggregate(
        vector=vector,
        weights=weights,
        selected=mask_to_index(shares > 0),
        flagged=nobody(updates.device),
    )


class Median:
    """Coordinate-wise median as a configured rule (no hyper-parameters)."""

    detects: ClassVar[bool] = False

    def check_clients(self, n: int) -> None:
        """At least 3 replies: the median of ``n <= 2`` values is their plain mean."""
        if n < 1:
            raise RuleConfigError(f"median needs at least 1 reply, got n={n}")
        if n <= 2:
            raise RuleConfigError(
                f"median of n={n} replies is their plain mean (the median of 2 values averages them); "
                f"sample at least 3 clients per round, or use strategy=fedavg for a plain mean"
            )

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        return median(updates)
