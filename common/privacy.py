"""Noise-multiplier schedules over rounds and a client's whole-run privacy ledger.

Schedules follow Wei, Liu et al. ("Data Poisoning and Leakage Analysis in
Federated Learning", arXiv 2409.13004), whose dynamic-noise code decays the
DP-SGD noise multiplier sigma from 15 to about 4.85 over ``T`` rounds:

* ``constant``: ``sigma_t = start``;
* ``linear``: ``sigma_t = start - (start - end) t / T``;
* ``staircase``: ``sigma`` drops by ``(start - end) / floor(T / step_every)`` every
  ``step_every`` rounds (the paper: 1.015 every 10 rounds over 100);
* ``exponential``: ``sigma_t = start (end / start) ** (t / T)`` (the paper's
  ``exp(1.13 (T - t) / T + 1.58)`` is this with start 15, end 4.85);
* ``cosine``: ``sigma_t = start cos(a t / T)`` with ``a = arccos(end / start)``
  (the paper's ``15 cos(1.24 t / T)``).

Round ``r`` (1-based) is ``t = r - 1`` and ``T = horizon - 1``: round 1 gets
``start``, round ``horizon`` gets ``end``, later rounds keep ``end``.

Accounting is Opacus' RDP accountant (Mironov 2017; the sampled Gaussian
mechanism of Mironov, Talwar and Zhang 2019) over the client's recorded history
of ``(sigma, sample rate, steps)``: a changing sigma composes exactly, and a
round the client sat out adds nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SCHEDULES = ("constant", "linear", "staircase", "exponential", "cosine")
#: Wei, Liu et al.'s schedules decay sigma from 15 to 4.85: the end a decaying schedule takes by default
PAPER_END_RATIO = 4.85 / 15


@dataclass(frozen=True)
class NoiseSchedule:
    """The noise multiplier of each round (Wei, Liu et al.'s dynamic DP noise).

    Attributes
    ----------
    kind : str
        One of :data:`SCHEDULES`.
    start : float
        Sigma in round 1 (the constant sigma for ``constant``).
    end : float or None
        Sigma in round ``horizon`` for a decaying schedule (``0 < end <=
        start``); ``None`` keeps the paper's ratio, ``start * 4.85 / 15``.
        Ignored by ``constant``.
    horizon : int
        ``T + 1``: the round in which a decaying schedule reaches ``end``.
    step_every : int
        Rounds between two drops of ``staircase``.
    """

    kind: str = "constant"
    start: float = 1.0
    end: float | None = None
    horizon: int = 1
    step_every: int = 10

    def check(self) -> None:
        """Raise ``ValueError`` naming the field and the fix when the schedule is impossible."""
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule={self.kind!r} is unknown; use one of {list(SCHEDULES)}")
        if not math.isfinite(self.start) or self.start < 0:
            raise ValueError(f"noise_multiplier (sigma) must be >= 0, got {self.start}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 round, got {self.horizon}")
        if self.kind == "constant" or self.end is None:
            return
        if not 0 < self.end <= self.start:
            raise ValueError(
                f"schedule={self.kind} decays: noise_end={self.end} must be in (0, noise_multiplier={self.start}]; "
                "a schedule whose end is above its start would raise the noise"
            )
        if self.kind == "staircase" and self.step_every < 1:
            raise ValueError(f"step_every must be >= 1 round, got {self.step_every}")

    @property
    def final(self) -> float:
        """Sigma from round ``horizon`` on."""
        if self.kind == "constant":
            return float(self.start)
        return float(self.start) * PAPER_END_RATIO if self.end is None else float(self.end)

    def sigma(self, server_round: int) -> float:
        """The noise multiplier of 1-based ``server_round``."""
        if self.kind == "constant" or self.start == 0:
            return float(self.start)
        span = max(self.horizon - 1, 1)
        t = min(max(server_round - 1, 0), span)
        s, e = float(self.start), self.final
        if self.kind == "linear":
            return s - (s - e) * t / span
        if self.kind == "exponential":
            return s * (e / s) ** (t / span)
        if self.kind == "cosine":
            return s * math.cos(math.acos(e / s) * t / span)
        drops = span // self.step_every
        if drops == 0:
            return s
        return max(e, s - (t // self.step_every) * (s - e) / drops)


@dataclass
class PrivacyLedger:
    """One client's DP-SGD history across the rounds it took part in: what its accountant composes.

    Three parallel lists (a Flower ``ConfigRecord`` holds only flat lists of
    one type): ``sigmas[i]``, ``rates[i]`` (Poisson sample rate q) and
    ``steps[i]``. Consecutive entries with the same sigma and q are merged, as
    Opacus' RDP accountant merges them.
    """

    sigmas: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def add(self, sigma: float, sample_rate: float, steps: int) -> None:
        """Record ``steps`` noisy steps at noise multiplier ``sigma`` and sample rate ``sample_rate``."""
        if steps <= 0:
            return
        if self.sigmas and self.sigmas[-1] == sigma and self.rates[-1] == sample_rate:
            self.steps[-1] += int(steps)
            return
        self.sigmas.append(float(sigma))
        self.rates.append(float(sample_rate))
        self.steps.append(int(steps))

    def history(self) -> list[tuple[float, float, int]]:
        """``[(sigma, q, steps), ...]`` as Opacus accountants keep it."""
        return list(zip(self.sigmas, self.rates, self.steps, strict=True))

    def epsilon(self, delta: float) -> float:
        """Cumulative epsilon for ``delta`` (0 before the first step; inf when a step had sigma 0)."""
        if not self.steps:
            return 0.0
        if min(self.sigmas) <= 0:
            return math.inf
        from opacus.accountants import RDPAccountant  # Opacus costs 1.5 s to import: only when a run uses DP

        accountant = RDPAccountant()
        accountant.history = self.history()
        return float(accountant.get_epsilon(delta))

    def epsilon_after(self, sigma: float, sample_rate: float, steps: int, delta: float) -> float:
        """The epsilon this ledger would report after ``steps`` more steps (for a budget check)."""
        trial = PrivacyLedger(list(self.sigmas), list(self.rates), list(self.steps))
        trial.add(sigma, sample_rate, steps)
        return trial.epsilon(delta)

    def as_lists(self) -> dict[str, list]:
        return {"sigmas": list(self.sigmas), "rates": list(self.rates), "steps": list(self.steps)}

    @classmethod
    def from_lists(cls, lists: dict[str, list]) -> PrivacyLedger:
        return cls([float(s) for s in lists["sigmas"]], [float(q) for q in lists["rates"]],
                   [int(n) for n in lists["steps"]])  # fmt: skip
