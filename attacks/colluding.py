"""Colluding, **omniscient** model-poisoning attacks.

These attacks craft the malicious updates of a round from the round's *honest*
updates, so they assume an omniscient adversary that sees every benign delta
before the server aggregates (the "full knowledge" setting of the papers). In
simulation a server-side wrapper calls them; a real deployment has no such
oracle.

Each attack is a small callable configured once with keyword-only
hyper-parameters and called as
``attack(honest, num_malicious, *, generator) -> (num_malicious, d)`` where
``honest`` is the ``(h, d)`` matrix of honest deltas (local - global). Inputs
are never modified; the result has the dtype and device of ``honest``.
Randomness comes only from ``generator``.

Implemented: ALIE (Baruch et al., NeurIPS 2019), IPM (Xie et al., UAI 2020),
Min-Max and Min-Sum (Shejwalkar & Houmansadr, NDSS 2021), and the
full-knowledge Krum and trimmed-mean/median attacks of Fang et al. (USENIX
Security 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Literal

import torch
from torch import Tensor

from attacks.threat import _is_int

# ----------------------------------------------------------------- helpers


def _check_honest(honest: Tensor) -> tuple[int, int]:
    if not isinstance(honest, Tensor) or honest.ndim != 2 or not torch.is_floating_point(honest):
        raise ValueError(
            f"honest updates must be a floating-point (h, d) matrix, got {getattr(honest, 'shape', type(honest))!r}"
        )
    if honest.shape[0] == 0:
        raise ValueError("colluding attacks need at least one honest update (h=0 this round)")
    return honest.shape[0], honest.shape[1]


def _check_m(num_malicious: int) -> int:
    if not _is_int(num_malicious) or num_malicious < 0:
        raise ValueError(f"num_malicious must be a non-negative integer, got num_malicious={num_malicious!r}")
    return int(num_malicious)


def _finite(owner: str, name: str, value: float, *, positive: bool = True) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        kind = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{owner}: {name} must be {kind}, got {name}={value!r}")
    return float(value)


def _repeat(vector: Tensor, m: int) -> Tensor:
    return vector.unsqueeze(0).expand(m, -1).clone()


def _pairwise_sq(x: Tensor) -> Tensor:
    """``(h, h)`` float64 squared Euclidean distances between rows (exact mode, no Gram trick)."""
    d = torch.cdist(x.unsqueeze(0), x.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist")[0]
    return d.double() ** 2


def _halving_search(ok: Callable[[float], bool], gamma_init: float, tau: float) -> float:
    """Shejwalkar & Houmansadr's search for the largest ``gamma`` with ``ok(gamma)``.

    Start at ``gamma_init`` with step ``gamma_init``; after each test the step
    halves and ``gamma`` moves up by half the step on success, down on failure;
    stop when the last success and the current candidate are within ``tau``.
    Returns the last successful ``gamma`` (0 when none succeeded). The result
    lies in ``[0, 2 * gamma_init)``.
    """
    gamma, step, success = gamma_init, gamma_init, 0.0
    for _ in range(10_000):  # converges in about log2(gamma_init / tau) steps
        if abs(success - gamma) <= tau:
            break
        if ok(gamma):
            success = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return success


def _krum_index(sq: Tensor, f: int) -> int:
    """Row Krum selects from an ``(n, n)`` squared-distance matrix.

    Score of row ``i``: sum of its squared distances to its ``n - f - 2``
    nearest other rows (Blanchard et al. 2017). Ties go to the lowest index.
    """
    n = sq.shape[0]
    masked = sq.clone()
    masked.fill_diagonal_(math.inf)
    scores = torch.topk(masked, n - f - 2, dim=1, largest=False).values.sum(dim=1)
    return int(torch.argmin(scores))


# ---------------------------------------------------------------------- ALIE


class ALIE:
    """ALIE, "A Little Is Enough" (Baruch et al., NeurIPS 2019), omniscient variant.

    Every malicious client sends ``mean - z * std`` of the honest updates,
    coordinate-wise. ``std`` is the population standard deviation (divide by
    ``h``), as in the authors' code (``np.var(grads, axis=0) ** 0.5``). The
    paper estimates mean and std from the attackers' own benign updates; here
    (omniscient) they are those of the round's honest updates.

    Unless ``z`` is fixed, it is the paper's ``z_max`` for the round's
    ``n = h + m`` clients: ``s = floor(n / 2 + 1) - m`` supporters are needed,
    and ``z = Phi^{-1}((n - s) / n)`` (standard normal quantile).

    Parameters
    ----------
    z : float, optional
        Fixed number of standard deviations (overrides the formula).
    """

    def __init__(self, *, z: float | None = None) -> None:
        self.z = None if z is None else _finite("ALIE", "z", z, positive=False)

    @staticmethod
    def z_max(num_clients: int, num_malicious: int) -> float:
        """The paper's ``z_max`` for ``n = num_clients`` of which ``m`` are malicious.

        Raises ``ValueError`` when ``s = floor(n/2 + 1) - m <= 0`` (the
        malicious clients already form a majority, the quantile is undefined).
        """
        n, m = num_clients, num_malicious
        if not (_is_int(n) and _is_int(m) and 1 <= m <= n):
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
        h, d = _check_honest(honest)
        m = _check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        z = self.z if self.z is not None else self.z_max(h + m, m)
        mean = honest.mean(dim=0)
        std = honest.std(dim=0, correction=0)
        return _repeat(mean - z * std, m)


# ----------------------------------------------------------------------- IPM


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

    def __init__(self, *, epsilon: float = 0.1) -> None:
        self.epsilon = _finite("IPM", "epsilon", epsilon)

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        _, d = _check_honest(honest)
        m = _check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        return _repeat(honest.mean(dim=0) * (-self.epsilon), m)


# ------------------------------------------------------- Min-Max / Min-Sum


class _AgrAgnostic:
    """Shared machinery of the AGR-agnostic attacks of Shejwalkar & Houmansadr (NDSS 2021)."""

    def __init__(
        self,
        *,
        perturbation: Literal["unit_vec", "std", "sign"] = "unit_vec",
        gamma_init: float = 10.0,
        tau: float = 1e-5,
    ) -> None:
        owner = type(self).__name__
        if perturbation not in ("unit_vec", "std", "sign"):
            raise ValueError(
                f"{owner}: perturbation must be 'unit_vec', 'std' or 'sign', got perturbation={perturbation!r}"
            )
        self.perturbation = perturbation
        self.gamma_init = _finite(owner, "gamma_init", gamma_init)
        self.tau = _finite(owner, "tau", tau)
        if self.tau >= self.gamma_init:
            raise ValueError(f"{owner}: tau must be smaller than gamma_init, got tau={tau}, gamma_init={gamma_init}")

    def perturbation_vector(self, honest: Tensor) -> Tensor:
        """The paper's perturbation ``p`` (pointing away from the honest direction).

        ``unit_vec``: ``-mean / ||mean||``; ``std``: ``-std`` (unbiased, as in the
        authors' ``torch.std``; zero when ``h = 1``); ``sign``: ``-sign(mean)``.
        """
        _check_honest(honest)
        mean = honest.mean(dim=0)
        if self.perturbation == "unit_vec":
            norm = torch.linalg.vector_norm(mean)
            return -mean / norm if float(norm) > 0 else torch.zeros_like(mean)
        if self.perturbation == "sign":
            return -torch.sign(mean)
        if honest.shape[0] == 1:
            return torch.zeros_like(mean)
        return -honest.std(dim=0, correction=1)

    def _ok(self, a: Tensor, b: Tensor, c: float, pairwise: Tensor) -> Callable[[float], bool]:
        raise NotImplementedError

    def search_gamma(self, honest: Tensor) -> float:
        """Largest ``gamma`` the halving search finds for ``mean + gamma * p``."""
        _check_honest(honest)
        p = self.perturbation_vector(honest)
        diff = honest - honest.mean(dim=0)
        # ||x_i - (mean + g p)||^2 = a_i - 2 g b_i + g^2 c: O(h d) once, then O(h) per candidate
        # gamma (reductions in the input dtype, the comparisons in float64).
        a = (diff * diff).sum(dim=1).double()
        b = (diff @ p).double()
        c = float((p * p).sum())
        return _halving_search(self._ok(a, b, c, _pairwise_sq(honest)), self.gamma_init, self.tau)

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        _, d = _check_honest(honest)
        m = _check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        gamma = self.search_gamma(honest)
        return _repeat(honest.mean(dim=0) + gamma * self.perturbation_vector(honest), m)


class MinMax(_AgrAgnostic):
    """Min-Max attack (Shejwalkar & Houmansadr, NDSS 2021), AGR-agnostic, omniscient.

    Every malicious client sends ``mean + gamma * p`` with ``mean`` the honest
    mean, ``p`` the perturbation (see :meth:`perturbation_vector`), and
    ``gamma`` the largest value found by the paper's halving search
    (``gamma_init``, threshold ``tau``, as in the authors' code) such that the
    malicious update's largest distance to any honest update is at most the
    largest distance between two honest updates:
    ``max_i ||mal - x_i|| <= max_{i,j} ||x_i - x_j||``.

    Parameters
    ----------
    perturbation : {"unit_vec", "std", "sign"}
    gamma_init : float
        Starting ``gamma`` (10 in the paper's code); the search covers
        ``[0, 2 * gamma_init)``.
    tau : float
        Stopping threshold of the search (1e-5 in the paper's code).
    """

    def _ok(self, a: Tensor, b: Tensor, c: float, pairwise: Tensor) -> Callable[[float], bool]:
        bound = float(pairwise.max())
        return lambda g: float((a - 2 * g * b + g * g * c).max()) <= bound


class MinSum(_AgrAgnostic):
    """Min-Sum attack (Shejwalkar & Houmansadr, NDSS 2021), AGR-agnostic, omniscient.

    Like :class:`MinMax` (``mal = mean + gamma * p``, same halving search) but
    the constraint is on sums of squared distances: the malicious update's sum
    of squared distances to the honest updates must not exceed the largest
    such sum of an honest update:
    ``sum_i ||mal - x_i||^2 <= max_i sum_j ||x_i - x_j||^2``.

    Parameters
    ----------
    perturbation : {"unit_vec", "std", "sign"}
    gamma_init, tau : float
        As in :class:`MinMax`.
    bound : {"max", "min"}
        ``"max"`` (default): the paper's constraint. ``"min"``: the authors'
        released code, which compares with the *smallest* honest sum (a
        stricter, stealthier attack) — use it to reproduce their numbers.
    """

    def __init__(
        self,
        *,
        perturbation: Literal["unit_vec", "std", "sign"] = "unit_vec",
        gamma_init: float = 10.0,
        tau: float = 1e-5,
        bound: Literal["max", "min"] = "max",
    ) -> None:
        super().__init__(perturbation=perturbation, gamma_init=gamma_init, tau=tau)
        if bound not in ("max", "min"):
            raise ValueError(f"MinSum: bound must be 'max' (paper) or 'min' (authors' code), got bound={bound!r}")
        self.bound = bound

    def _ok(self, a: Tensor, b: Tensor, c: float, pairwise: Tensor) -> Callable[[float], bool]:
        sums = pairwise.sum(dim=1)
        limit = float(sums.max() if self.bound == "max" else sums.min())
        return lambda g: float((a - 2 * g * b + g * g * c).sum()) <= limit


# ---------------------------------------------------------------------- Fang


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
    coordinate, as in Fang et al.'s code (``b = 2`` in the paper). Applied to
    deltas (local - global), as in the authors' and Shejwalkar & Houmansadr's
    code, which attack gradients rather than model parameters.

    Parameters
    ----------
    b : float
        Upper end of the random scaling, ``>= 1``.
    """

    def __init__(self, *, b: float = 2.0) -> None:
        self.b = _finite("FangTrimmedMean", "b", b)
        if self.b < 1:
            raise ValueError(f"FangTrimmedMean: b must be >= 1, got b={b!r}")

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        _, d = _check_honest(honest)
        m = _check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        s = torch.sign(honest.mean(dim=0))
        directed = torch.where(s > 0, honest.min(dim=0).values, honest.max(dim=0).values) * (s != 0)
        u = torch.rand((m, d), generator=generator, device=generator.device, dtype=honest.dtype)
        r = 1 + (self.b - 1) * u.to(honest.device)
        inward = (s * directed) > 0  # moving towards 0 means dividing
        return torch.where(inward, directed / r, directed * r)


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
    malicious one, or it falls to ``tau`` or below. Krum here is a private
    helper: score = sum of squared distances to the ``n - f - 2`` nearest
    others, lowest score wins, ties to the malicious copies (listed first, as
    in the reference code). If no tried ``lambda`` succeeds, the last one tried
    (just above ``tau``) is used, as in Shejwalkar & Houmansadr's
    reimplementation; all malicious clients send the same vector (the paper's
    other crafted models lie in an epsilon-ball around the first; we use
    epsilon = 0).

    Parameters
    ----------
    f : int, optional
        The ``f`` the server's Krum assumes; default: the round's number of
        malicious clients.
    tau : float
        ``lambda`` is halved while it stays above ``tau`` (1e-5 in the reference code).
    """

    def __init__(self, *, f: int | None = None, tau: float = 1e-5) -> None:
        if f is not None and (not _is_int(f) or f < 0):
            raise ValueError(f"FangKrum: f must be a non-negative integer or null, got f={f!r}")
        self.f = None if f is None else int(f)
        self.tau = _finite("FangKrum", "tau", tau)

    def _checked_f(self, h: int, c: int) -> int:
        f = c if self.f is None else self.f
        n = h + c
        if n <= 2 * f + 2:
            raise ValueError(
                f"FangKrum: Krum needs n > 2f + 2, got n={n} (h={h} honest + c={c} malicious), f={f}; "
                "sample more clients per round or lower f / the number of malicious clients"
            )
        if h - c - 1 <= 0:
            raise ValueError(
                f"FangKrum: the lambda bound needs h - c - 1 > 0, got h={h}, c={c}; "
                "lower the number of malicious clients"
            )
        return f

    def search_lambda(self, honest: Tensor, num_malicious: int) -> tuple[float, bool]:
        """Return ``(lambda, success)``: the ``lambda`` used, and whether Krum picked a malicious update."""
        h, d = _check_honest(honest)
        c = _check_m(num_malicious)
        if c == 0:
            raise ValueError("FangKrum.search_lambda needs num_malicious >= 1")
        f = self._checked_f(h, c)
        hh = _pairwise_sq(honest)
        s = torch.sign(honest.mean(dim=0))
        nx = (honest * honest).sum(dim=1).double()
        sx = (honest @ s).double()
        ss = float(s.abs().sum())  # ||s||^2: s is in {-1, 0, 1}
        dist = hh.sqrt().clone()
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
            if _krum_index(full, f) < c:
                return lam, True
            lam /= 2
        return tried, False

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        _, d = _check_honest(honest)
        m = _check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        lam, _ = self.search_lambda(honest, m)
        s = torch.sign(honest.mean(dim=0))
        return _repeat(s * (-lam), m)
