"""Fang et al.'s attacks on Krum and on trimmed mean / median, full and partial knowledge.

Fang, Cao, Jia & Gong, "Local Model Poisoning Attacks to Byzantine-Robust
Federated Learning" (USENIX Security 2020), applied to deltas (local - global)
as in the authors' and Shejwalkar & Houmansadr's code, which attack gradients
rather than model parameters. ``kind = "colluding"``: called as
``attack(known, num_malicious, *, generator) -> (num_malicious, d)`` on the
benign deltas the colluders know: the round's ``(h, d)`` honest deltas with
``knowledge="omniscient"`` (the paper's full knowledge, default), their own
``(c, d)`` benign deltas ("before-attack local models") with
``knowledge="partial"`` (the paper's partial knowledge); contract and errors:
:mod:`attacks._colluding`. The attack on Krum asks the server's own Krum
(:mod:`strategies.rules.krum`) which row it would select, so attack and
defense score rows identically.
"""

from __future__ import annotations

import math
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
    pairwise_sq,
    repeat,
)
from strategies.rules.krum import multikrum_decision


class FangTrimmedMean:
    """Fang et al. (USENIX Security 2020) attack on trimmed mean and median.

    The same attack targets both rules.

    **Full knowledge** (``knowledge="omniscient"``). On deltas: ``s_j = sign(mean_j)`` of
    the honest updates estimates the direction coordinate ``j`` of the global
    model would move; the malicious values push it the other way, beyond the
    honest extremes ``w_max,j`` / ``w_min,j``:

    * ``s_j > 0``: below ``w_min,j`` — ``w_min,j / r`` if ``w_min,j > 0``,
      ``w_min,j * r`` otherwise (the paper's intervals ``[w_min/b, w_min]`` and
      ``[b w_min, w_min]``);
    * ``s_j < 0``: above ``w_max,j`` — ``w_max,j * r`` if ``w_max,j > 0``,
      ``w_max,j / r`` otherwise;
    * ``s_j = 0``: 0.

    ``r ~ U[1, b]`` is drawn independently per malicious client and
    coordinate, as in Fang et al.'s code (``b = 2`` in the paper).

    **Partial knowledge** (``knowledge="partial"``, the paper's section on
    partial knowledge). The colluders know only their own ``c`` benign
    updates: ``mu_j`` and ``sigma_j`` are their mean and population standard
    deviation (divide by ``c``, as in Fang et al.'s code), ``s_j =
    sign(mu_j)`` estimates the direction, and, assuming the honest values are
    Gaussian, ``mu_j + 3 sigma_j .. mu_j + 4 sigma_j`` very likely lies above
    ``w_max,j`` (and ``mu_j - 4 sigma_j .. mu_j - 3 sigma_j`` below
    ``w_min,j``). Each malicious value is ``mu_j - s_j * r * sigma_j`` with
    ``r ~ U[3, 4]`` drawn per malicious client and coordinate (the paper's
    intervals); ``s_j = 0`` gives ``mu_j``. ``b`` is not used. A standard
    deviation needs ``c >= 2`` colluders (:class:`CollusionInfeasible`
    otherwise).

    Parameters
    ----------
    b : float
        Upper end of the random scaling, ``>= 1`` (full knowledge).
    knowledge : {"omniscient", "partial"}
        What the colluders know (see above).
    """

    kind: ClassVar[str] = "colluding"

    def __init__(self, *, b: float = 2.0, knowledge: Knowledge = "omniscient") -> None:
        self.b = finite("FangTrimmedMean", "b", b)
        if self.b < 1:
            raise ValueError(f"FangTrimmedMean: b must be >= 1, got b={b!r}")
        self.knowledge = check_knowledge("FangTrimmedMean", knowledge)

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        if self.knowledge == "partial":
            return self._partial(honest, num_malicious, generator)
        _, d = check_honest("FangTrimmedMean", honest)
        m = check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        s = torch.sign(honest.mean(dim=0))
        directed = torch.where(s > 0, honest.min(dim=0).values, honest.max(dim=0).values) * (s != 0)
        u = torch.rand((m, d), generator=generator, device=generator.device, dtype=honest.dtype)
        r = 1 + (self.b - 1) * u.to(honest.device)
        inward = (s * directed) > 0  # moving towards 0 means dividing
        return torch.where(inward, directed / r, directed * r)

    def _partial(self, own: Tensor, num_malicious: int, generator: torch.Generator) -> Tensor:
        _, d = check_colluders("FangTrimmedMean", own)
        m = check_m(num_malicious)
        if m == 0:
            return own.new_empty((0, d))
        check_colluders("FangTrimmedMean", own, at_least=2, why="a standard deviation over one update is undefined")
        mu = own.mean(dim=0)
        sigma = own.std(dim=0, correction=0)
        u = torch.rand((m, d), generator=generator, device=generator.device, dtype=own.dtype)
        r = 3 + u.to(own.device)  # U[3, 4]
        return mu - torch.sign(mu) * r * sigma


def _krum_choice(sq_dists: Tensor, f: int) -> int:
    """The row Krum selects given the rows' ``(n, n)`` squared distances: the server rule's own decision."""
    return int(multikrum_decision(sq_dists, f, 1, "krum").selected[0])


class FangKrum:
    """Fang et al. (USENIX Security 2020) attack on Krum.

    **Full knowledge** (``knowledge="omniscient"``). Every malicious client
    sends ``w_Re - lambda * s``: on deltas, the global
    model is the origin, so ``-lambda * s`` with ``s = sign(mean(honest))``
    (the estimated direction of change). ``lambda`` starts at the paper's upper
    bound, with ``c`` malicious and ``h`` honest clients::

        lambda_0 = min_i sum_{l in G(i)} ||x_l - x_i|| / ((h - c - 1) sqrt(d))
                   + max_i ||x_i|| / sqrt(d)

        (i over honest clients, G(i) its h - 2 nearest honest neighbours)

    and is halved until Krum, run over the ``c + h`` updates, selects a
    malicious one, or it falls to ``tau`` or below. Krum is the server rule's
    decision (:func:`strategies.rules.krum.multikrum_decision` with ``m = 1``;
    Blanchard et al.'s score: sum of squared distances to the ``n - f - 2``
    nearest others), on exact distances; the malicious copies are listed first,
    as in the reference code, so a tie in score and in total distance goes to
    them. If no tried ``lambda`` succeeds, the last one tried (just above
    ``tau``) is used, as in Shejwalkar & Houmansadr's reimplementation, or
    ``lambda_0`` itself when it is already at most ``tau``. All malicious
    clients send the same vector (the paper's other crafted models lie in an
    epsilon-ball around the first; we use epsilon = 0).

    A round with ``n = h + c <= 2f + 2`` (Krum undefined) or ``h - c - 1 <= 0``
    (the bound undefined) raises :class:`CollusionInfeasible`.

    **Partial knowledge** (``knowledge="partial"``, the paper's section on
    partial knowledge). The colluders know only their own ``c`` benign updates
    ``x_1..x_c`` ("before-attack local models"): they estimate the direction
    ``s~ = sign(mean(x))`` and, as the paper does, treat their own benign
    updates as if they were the honest ones, looking for the largest
    ``lambda`` for which Krum, run over them and the crafted update
    ``z = -lambda * s~``, selects ``z``. The paper's formulation (all ``c``
    crafted copies among the ``c`` benign ones, Krum's ``f = c``) is void on
    ``2c <= 2f + 2`` rows, where identical copies are each other's nearest
    neighbours and would win for any ``lambda``; poisonlab therefore runs the
    server's Krum rule (:func:`strategies.rules.krum.multikrum_decision`,
    exact distances, ``z`` listed first) over the ``c + 1`` rows with
    ``f = 0`` (``c - 1`` neighbours per row), which needs ``c >= 2``
    (:class:`CollusionInfeasible` otherwise). ``lambda`` starts at the upper
    bound that this selection implies, the analogue of the paper's Theorem 1::

        lambda_0 = (max_i ||x_i|| + sqrt(min_i sum_{l != i} ||x_l - x_i||^2 / (c - 1))) / ||s~||

    (above it ``z``'s score exceeds every benign row's; ``||s~|| = sqrt(d)``
    when no coordinate of the mean is 0), and is halved as in the full
    knowledge case, with the same fallback. ``f`` is not used.

    Parameters
    ----------
    f : int, optional
        The ``f`` the server's Krum assumes (full knowledge); default: the
        round's number of malicious clients.
    tau : float
        ``lambda`` is halved while it stays above ``tau`` (1e-5 in the reference code).
    knowledge : {"omniscient", "partial"}
        What the colluders know (see above).
    """

    kind: ClassVar[str] = "colluding"

    def __init__(self, *, f: int | None = None, tau: float = 1e-5, knowledge: Knowledge = "omniscient") -> None:
        if f is not None and (not is_int(f) or f < 0):
            raise ValueError(f"FangKrum: f must be a non-negative integer or null, got f={f!r}")
        self.f = None if f is None else int(f)
        self.tau = finite("FangKrum", "tau", tau)
        self.knowledge = check_knowledge("FangKrum", knowledge)

    def _checked_f(self, h: int, c: int) -> int:
        f = c if self.f is None else self.f
        n = h + c
        if n <= 2 * f + 2:
            raise CollusionInfeasible(
                f"FangKrum: Krum needs n > 2f + 2, got n={n} (h={h} honest + c={c} malicious), f={f}; "
                "sample more clients per round or lower f / the number of malicious clients"
            )
        if h - c - 1 <= 0:
            raise CollusionInfeasible(
                f"FangKrum: the lambda bound needs h - c - 1 > 0, got h={h}, c={c}; "
                "lower the number of malicious clients"
            )
        return f

    def search_lambda(self, honest: Tensor, num_malicious: int) -> tuple[float, bool]:
        """Return ``(lambda, success)``: the ``lambda`` used, and whether Krum picked a malicious update.

        With partial knowledge ``honest`` holds the colluders' own benign
        updates and success means the colluders' simulated Krum picked the
        crafted update.
        """
        if self.knowledge == "partial":
            return self._search_partial(honest, num_malicious)
        h, d = check_honest("FangKrum", honest)
        c = check_m(num_malicious)
        if c == 0:
            raise ValueError("FangKrum.search_lambda needs num_malicious >= 1")
        f = self._checked_f(h, c)
        hh = pairwise_sq(honest)
        s = torch.sign(honest.mean(dim=0))
        nx = (honest * honest).sum(dim=1).double()
        sx = (honest @ s).double()
        ss = float(s.abs().sum())  # ||s||^2: s is in {-1, 0, 1}
        dist = hh.sqrt()
        dist.fill_diagonal_(math.inf)
        near = torch.topk(dist, h - 2, dim=1, largest=False).values.sum(dim=1)
        lam = float(near.min()) / ((h - c - 1) * math.sqrt(d)) + float(nx.sqrt().max()) / math.sqrt(d)

        n = c + h
        full = torch.zeros(n, n, dtype=torch.float64)
        full[c:, c:] = hh
        tried = lam
        while lam > self.tau:
            tried = lam
            # ||x_i - (-lam s)||^2 = ||x_i||^2 + 2 lam s.x_i + lam^2 ||s||^2
            cross = (nx + 2 * lam * sx + lam * lam * ss).clamp_min(0)
            full[:c, c:] = cross
            full[c:, :c] = cross.unsqueeze(1)
            if _krum_choice(full, f) < c:
                return lam, True
            lam /= 2
        return tried, False

    def _search_partial(self, own: Tensor, num_malicious: int) -> tuple[float, bool]:
        check_colluders("FangKrum", own)
        if check_m(num_malicious) == 0:
            raise ValueError("FangKrum.search_lambda needs num_malicious >= 1")
        c, _ = check_colluders("FangKrum", own, at_least=2, why="Krum over their updates and one crafted update")
        oo = pairwise_sq(own)
        s = torch.sign(own.mean(dim=0))
        nx = (own * own).sum(dim=1).double()
        sx = (own @ s).double()
        ss = float(s.abs().sum())  # ||s||^2: s is in {-1, 0, 1}
        spread = float(oo.sum(dim=1).min()) / (c - 1)
        lam = (float(nx.sqrt().max()) + math.sqrt(spread)) / math.sqrt(ss) if ss > 0 else 0.0

        full = torch.zeros(c + 1, c + 1, dtype=torch.float64)
        full[1:, 1:] = oo
        tried = lam
        while lam > self.tau:
            tried = lam
            cross = (nx + 2 * lam * sx + lam * lam * ss).clamp_min(0)  # ||x_i + lam s||^2
            full[0, 1:] = cross
            full[1:, 0] = cross
            if _krum_choice(full, 0) == 0:
                return lam, True
            lam /= 2
        return tried, False

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        if self.knowledge == "partial":
            _, d = check_colluders("FangKrum", honest)
        else:
            _, d = check_honest("FangKrum", honest)
        m = check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        lam, _ = self.search_lambda(honest, m)
        s = torch.sign(honest.mean(dim=0))
        return repeat(s * (-lam), m)
