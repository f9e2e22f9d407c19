"""Fang et al.'s full-knowledge attacks on Krum and on trimmed mean / median.

Fang, Cao, Jia & Gong, "Local Model Poisoning Attacks to Byzantine-Robust
Federated Learning" (USENIX Security 2020), applied to deltas (local - global)
as in the authors' and Shejwalkar & Houmansadr's code, which attack gradients
rather than model parameters. Omniscient, ``kind = "colluding"``: called as
``attack(honest, num_malicious, *, generator) -> (num_malicious, d)`` on the
round's ``(h, d)`` honest deltas (contract and errors: :mod:`attacks._colluding`).
The attack on Krum asks the server's own Krum (:mod:`strategies.rules.krum`)
which row it would select, so attack and defense score rows identically.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from attacks._checks import is_int
from attacks._colluding import CollusionInfeasible, check_honest, check_m, finite, pairwise_sq, repeat
from strategies.rules.krum import multikrum_decision


class FangTrimmedMean:
    """Fang et al. (USENIX Security 2020) attack on trimmed mean and median, full knowledge.

    The same attack targets both rules. On deltas: ``s_j = sign(mean_j)`` of
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

    Parameters
    ----------
    b : float
        Upper end of the random scaling, ``>= 1``.
    """

    kind: ClassVar[str] = "colluding"

    def __init__(self, *, b: float = 2.0) -> None:
        self.b = finite("FangTrimmedMean", "b", b)
        if self.b < 1:
            raise ValueError(f"FangTrimmedMean: b must be >= 1, got b={b!r}")

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
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


def _krum_choice(sq_dists: Tensor, f: int) -> int:
    """The row Krum selects given the rows' ``(n, n)`` squared distances: the server rule's own decision."""
    return int(multikrum_decision(sq_dists, f, 1, "krum").selected[0])


class FangKrum:
    """Fang et al. (USENIX Security 2020) attack on Krum, full knowledge.

    Every malicious client sends ``w_Re - lambda * s``: on deltas, the global
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

    Parameters
    ----------
    f : int, optional
        The ``f`` the server's Krum assumes; default: the round's number of
        malicious clients.
    tau : float
        ``lambda`` is halved while it stays above ``tau`` (1e-5 in the reference code).
    """

    kind: ClassVar[str] = "colluding"

    def __init__(self, *, f: int | None = None, tau: float = 1e-5) -> None:
        if f is not None and (not is_int(f) or f < 0):
            raise ValueError(f"FangKrum: f must be a non-negative integer or null, got f={f!r}")
        self.f = None if f is None else int(f)
        self.tau = finite("FangKrum", "tau", tau)

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
        """Return ``(lambda, success)``: the ``lambda`` used, and whether Krum picked a malicious update."""
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

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        _, d = check_honest("FangKrum", honest)
        m = check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        lam, _ = self.search_lambda(honest, m)
        s = torch.sign(honest.mean(dim=0))
        return repeat(s * (-lam), m)
