"""Colluding attacks built from the honest updates' statistics: ALIE and IPM.

Omniscient, ``kind = "colluding"``: called as
``attack(honest, num_malicious, *, generator) -> (num_malicious, d)`` on the
round's ``(h, d)`` honest deltas (contract and errors: :mod:`attacks._colluding`).
ALIE follows Baruch et al. (NeurIPS 2019), IPM Xie, Koyejo & Gupta (UAI 2020).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar

import torch
from torch import Tensor

from attacks._checks import is_int
from attacks._colluding import CollusionInfeasible, check_honest, check_m, finite, repeat


class ALIE:
    """ALIE, "A Little Is Enough" (Baruch et al., NeurIPS 2019), omniscient variant.

    Every malicious client sends ``mean - z * std`` of the honest updates,
    coordinate-wise. ``std`` is the population standard deviation (divide by
    ``h``), as in the authors' code (``np.var(grads, axis=0) ** 0.5``). The
    paper estimates mean and std from the attackers' own benign updates; here
    (omniscient) they are those of the round's honest updates.

    Unless ``z`` is fixed, it is the paper's ``z_max`` for the round's
    ``n = h + m`` clients: ``s = floor(n / 2 + 1) - m`` supporters are needed,
    and ``z = Phi^{-1}((n - s) / n)`` (standard normal quantile). A round in
    which the sampled attackers are a majority (``s <= 0``) leaves it undefined
    and raises :class:`CollusionInfeasible`.

    Parameters
    ----------
    z : float, optional
        Fixed number of standard deviations (overrides the formula).
    """

    kind: ClassVar[str] = "colluding"

    def __init__(self, *, z: float | None = None) -> None:
        self.z = None if z is None else finite("ALIE", "z", z, positive=False)

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


class IPM:
    """Inner-product manipulation (Xie, Koyejo & Gupta, "Fall of Empires", UAI 2020).

    Every malicious client sends ``-epsilon * mean(honest)`` (omniscient: the
    true mean of the round's honest updates). Small ``epsilon`` (0.1) defeats
    median/Krum-style rules while staying close to the honest cloud; large
    values (e.g. 100) flip the mean outright.

    Parameters
    ----------
    epsilon : float
        Positive scale.
    """

    kind: ClassVar[str] = "colluding"

    def __init__(self, *, epsilon: float = 0.1) -> None:
        self.epsilon = finite("IPM", "epsilon", epsilon)

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        _, d = check_honest("IPM", honest)
        m = check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        return repeat(honest.mean(dim=0) * (-self.epsilon), m)
