"""What the colluding attacks share (private): the call contract's checks and small helpers.

A colluding attack (``kind = "colluding"``) crafts the malicious updates of a
round from the benign updates it knows. What it knows is its ``knowledge``:

* ``"omniscient"`` (default): every *honest* update of the round, the "full
  knowledge" setting of the papers. Only the simulation's server-side wrapper
  can provide it; a real deployment has no such oracle.
* ``"partial"``: only the colluders' *own* benign updates (each malicious client
  first trains honestly on its data), the "partial knowledge" setting of Fang et
  al. (USENIX Security 2020) and Shejwalkar & Houmansadr (NDSS 2021), and the
  setting Baruch et al. (NeurIPS 2019) assume for ALIE. Each attack's docstring
  says how its statistics are estimated from them.

Each attack is configured once with keyword-only hyper-parameters and called
as ``attack(known, num_malicious, *, generator) -> (num_malicious, d)``, where
``known`` is the ``(k, d)`` matrix of the deltas (local - global) it knows: the
round's ``h`` honest deltas (omniscient), or the ``c`` colluders' benign deltas
(partial). Inputs are never modified; the result has the dtype and device of
``known``; randomness comes only from ``generator``.

A bad hyper-parameter is a plain ``ValueError`` at construction. A round in
which the attack cannot be formed (no known update, too few rows for the
attack's maths, e.g. a standard deviation over fewer than two colluders)
raises :class:`CollusionInfeasible` from the call, so the caller can tell the
two apart.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from attacks._checks import is_int

Knowledge = Literal["omniscient", "partial"]

#: what a colluding attack may know: every honest update of the round, or only the colluders' own benign updates
KNOWLEDGE: tuple[str, ...] = ("omniscient", "partial")


class CollusionInfeasible(ValueError):
    """The colluding attack cannot be formed from this round's updates; the message says why."""


def check_knowledge(owner: str, knowledge: str) -> str:
    """``knowledge`` itself, or ``ValueError`` unless it is one of :data:`KNOWLEDGE`."""
    if not isinstance(knowledge, str) or knowledge not in KNOWLEDGE:
        raise ValueError(
            f"{owner}: knowledge must be one of {list(KNOWLEDGE)} ('omniscient': every honest update of the round; "
            f"'partial': the colluders' own benign updates), got knowledge={knowledge!r}"
        )
    return knowledge


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


def check_colluders(owner: str, own: Tensor, *, at_least: int = 1, why: str = "") -> tuple[int, int]:
    """``(c, d)`` of the colluders' own benign updates (partial knowledge).

    :class:`CollusionInfeasible` when there are fewer than ``at_least`` rows
    (``why`` says which statistic needs them).
    """
    if not isinstance(own, Tensor) or own.ndim != 2 or not torch.is_floating_point(own):
        raise ValueError(
            f"the colluders' updates must be a floating-point (c, d) matrix, got {getattr(own, 'shape', type(own))!r}"
        )
    c = own.shape[0]
    if c < at_least:
        need = f" ({why})" if why else ""
        raise CollusionInfeasible(
            f"{owner} (partial knowledge) needs the benign updates of at least {at_least} colluder"
            f"{'s' if at_least > 1 else ''}{need}, got c={c}"
        )
    return c, own.shape[1]


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
