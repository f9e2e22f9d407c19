"""Server-side central differential privacy around any rule, with a whole-run epsilon.

:class:`CentralDP` gives client-level DP of the aggregate (DP-FedAvg, McMahan
et al., ICLR 2018, "Learning differentially private recurrent language
models") to any poisonlab rule: the server clips every client's update, runs
the wrapped rule on the clipped rows, bounds the rule's output, adds Gaussian
noise calibrated to that bound and accounts every round it released with one
Opacus RDP accountant per run. Optional adaptive clipping follows Andrew et al.
(NeurIPS 2021, "Differentially private learning with adaptive clipping").

One round, with ``n = m`` rows and clipping norm ``C_t``:

1. clip every row to L2 norm ``<= C_t`` (scale by ``min(1, C_t / ||u||)``);
2. run the wrapped rule on the clipped rows;
3. bound the sensitivity ``Delta`` of its output to one client (below);
4. add ``N(0, (z_u * Delta)^2 I)`` drawn from ``context.generator``, with
   ``z_u = z`` (fixed clipping) or ``z_delta`` (adaptive clipping, below);
5. adaptive only: ``C_{t+1} = C_t * exp(-eta * (b - gamma))`` with
   ``b = (#{rows with ||u|| <= C_t} + N(0, sigma_b^2)) / m``;
6. compose one Gaussian mechanism of noise multiplier ``z`` (sample rate 1,
   no amplification by sampling) into the run's accountant.

Sensitivity and the neighbouring relation
-----------------------------------------
The guarantee is Flower's and DP-FedAvg's: add or remove one client, with the
number ``m`` of aggregated clients a public constant (McMahan et al.'s
fixed-denominator estimator ``sum_i clip(u_i) / m``; Flower 1.41's accounted
fixed-clipping wrapper enforces it by refusing a round whose replies differ
from ``num_sampled_clients`` and unequal client weights). Under it:

* **unweighted mean** (:class:`strategies.rules.mean.Mean` with
  ``weighted=False``, not behind pre-aggregators): one clipped row moves the
  sum by at most ``C``, so ``Delta = C / m``;
* **weighted mean** (``Mean(weighted=True)``): ``Delta = C * max_i w_i`` with
  the round's normalised weights;
* **every other rule** (Krum, Multi-Krum, median, trimmed mean, Bulyan,
  GeoMed, FLAME, FoolsGold, ..., and anything behind pre-aggregators): the
  output is projected onto the L2 ball of radius ``C`` and ``Delta = 2C``. A
  robust rule is not a sum: changing one client can switch its output from one
  clipped update (or one median) to another, up to ``2C`` apart (Krum
  selecting ``u_a`` instead of ``u_b`` with ``u_a = -u_b``), so charging it the
  mean's ``C / m`` would under-noise it. After the projection every output
  lies in a set of diameter ``2C`` whatever the rows, the rule's internal
  randomness or its state across rounds, so ``2C`` holds for every relation.

**Robust rules therefore pay ``2C / (C / m) = 2m`` times the noise standard
deviation of the plain mean** at the same ``z`` (and the same epsilon). That is
the real price of combining Byzantine robustness with this form of central DP,
and ``info["dp_sensitivity"]`` / ``info["dp_noise_std"]`` show it every round.

If the adapter aggregates fewer rows than it sampled (failed or rejected
replies), this wrapper uses the rows it received as ``m``; a strict reading of
the fixed-denominator convention would refuse such rounds, as Flower does.

Adaptive clipping
-----------------
As in Andrew et al. (and Flower's ``DifferentialPrivacyServerSideAdaptiveClipping``),
``sigma_b`` defaults to ``m / 20`` (``0`` when ``z = 0``). The count of
unclipped rows, centred, has sensitivity ``1/2``, i.e. noise multiplier
``2 sigma_b``; the update then gets ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``
so that the two Gaussian mechanisms together have RDP
``alpha/2 * (z_delta^-2 + (2 sigma_b)^-2) = alpha / (2 z^2)``: one mechanism of
multiplier ``z``, which the accountant composes. Configurations with
``z^-2 - (2 sigma_b)^-2 <= 0`` (``z >= 2 sigma_b``) are refused.

Two differences from Flower 1.41's message-based adaptive wrapper, both
deliberate and both Andrew et al.'s Algorithm: ``b`` is the fraction of rows
*not* clipped (``||u|| <= C``); Flower's ``adaptive_clip_inputs_inplace``
returns ``scaling_factor < 1`` (clipped) and feeds that count to the same
update, so its ``C`` grows when no update reaches it. And the noise of round
``t`` uses the ``C_t`` the rows were clipped to; Flower updates the clipping
norm before adding the noise, so it calibrates to ``C_{t+1}``.

Accounting
----------
One ``opacus.accountants.RDPAccountant`` per wrapper (one per run: the runner
builds the rule once), one step ``(noise_multiplier=z, sample_rate=1.0)`` per
round the wrapper aggregated; a round the adapter skipped adds nothing.
``epsilon`` is cumulative at ``delta`` (``inf`` with ``z = 0``), minimised over
:data:`RDP_ORDERS`, the orders of dp-accounting (the backend of Flower 1.41's
``RdpAccountant``), with Balle et al.'s RDP-to-DP conversion as both use: it
equals Flower's accountant configured with ``SamplingMethod.NO_AMPLIFICATION``
and ``NeighboringRelation.ADD_OR_REMOVE_ONE`` up to float rounding. Opacus'
default orders lack 11 and everything above 63, which would give a slightly
larger (still valid) epsilon when the optimum falls there: about 2.5e-4
relative at order 11, up to several times at orders >= 128 (one round at very
large ``z``).

The wrapper must be the outermost one: ``CentralDP(Composed(rule, pre))``,
never inside :class:`~strategies.rules.preaggregators.Composed`.

``info`` carries the experimenter's diagnostics, some of them exact functions
of the private rows (``dp_clipped_fraction``); they are not part of the
released, private output.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from strategies.rules._common import acc_dtype, finish, float_param, gaussian_noise, row_norms
from strategies.rules.base import Aggregate, RoundContext, Rule, RuleConfigError, check_updates
from strategies.rules.mean import Mean

__all__ = ["RDP_ORDERS", "CentralDP", "adaptive_noise_multiplier", "clip_rows"]

_NAME = "central_dp"

RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10 for x in range(1, 100)) + tuple(float(a) for a in range(11, 64)) + (128.0, 256.0, 512.0, 1024.0)
)
"""RDP orders at which epsilon is optimised: dp-accounting's defaults (hence Flower 1.41's ``RdpAccountant``'s).

Opacus' own defaults lack 11 and everything above 63; the minimum over more
orders is a tighter, equally valid bound (see the module docstring).
"""


def clip_rows(updates: Tensor, clipping_norm: float) -> tuple[Tensor, Tensor]:
    """Scale every row to L2 norm at most ``clipping_norm``.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    clipping_norm : float
        ``C > 0``.

    Returns
    -------
    clipped : Tensor
        ``(n, d)`` rows ``u * min(1, C / ||u||)``, same dtype and device.
    norms : Tensor
        ``(n,)`` norms of the rows before clipping (accumulation dtype).
    """
    norms = row_norms(updates)
    scale = torch.where(norms > clipping_norm, clipping_norm / norms, torch.ones_like(norms))
    clipped = updates.to(norms.dtype) * scale[:, None]
    return finish(clipped, updates), norms


def adaptive_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``: the update's share of noise multiplier ``z``.

    Andrew et al. (NeurIPS 2021), Theorem 1: the update (multiplier
    ``z_delta``) and the centred count of unclipped rows (multiplier
    ``2 sigma_b``) together are one Gaussian mechanism of multiplier ``z``.

    Raises
    ------
    RuleConfigError
        When ``z >= 2 sigma_b`` (``z^-2 - (2 sigma_b)^-2 <= 0``: the count alone
        already costs the whole budget).
    """
    if noise_multiplier == 0.0:
        return 0.0
    rest = noise_multiplier**-2 - (2.0 * count_stddev) ** -2 if count_stddev > 0 else -math.inf
    if rest <= 0:
        raise RuleConfigError(
            f"{_NAME}: adaptive clipping with noise_multiplier={noise_multiplier:g} needs "
            f"2 * clipped_count_stddev > noise_multiplier (z^-2 - (2 sigma_b)^-2 > 0), got "
            f"clipped_count_stddev={count_stddev:g}; raise clipped_count_stddev above {noise_multiplier / 2:g} "
            f"(its default is m/20: sample more clients per round) or lower noise_multiplier"
        )
    return rest**-0.5


class CentralDP:
    """Central (client-level) DP of the aggregate around any rule; see the module docstring.

    Parameters
    ----------
    rule : Rule
        The configured rule to protect (possibly a ``Composed`` with pre-aggregators).
    noise_multiplier : float
        ``z >= 0``: noise standard deviation over sensitivity of the whole
        round's mechanism (``0``: clipping only, epsilon infinite).
    clipping_norm : float
        ``C > 0``; the initial norm when ``adaptive``.
    delta : float
        Target delta in ``(0, 1)`` at which ``epsilon`` is reported.
    adaptive : bool
        Adaptive clipping (Andrew et al., NeurIPS 2021).
    target_quantile : float
        ``gamma`` in ``[0, 1]``: the fraction of rows meant to stay *unclipped*.
    clip_norm_lr : float
        ``eta > 0`` of the geometric update (Andrew et al. recommend 0.2).
    clipped_count_stddev : float, optional
        ``sigma_b >= 0``, the count noise; ``None`` gives ``m / 20`` per round
        with ``m`` rows (``0`` when ``noise_multiplier = 0``), as Flower.

    Attributes
    ----------
    clip_norm : float
        The clipping norm the next round will use.
    rounds : int
        Rounds aggregated (and accounted) so far.

    Notes
    -----
    Each round's ``Aggregate`` keeps the wrapped rule's ``weights``,
    ``selected``, ``flagged`` and ``active``; its ``info`` is the rule's plus
    ``dp_clip_norm`` (``C_t`` used), ``dp_clipped_fraction`` (rows with norm
    above it), ``dp_sensitivity`` (``Delta``), ``dp_noise_std``
    (``z_u * Delta``), ``dp_noise_multiplier`` (``z_u``: ``z``, or ``z_delta``
    with adaptive clipping), ``dp_epsilon`` (cumulative, this round included)
    and, with adaptive clipping, ``dp_next_clip_norm`` (``C_{t+1}``).
    Randomness: the rule draws first (e.g. bucketing), then the update noise,
    then the count noise, all from ``context.generator`` (a private generator
    seeded with 0 when the context has none); nothing is drawn for a zero std.
    """

    def __init__(
        self,
        rule: Rule,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        delta: float,
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
    ) -> None:
        if not callable(rule) or not hasattr(rule, "check_clients"):
            raise RuleConfigError(f"{_NAME}: rule must be a configured rule, got {rule!r}")
        if not isinstance(getattr(rule, "detects", None), bool):
            raise RuleConfigError(f"{_NAME}: rule {rule!r} must say whether it detects (a boolean `detects`)")
        if isinstance(rule, CentralDP):
            raise RuleConfigError(f"{_NAME}: rule is already wrapped in central DP; wrap the bare rule once")
        if not isinstance(adaptive, bool):
            raise RuleConfigError(f"{_NAME}: adaptive must be true or false, got adaptive={adaptive!r}")
        self.rule = rule
        self.noise_multiplier = float_param(_NAME, "noise_multiplier", noise_multiplier, low=0.0)
        self.clip_norm = float_param(_NAME, "clipping_norm", clipping_norm, low=0.0, low_open=True)
        self.delta = float_param(_NAME, "delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
        self.adaptive = adaptive
        self.target_quantile = float_param(_NAME, "target_quantile", target_quantile, low=0.0, high=1.0)
        self.clip_norm_lr = float_param(_NAME, "clip_norm_lr", clip_norm_lr, low=0.0, low_open=True)
        self.clipped_count_stddev = (
            None
            if clipped_count_stddev is None
            else float_param(_NAME, "clipped_count_stddev", clipped_count_stddev, low=0.0)
        )
        if adaptive and self.clipped_count_stddev is not None:
            adaptive_noise_multiplier(self.noise_multiplier, self.clipped_count_stddev)
        self.rounds = 0
        self._accountant: Any = None  # opacus.accountants.RDPAccountant, made at the first round
        self._fallback = torch.Generator().manual_seed(0)

    # ------------------------------------------------------------------ the Rule protocol

    @property
    def detects(self) -> bool:
        """The wrapped rule's (clipping and noise add no detection)."""
        return self.rule.detects

    @property
    def needs_server_update(self) -> bool:
        """The wrapped rule's (FLTrust gets the server's root-set update, never clipped: it is not a client's)."""
        return bool(getattr(self.rule, "needs_server_update", False))

    def check_clients(self, n: int) -> None:
        """The wrapped rule's precondition, and with adaptive clipping ``z < 2 sigma_b`` at ``n`` rows."""
        self.rule.check_clients(n)
        if self.adaptive:
            self._split_noise(n)

    # ------------------------------------------------------------------ privacy

    @property
    def sensitivity_kind(self) -> str:
        """``"mean"``, ``"weighted_mean"`` (``Delta = C/m``, ``C max w``) or ``"projected"`` (``Delta = 2C``)."""
        if type(self.rule) is Mean:
            return "weighted_mean" if self.rule.weighted else "mean"
        return "projected"

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon at ``delta`` over the rounds aggregated so far (``inf`` when ``z = 0``)."""
        if self.rounds == 0:
            return 0.0
        if self.noise_multiplier == 0.0:
            return math.inf
        with warnings.catch_warnings():
            # an optimal order at the end of Opacus' range still gives a valid (looser) bound
            warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
            return float(self._accountant.get_epsilon(self.delta, alphas=list(RDP_ORDERS)))

    def _account(self) -> None:
        self.rounds += 1
        if self.noise_multiplier == 0.0:
            return
        if self._accountant is None:
            from opacus.accountants import RDPAccountant  # costs seconds: only when a run uses DP

            self._accountant = RDPAccountant()
        self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=1.0)

    def _split_noise(self, m: int) -> tuple[float, float]:
        """``(z_u, sigma_b)``: the update's noise multiplier and the count's noise std at ``m`` rows."""
        if not self.adaptive:
            return self.noise_multiplier, 0.0
        sigma_b = self.clipped_count_stddev
        if sigma_b is None:
            sigma_b = m / 20.0 if self.noise_multiplier > 0 else 0.0
        return adaptive_noise_multiplier(self.noise_multiplier, sigma_b), sigma_b

    # ------------------------------------------------------------------ one round

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        m = check_updates(updates)
        z_u, sigma_b = self._split_noise(m)
        generator = context.generator if context is not None and context.generator is not None else self._fallback
        c = self.clip_norm
        clipped, norms = clip_rows(updates, c)
        inner = self.rule(clipped, context)

        acc = acc_dtype(updates.dtype)
        vector = inner.vector.to(device=updates.device, dtype=acc)
        kind = self.sensitivity_kind
        if kind == "mean":
            sensitivity = c / m
        elif kind == "weighted_mean":
            sensitivity = c * float(inner.weights.max())
        else:
            norm = float(torch.linalg.vector_norm(vector))
            if norm > c:
                vector = vector * (c / norm)
            sensitivity = 2.0 * c
        std = z_u * sensitivity
        if std > 0:
            vector = vector + gaussian_noise(vector.shape[0], std, generator, updates)

        info = dict(inner.info)
        info.update(
            dp_clip_norm=c,
            dp_clipped_fraction=float((norms > c).sum()) / m,
            dp_sensitivity=sensitivity,
            dp_noise_std=std,
            dp_noise_multiplier=z_u,
        )
        if self.adaptive:
            unclipped = float((norms <= c).sum())
            if sigma_b > 0:
                draw = torch.randn(1, generator=generator, device=generator.device, dtype=torch.float64)
                unclipped += sigma_b * float(draw)
            self.clip_norm = c * math.exp(-self.clip_norm_lr * (unclipped / m - self.target_quantile))
            info["dp_next_clip_norm"] = self.clip_norm
        self._account()
        info["dp_epsilon"] = self.epsilon
        return Aggregate(
            vector=finish(vector, updates),
            weights=inner.weights,
            selected=inner.selected,
            flagged=inner.flagged,
            info=info,
            active=inner.active,
        )
