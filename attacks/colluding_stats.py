"""Colluding attacks built from the benign updates' statistics: ALIE and IPM.

``kind = "colluding"``: called as
``attack(known, num_malicious, *, generator) -> (num_malicious, d)`` on the
deltas the colluders know: the round's ``(h, d)`` honest deltas with
``knowledge="omniscient"`` (default), their own ``(c, d)`` benign deltas with
``knowledge="partial"`` (contract and errors: :mod:`attacks._colluding`).
ALIE follows Baruch et al. (NeurIPS 2019), IPM Xie, Koyejo & Gupta (UAI 2020).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar

import torch
from torch import Tensor

from attacks._checks import is_int
from attacks._colluding import (
    CollusionInfeasible,
    Knowledge,
    check_colluders,
    check_honest,
    check_knowledge,
    check_m,
    finite,
    repeat,
)


class ALIE:
    """ALIE, "A Little Is Enough" (Baruch et al., NeurIPS 2019).

    Every malicious client sends ``mean - z * std`` of the benign updates it
    knows, coordinate-wise. ``std`` is the population standard deviation
    (divide by the number of rows), as in the authors' code
    (``np.var(grads, axis=0) ** 0.5``).

    * ``knowledge="omniscient"``: mean and std of the round's ``h`` honest
      updates. Unless ``z`` is fixed, it is the paper's ``z_max`` for the
      round's ``n = h + m`` clients: ``s = floor(n / 2 + 1) - m`` supporters
      are needed, and ``z = Phi^{-1}((n - s) / n)`` (standard normal
      quantile). A round in which the sampled attackers are a majority
      (``s <= 0``) leaves it undefined and raises :class:`CollusionInfeasible`.
    * ``knowledge="partial"``: the paper's own setting. The ``c`` colluders
      estimate mean and std from their own benign updates. They know the
      federation's ``n`` and ``m`` but not the round's honest updates, so ``z``
      must be given (the runner binds it to ``z_max`` for the whole
      federation; calling without it is a ``ValueError``). A std needs at
      least two colluders: with ``c < 2`` the call raises
      :class:`CollusionInfeasible` (the colluders then send their benign
      updates).

    Parameters
    ----------
    z : float, optional
        Fixed number of standard deviations (overrides the formula).
    knowledge : {"omniscient", "partial"}
        What the colluders know (see above).
    """

    kind: ClassVar[str] = "colluding"

    def __init__(self, *, z: float | None = None, knowledge: Knowledge = "omniscient") -> None:
        self.z = None if z is None else finite("ALIE", "z", z, positive=False)
        self.knowledge = check_knowledge("ALIE", knowledge)

    @staticmethod
    def z_max(num_clients: int, num_malicious: int) -> float:
        """The paper's ``z_max`` for ``n = num_clients`` of which ``m`` are malicious.

        Raises ``ValueError`` when ``s = floor(n/2 + 1) - m <= 0`` (the
        malicious clients already form a majority, the quantile is undefined).
        """
        n, m = num_clients, num_malicious
        if not (is_int(n) and is_int(m) and 1 <= m <= n):
            raise ValueError(f"ALIE.z_max needs 1 <= num_malicious <= num_clients, got n={n!r}, m={m!r}")
        s = math.floor(n / 2 + 1) - m
        if s <= 0:
            raise ValueError(
                f"ALIE: with n={n} clients and m={m} malicious, s = floor(n/2 + 1) - m = {s} <= 0, so "
                "z_max = Phi^-1((n - s)/n) is undefined; fix z explicitly or lower the number of "
                "malicious clients"
            )
        return NormalDist().inv_cdf((n - s) / n)

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        if self.knowledge == "partial":
            return self._partial(honest, num_malicious)
        h, d = check_honest("ALIE", honest)
        m = check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        z = self.z
        if z is None:
            try:
                z = self.z_max(h + m, m)
            except ValueError as err:  # with h, m >= 1 the only failure: attackers are a majority (s <= 0)
                raise CollusionInfeasible(f"{err} (this round: h={h} honest)") from None
        mean = honest.mean(dim=0)
        std = honest.std(dim=0, correction=0)
        return repeat(mean - z * std, m)

    def _partial(self, own: Tensor, num_malicious: int) -> Tensor:
        _, d = check_colluders("ALIE", own)
        m = check_m(num_malicious)
        if m == 0:
            return own.new_empty((0, d))
        if self.z is None:
            raise ValueError(
                "ALIE(knowledge='partial') needs z: the colluders do not know the round's honest count, so z_max "
                "is taken for the whole federation (ALIE.z_max(num_clients, num_malicious)); pass z"
            )
        check_colluders("ALIE", own, at_least=2, why="a standard deviation over one update is undefined")
        return repeat(own.mean(dim=0) - self.z * own.std(dim=0, correction=0), m)


class IPM:
    """Inner-product manipulation (Xie, Koyejo & Gupta, "Fall of Empires", UAI 2020).

    Every malicious client sends ``-epsilon * mean`` of the benign updates it
    knows. Small ``epsilon`` (0.1) defeats median/Krum-style rules while
    staying close to the honest cloud; large values (e.g. 100) flip the mean
    outright.

    * ``knowledge="omniscient"``: the true mean of the round's honest updates
      (the paper's setting).
    * ``knowledge="partial"``: the mean of the colluders' own benign updates,
      an estimate of the honest mean (one colluder suffices).

    Parameters
    ----------
    epsilon : float
        Positive scale.
    knowledge : {"omniscient", "partial"}
        What the colluders know (see above).
    """

    kind: ClassVar[str] = "colluding"

    def __init__(self, *, epsilon: float = 0.1, knowledge: Knowledge = "omniscient") -> None:
        self.epsilon = finite("IPM", "epsilon", epsilon)
        self.knowledge = check_knowledge("IPM", knowledge)

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        if self.knowledge == "partial":
            _, d = check_colluders("IPM", honest)
        else:
            _, d = check_honest("IPM", honest)
        m = check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        return repeat(honest.mean(dim=0) * (-self.epsilon), m)
