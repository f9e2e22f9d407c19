"""What the colluding attacks share (private): the call contract's checks and small helpers.

A colluding attack (``kind = "colluding"``) is **omniscient**: it crafts the
malicious updates of a round from that round's *honest* updates, the "full
knowledge" setting of the papers. Only the simulation's server-side wrapper can
call one; a real deployment has no such oracle. Each attack is configured once
with keyword-only hyper-parameters and called as
``attack(honest, num_malicious, *, generator) -> (num_malicious, d)``, where
``honest`` is the ``(h, d)`` matrix of honest deltas (local - global). Inputs are
never modified; the result has the dtype and device of ``honest``; randomness
comes only from ``generator``.

A bad hyper-parameter is a plain ``ValueError`` at construction. A round in
which the attack cannot be formed (no honest update, too few rows for the
attack's maths) raises :class:`CollusionInfeasible` from the call, so the caller
can tell the two apart.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attacks._checks import is_int


class CollusionInfeasible(ValueError):
    """The colluding attack cannot be formed from this round's updates; the message says why."""


def check_honest(owner: str, honest: Tensor) -> tuple[int, int]:
    """``(h, d)`` of the honest matrix; :class:`CollusionInfeasible` when the round has no honest update."""
    if not isinstance(honest, Tensor) or honest.ndim != 2 or not torch.is_floating_point(honest):
        raise ValueError(
            f"honest updates must be a floating-point (h, d) matrix, got {getattr(honest, 'shape', type(honest))!r}"
        )
    if honest.shape[0] == 0:
        raise CollusionInfeasible(
            f"{owner}: no honest update this round (h=0); colluding attacks need at least one honest update"
        )
    return honest.shape[0], honest.shape[1]


def check_m(num_malicious: int) -> int:
    """``num_malicious`` as an int, or ``ValueError`` unless it is a non-negative integer."""
    if not is_int(num_malicious) or num_malicious < 0:
        raise ValueError(f"num_malicious must be a non-negative integer, got num_malicious={num_malicious!r}")
    return int(num_malicious)


def finite(owner: str, name: str, value: float, *, positive: bool = True) -> float:
    """``value`` as a float, or ``ValueError`` unless it is finite (and ``> 0`` when ``positive``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        kind = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{owner}: {name} must be {kind}, got {name}={value!r}")
    return float(value)


def repeat(vector: Tensor, m: int) -> Tensor:
    """``m`` copies of ``vector`` as a new ``(m, d)`` tensor."""
    return vector.unsqueeze(0).expand(m, -1).clone()


def pairwise_sq(x: Tensor) -> Tensor:
    """``(h, h)`` squared Euclidean distances between rows, in float64.

    The distances are computed in the input dtype in exact mode (no Gram
    trick), then squared in float64.
    """
    d = torch.cdist(x.unsqueeze(0), x.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[0]
    return d.double() ** 2
