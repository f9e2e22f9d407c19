"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

For each coordinate, drop the ``k`` smallest and the ``k`` largest of the ``n``
values and average the remaining ``n - 2k``. ``beta`` is the fraction trimmed
from *each* side, ``0 <= beta < 0.5``, and the cut count is

    k = int(beta * n)        (floor, in floating point)

exactly as Flower 1.41's ``FedTrimmedAvg`` (``trim_mean``, after
``scipy.stats.trim_mean``) computes it, so both trim the same number of values
(mind the floating point: ``int(0.29 * 100) == 28``). Yin et al. need
``beta >= f / n`` to tolerate ``f`` Byzantine updates; ``k = 0`` is the plain
mean.

Degenerate ``n``: a ``beta > 0`` that trims ``int(beta * n) = 0`` values (e.g.
``beta = 0.2`` with ``n = 4``) is silently the plain mean, so
:meth:`TrimmedMean.check_clients` refuses it; the runner calls it with
``clients_per_round`` and the adapter again every round with the number of
valid replies. ``beta = 0`` stays allowed: an explicit plain mean. The function
:func:`trimmed_mean` computes any cut, as Flower's ``FedTrimmedAvg`` does.

Against Flower 1.41 ``flwr.serverapp.strategy.FedTrimmedAvg``: same cut count
and same kept values; the kept values are summed in a different order, so
results agree to float rounding, not bit for bit. Flower's default is ``beta = 0.2``; so is ours.

Per-row ``weights`` are each row's share of the kept values over all
coordinates; ``selected`` is the rows with a positive share; nothing is
flagged, ``detects = False`` (``info["trimmed_each_side"]`` gives ``k``).
"""

from __future__ import annotations

import math
from typing import ClassVar

from torch import Tensor

from strategies.rules._common import float_param, mask_to_index, nobody
from strategies.rules._coordinatewise import coordinate_trimmed_mean
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def trim_count(beta: float, n: int) -> int:
    """Values cut from each side: ``int(beta * n)``, Flower's and scipy's definition."""
    return int(beta * n)


def _check_beta(rule: str, beta: float) -> float:
    return float_param(rule, "beta", beta, low=0.0, high=0.5, high_open=True)


def smallest_trimming_beta(n: int) -> float:
    """The smallest ``beta`` with 4 decimals that trims at least one value of ``n`` (``int(beta * n) >= 1``)."""
    beta = math.ceil(1e4 / n) / 1e4
    while trim_count(beta, n) < 1:  # 1/n rounded up can still land just below 1 after the float product
        beta += 1e-4
    return beta


def check_trim(beta: float, n: int) -> None:
    """Raise :class:`RuleConfigError` for no replies, or when ``beta > 0`` trims nothing at ``n`` (the plain mean)."""
    if n < 1:
        raise RuleConfigError(f"trimmed_mean needs at least 1 reply, got n={n}")
    if beta > 0 and trim_count(beta, n) == 0:
        if n <= 2:
            fix = "sample at least 3 clients per round (a beta below 0.5 trims nothing from 2 values)"
        else:
            fix = f"raise strategy.beta to >= 1/n ({smallest_trimming_beta(n):g} for n={n})"
        raise RuleConfigError(
            f"trimmed_mean with beta={beta} trims int(beta * n) = int({beta * n:g}) = 0 values from each side "
            f"at n={n}: that is the plain mean; {fix}, or use strategy=fedavg for a plain mean"
        )


def trimmed_mean(updates: Tensor, *, beta: float) -> Aggregate:
    """Coordinate-wise trimmed mean, cutting ``int(beta * n)`` values from each side.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    beta : float
        Fraction trimmed from each side, in ``[0, 0.5)``.

    Returns
    -------
    Aggregate
        Trimmed-mean vector; per-row share of kept values as ``weights``; no flags.
    """
    beta = _check_beta("trimmed_mean", beta)
    n = check_updates(updates)
    cut = trim_count(beta, n)
    vector, shares = coordinate_trimmed_mean(updates, cut)
    return Aggregate(
        vector=vector,
        weights=shares.to(updates.dtype),
        selected=mask_to_index(shares > 0),
        flagged=nobody(updates.device),
        info={"trimmed_each_side": float(cut)},
    )


class TrimmedMean:
    """Coordinate-wise trimmed mean as a configured rule (see :func:`trimmed_mean`).

    Parameters
    ----------
    beta : float
        Fraction trimmed from each side, in ``[0, 0.5)``; default 0.2 (Flower's),
        which trims at least one value from each side from ``n = 5`` replies on.
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, beta: float = 0.2) -> None:
        self.beta = _check_beta("trimmed_mean", beta)

    def check_clients(self, n: int) -> None:
        """At least 1 reply, and ``beta > 0`` must trim at least one value per side (else it is the plain mean)."""
        check_trim(self.beta, n)

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        return trimmed_mean(updates, beta=self.beta)
