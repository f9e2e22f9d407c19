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

Against Flower 1.41 ``flwr.serverapp.strategy.FedTrimmedAvg``: same cut count
and same kept values; the kept values are summed in a different order, so
results agree to float rounding, not bit for bit. Flower's default is ``beta = 0.2``; so is ours.

Per-row ``weights`` are each row's share of the kept values over all
coordinates; ``selected`` is the rows with a positive share; nothing is
flagged (``info["trimmed_each_side"]`` gives ``k``).
"""

from __future__ import annotations

from torch import Tensor

from strategies.rules._common import float_param, mask_to_index, nobody
from strategies.rules._coordinatewise import coordinate_trimmed_mean
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def trim_count(beta: float, n: int) -> int:
    """Values cut from each side: ``int(beta * n)``, Flower's and scipy's definition."""
    return int(beta * n)


def _check_beta(rule: str, beta: float) -> float:
    return float_param(rule, "beta", beta, low=0.0, high=0.5, high_open=True)


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
        Fraction trimmed from each side, in ``[0, 0.5)``; default 0.2 (Flower's).
    """

    def __init__(self, *, beta: float = 0.2) -> None:
        self.beta = _check_beta("trimmed_mean", beta)

    def check_clients(self, n: int) -> None:
        """Any positive number of replies leaves at least one value per coordinate."""
        if n < 1:
            raise RuleConfigError(f"trimmed_mean needs at least 1 reply, got n={n}")

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        return trimmed_mean(updates, beta=self.beta)
