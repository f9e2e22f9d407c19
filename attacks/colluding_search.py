"""AGR-agnostic colluding attacks that search a scale: Min-Max and Min-Sum.

Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning" (NDSS 2021), the
AGR-agnostic attacks. ``kind = "colluding"``: called as
``attack(known, num_malicious, *, generator) -> (num_malicious, d)`` on the
benign deltas the colluders know (contract and errors:
:mod:`attacks._colluding`):

* ``knowledge="omniscient"`` (default): the round's ``(h, d)`` honest deltas,
  the paper's full-knowledge setting;
* ``knowledge="partial"``: the colluders' own ``(c, d)`` benign deltas, the
  paper's partial-knowledge setting: the benign reference (mean), the
  perturbation and the distance bounds all come from the colluders' benign
  updates, with the same search.

Both need at least 2 known updates: their bound is a distance between two of
them (:class:`CollusionInfeasible` otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from torch import Tensor

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


class _AgrAgnostic:
    """Shared machinery of the AGR-agnostic attacks of Shejwalkar & Houmansadr (NDSS 2021)."""

    kind: ClassVar[str] = "colluding"

    def __init__(
        self,
        *,
        perturbation: Literal["unit_vec", "std", "sign"] = "unit_vec",
        gamma_init: float = 10.0,
        tau: float = 1e-5,
        knowledge: Knowledge = "omniscient",
    ) -> None:
        owner = type(self).__name__
        if perturbation not in ("unit_vec", "std", "sign"):
            raise ValueError(
                f"{owner}: perturbation must be 'unit_vec', 'std' or 'sign', got perturbation={perturbation!r}"
            )
        self.perturbation = perturbation
        self.gamma_init = finite(owner, "gamma_init", gamma_init)
        self.tau = finite(owner, "tau", tau)
        if self.tau >= self.gamma_init:
            raise ValueError(f"{owner}: tau must be smaller than gamma_init, got tau={tau}, gamma_init={gamma_init}")
        self.knowledge = check_knowledge(owner, knowledge)

    def _check_rows(self, known: Tensor) -> tuple[int, int]:
        """``(k, d)`` of the known updates: the round's honest ones, or the colluders' own (partial)."""
        if self.knowledge == "partial":
            return check_colluders(type(self).__name__, known)
        return check_honest(type(self).__name__, known)

    def _check_pairs(self, honest: Tensor, why: str) -> None:
        if self.knowledge == "partial":
            check_colluders(type(self).__name__, honest, at_least=2, why=why)
            return
        h, _ = check_honest(type(self).__name__, honest)
        if h < 2:
            raise CollusionInfeasible(f"{type(self).__name__} needs at least 2 honest updates ({why}), got h={h}")

    def perturbation_vector(self, honest: Tensor) -> Tensor:
        """The paper's perturbation ``p`` (pointing away from the honest direction).

        ``unit_vec``: ``-mean / ||mean||`` (zero when the mean is); ``std``:
        ``-std`` (unbiased, as in the authors' ``torch.std``; undefined, so
        :class:`CollusionInfeasible`, when ``h = 1``); ``sign``: ``-sign(mean)``.
        All from the known updates (the colluders' own with partial knowledge).
        """
        self._check_rows(honest)
        mean = honest.mean(dim=0)
        if self.perturbation == "unit_vec":
            norm = torch.linalg.vector_norm(mean)
            return -mean / norm if float(norm) > 0 else torch.zeros_like(mean)
        if self.perturbation == "sign":
            return -torch.sign(mean)
        self._check_pairs(honest, "the unbiased std of one update is undefined")
        return -honest.std(dim=0, correction=1)

    def _ok(self, a: Tensor, b: Tensor, c: float, pairwise: Tensor) -> Callable[[float], bool]:
        raise NotImplementedError

    def search_gamma(self, honest: Tensor) -> float:
        """Largest ``gamma`` the halving search finds for ``mean + gamma * p``."""
        self._check_pairs(honest, "the bound is a distance between two of them")
        p = self.perturbation_vector(honest)
        diff = honest - honest.mean(dim=0)
        # ||x_i - (mean + g p)||^2 = a_i - 2 g b_i + g^2 c: O(h d) once, then O(h) per candidate
        # gamma (reductions in the input dtype, the comparisons in float64).
        a = (diff * diff).sum(dim=1).double()
        b = (diff @ p).double()
        c = float((p * p).sum())
        return _halving_search(self._ok(a, b, c, pairwise_sq(honest)), self.gamma_init, self.tau)

    def __call__(self, honest: Tensor, num_malicious: int, *, generator: torch.Generator) -> Tensor:
        _, d = self._check_rows(honest)
        m = check_m(num_malicious)
        if m == 0:
            return honest.new_empty((0, d))
        gamma = self.search_gamma(honest)
        return repeat(honest.mean(dim=0) + gamma * self.perturbation_vector(honest), m)


class MinMax(_AgrAgnostic):
    """Min-Max attack (Shejwalkar & Houmansadr, NDSS 2021), AGR-agnostic.

    Every malicious client sends ``mean + gamma * p`` with ``mean`` the mean of
    the known updates ``x_i``, ``p`` the perturbation (see
    :meth:`perturbation_vector`), and ``gamma`` the largest value found by the
    paper's halving search (``gamma_init``, threshold ``tau``, as in the
    authors' code) such that the malicious update's largest distance to any
    known update is at most the largest distance between two of them:
    ``max_i ||mal - x_i|| <= max_{i,j} ||x_i - x_j||``. With
    ``knowledge="omniscient"`` the ``x_i`` are the round's honest updates (full
    knowledge); with ``"partial"`` the colluders' own benign updates (the
    paper's partial knowledge), so the bound holds on the colluders' set.

    Parameters
    ----------
    perturbation : {"unit_vec", "std", "sign"}
    gamma_init : float
        Starting ``gamma`` (10 in the paper's code); the search covers
        ``[0, 2 * gamma_init)``.
    tau : float
        Stopping threshold of the search (1e-5 in the paper's code).
    knowledge : {"omniscient", "partial"}
        What the colluders know (see above).
    """

    def _ok(self, a: Tensor, b: Tensor, c: float, pairwise: Tensor) -> Callable[[float], bool]:
        bound = float(pairwise.max())
        return lambda g: float((a - 2 * g * b + g * g * c).max()) <= bound


class MinSum(_AgrAgnostic):
    """Min-Sum attack (Shejwalkar & Houmansadr, NDSS 2021), AGR-agnostic.

    Like :class:`MinMax` (``mal = mean + gamma * p``, same halving search) but
    the constraint is on sums of squared distances: the malicious update's sum
    of squared distances to the known updates must not exceed the largest such
    sum of a known update:
    ``sum_i ||mal - x_i||^2 <= max_i sum_j ||x_i - x_j||^2``. The known
    updates are the round's honest ones (``knowledge="omniscient"``) or the
    colluders' own benign ones (``"partial"``), as in :class:`MinMax`.

    Parameters
    ----------
    perturbation : {"unit_vec", "std", "sign"}
    gamma_init, tau : float
        As in :class:`MinMax`.
    bound : {"max", "min"}
        ``"max"`` (default): the paper's constraint. ``"min"``: the authors'
        released code, which compares with the *smallest* known sum (a
        stricter, stealthier attack) — use it to reproduce their numbers.
    knowledge : {"omniscient", "partial"}
        What the colluders know (see :class:`MinMax`).
    """

    def __init__(
        self,
        *,
        perturbation: Literal["unit_vec", "std", "sign"] = "unit_vec",
        gamma_init: float = 10.0,
        tau: float = 1e-5,
        bound: Literal["max", "min"] = "max",
        knowledge: Knowledge = "omniscient",
    ) -> None:
        super().__init__(perturbation=perturbation, gamma_init=gamma_init, tau=tau, knowledge=knowledge)
        if bound not in ("max", "min"):
            raise ValueError(f"MinSum: bound must be 'max' (paper) or 'min' (authors' code), got bound={bound!r}")
        self.bound = bound

    def _ok(self, a: Tensor, b: Tensor, c: float, pairwise: Tensor) -> Callable[[float], bool]:
        sums = pairwise.sum(dim=1)
        limit = float(sums.max() if self.bound == "max" else sums.min())
        return lambda g: float((a - 2 * g * b + g * g * c).sum()) <= limit
