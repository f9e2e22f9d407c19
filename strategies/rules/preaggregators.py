"""Pre-aggregators that mix updates before a robust rule, and the rule that composes them.

* **Bucketing** (Karimireddy, He and Jaggi, ICLR 2022, "Byzantine-robust learning
  on heterogeneous datasets via bucketing"): shuffle the ``n`` rows with a
  random permutation (from ``context.generator``), cut the shuffled order into
  buckets of ``s`` consecutive rows (the last bucket holds the remainder when
  ``s`` does not divide ``n``), and replace each bucket by its mean:
  ``ceil(n / s)`` output rows.
* **Nearest-neighbour mixing**, NNM (Allouah et al., AISTATS 2023, "Fixing by
  mixing: a recipe for optimal Byzantine ML under heterogeneity"): replace
  each row by the mean of its ``n - f`` nearest rows in Euclidean distance,
  itself included: ``n`` output rows.

Each pre-aggregator returns ``(mixed, membership)``: ``mixed`` is
``(n', d)`` and ``membership`` is ``(n', n)`` with
``mixed = membership @ updates``; every membership row sums to 1.

:class:`Composed` runs pre-aggregators, then a rule, and maps the rule's
decision back to the original rows: ``weights = membership.T @ rule.weights``
(with the memberships of all stages multiplied), ``selected`` = rows with
positive weight, ``flagged`` = rows *all* of whose output rows the rule
flagged (only a detector flags anything), ``active`` and ``detects`` = the
rule's. The rule sees a context without ``client_ids`` and ``weights`` (mixed
rows are no longer clients), so stateful per-client rules fall back to their
per-round behaviour and ``weighted`` rules refuse to run.

Degenerate mixing is refused by ``output_size`` (hence by
``Composed.check_clients``), as a rule refuses the ``n`` at which it is the
plain mean: NNM with ``f = 0`` replaces every row by the mean of all of them,
and bucketing with ``s >= n`` puts every row into one bucket, so the rule after
either would only ever see the plain mean. The functions themselves mix any
rows they are given.

When the rule decides from distances alone (Krum, Multi-Krum) and every
pre-aggregator can build its membership from a Gram matrix (both here can),
:class:`Composed` never forms the mixed rows: it mixes the ``(n, n)`` centred
Gram matrix (``M G M^T``) and takes one weighted sum of the original rows at the
end. Same decision and aggregate, without the ``(n', d)`` mixed matrix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import torch
from torch import Tensor

from strategies.rules._common import (
    acc_dtype,
    centered_gram,
    finish,
    gram_distances_accurate,
    int_param,
    pairwise_sq_dists,
    require_generator,
    sq_dists_from_gram,
    weighted_sum,
)
from strategies.rules.base import Aggregate, RoundContext, Rule, RuleConfigError, check_updates


def _mix(updates: Tensor, membership: Tensor) -> Tensor:
    acc = acc_dtype(updates.dtype)
    if updates.dtype == acc:
        return membership.to(acc) @ updates
    return (membership.to(acc) @ updates.to(acc)).to(updates.dtype)


def bucketing(updates: Tensor, *, s: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Average random buckets of ``s`` rows; returns ``(mixed (ceil(n/s), d), membership)``.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    s : int
        Bucket size (>= 1).
    generator : torch.Generator
        Source of the random permutation.
    """
    s = int_param("bucketing", "s", s, minimum=1)
    n = check_updates(updates)
    membership = bucketing_membership(n, s, generator, updates.device, acc_dtype(updates.dtype))
    return _mix(updates, membership), membership


def bucketing_membership(
    n: int, s: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The ``(ceil(n / s), n)`` membership of :func:`bucketing` (one permutation drawn from ``generator``)."""
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    buckets = math.ceil(n / s)
    membership = torch.zeros(buckets, n, dtype=dtype, device=device)
    bucket_of = torch.arange(n, device=device) // s
    sizes = torch.bincount(bucket_of, minlength=buckets).to(dtype)
    membership[bucket_of, perm] = 1.0 / sizes[bucket_of]
    return membership


def nearest_neighbor_mixing(updates: Tensor, *, f: int) -> tuple[Tensor, Tensor]:
    """Replace each row by the mean of its ``n - f`` nearest rows (itself included).

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    f : int
        Assumed number of Byzantine rows, ``0 <= f < n``.
    """
    f = int_param("nnm", "f", f, minimum=0)
    n = check_updates(updates)
    if f >= n:
        raise RuleConfigError(f"nnm needs f < n, got f={f} with n={n}")
    membership = nnm_membership(pairwise_sq_dists(updates), f)
    return _mix(updates, membership), membership


def nnm_membership(sq_dists: Tensor, f: int) -> Tensor:
    """The ``(n, n)`` membership of :func:`nearest_neighbor_mixing` from the rows' squared distances."""
    n = sq_dists.shape[0]
    dist = sq_dists.clone()
    dist.fill_diagonal_(-1.0)  # a row is always its own nearest neighbour
    near = torch.topk(dist, n - f, dim=1, largest=False).indices
    membership = torch.zeros(n, n, dtype=dist.dtype, device=dist.device)
    membership.scatter_(1, near, 1.0 / (n - f))
    return membership


class PreAggregator(Protocol):
    """A configured pre-aggregator: ``(updates, context) -> (mixed, membership)``."""

    def output_size(self, n: int) -> int:
        """Rows out for ``n`` rows in (raises :class:`RuleConfigError` if ``n`` is too small)."""
        ...

    def __call__(self, updates: Tensor, context: RoundContext | None) -> tuple[Tensor, Tensor]:
        """Mix the rows."""
        ...


class Bucketing:
    """Bucketing as a configured pre-aggregator (see :func:`bucketing`).

    Parameters
    ----------
    s : int
        Bucket size (>= 1); the paper's analysis uses ``s <= n / (2f)``-sized buckets, often 2.
    """

    def __init__(self, *, s: int = 2) -> None:
        self.s = int_param("bucketing", "s", s, minimum=1)

    def output_size(self, n: int) -> int:
        """``ceil(n / s)`` buckets; refuses ``s >= n > 1`` (one bucket: the rule would see only the plain mean)."""
        if n < 1:
            raise RuleConfigError(f"bucketing needs at least 1 reply, got n={n}")
        if n > 1 and self.s >= n:
            raise RuleConfigError(
                f"bucketing with s={self.s} >= n={n} puts every reply into one bucket: the rule after it "
                f"sees only their plain mean; lower s below n (the paper uses s=2) or drop the pre-aggregator"
            )
        return math.ceil(n / self.s)

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> tuple[Tensor, Tensor]:
        generator = require_generator("bucketing", context.generator if context is not None else None)
        return bucketing(updates, s=self.s, generator=generator)

    def membership_from_gram(self, g: Tensor, context: RoundContext | None) -> Tensor:
        """The membership for rows whose centred Gram matrix is ``g`` (draws the same permutation)."""
        generator = require_generator("bucketing", context.generator if context is not None else None)
        return bucketing_membership(g.shape[0], self.s, generator, g.device, g.dtype)


class NearestNeighborMixing:
    """Nearest-neighbour mixing as a configured pre-aggregator (see :func:`nearest_neighbor_mixing`).

    Parameters
    ----------
    f : int
        Assumed number of Byzantine clients per round.
    """

    def __init__(self, *, f: int) -> None:
        self.f = int_param("nnm", "f", f, minimum=0)

    def output_size(self, n: int) -> int:
        """Same number of rows; needs ``n > f``, and ``f >= 1`` when ``n > 1`` (``f = 0`` mixes all into the mean)."""
        if n <= self.f:
            raise RuleConfigError(f"nnm needs n > f replies, got n={n} with f={self.f}")
        if n > 1 and self.f == 0:
            raise RuleConfigError(
                f"nnm with f=0 replaces each of the n={n} replies by the mean of all n: the rule after it "
                f"sees only their plain mean; set f >= 1 (the number of Byzantine clients assumed)"
            )
        return n

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> tuple[Tensor, Tensor]:
        return nearest_neighbor_mixing(updates, f=self.f)

    def membership_from_gram(self, g: Tensor, context: RoundContext | None) -> Tensor:
        """The membership for rows whose centred Gram matrix is ``g``."""
        if g.shape[0] <= self.f:
            raise RuleConfigError(f"nnm needs f < n, got f={self.f} with n={g.shape[0]}")
        return nnm_membership(sq_dists_from_gram(g), self.f)


class Composed:
    """Pre-aggregators followed by a rule, with the decision mapped back to the original rows.

    Parameters
    ----------
    rule : Rule
        The configured rule applied to the mixed rows.
    preaggregators : list
        Configured pre-aggregators applied in order.

    Notes
    -----
    ``detects`` and each round's ``active`` are the inner rule's: mixing adds
    no detection of its own, and a rule that did not run as itself still did
    not after mixing.
    """

    def __init__(self, rule: Rule, preaggregators: list[PreAggregator] | tuple[PreAggregator, ...] = ()) -> None:
        if not callable(rule) or not hasattr(rule, "check_clients"):
            raise RuleConfigError(f"composed: rule must be a configured rule, got {rule!r}")
        if not isinstance(getattr(rule, "detects", None), bool):
            raise RuleConfigError(f"composed: rule {rule!r} must say whether it detects (a boolean `detects`)")
        for p in preaggregators:
            if not callable(p) or not hasattr(p, "output_size"):
                raise RuleConfigError(f"composed: not a pre-aggregator: {p!r}")
        self.rule = rule
        self.preaggregators = list(preaggregators)
        self.needs_server_update = bool(getattr(rule, "needs_server_update", False))

    @property
    def detects(self) -> bool:
        """Whether the inner rule is a detector (then ``flagged`` maps its flags to the original rows)."""
        return self.rule.detects

    def check_clients(self, n: int) -> None:
        """Check every stage with the number of rows it will receive."""
        for p in self.preaggregators:
            n = p.output_size(n)
        self.rule.check_clients(n)

    def _in_gram_space(self) -> bool:
        return hasattr(self.rule, "decide_from_sq_dists") and all(
            hasattr(p, "membership_from_gram") for p in self.preaggregators
        )

    def _decide_in_gram_space(self, updates: Tensor, ctx: RoundContext) -> tuple[Tensor, Aggregate] | None:
        """Mix and decide on the ``(n, n)`` centred Gram matrix alone, never forming the mixed rows.

        The mixed rows ``M x`` have the Gram matrix ``M G M^T``, and distances
        between rows do not depend on the centre, so a rule that decides from
        distances (Krum, Multi-Krum) needs only ``G``; the aggregate is then
        one weighted sum of the original rows. ``None`` when the distances of
        the original rows would not be accurate (the caller mixes explicitly).
        """
        g = centered_gram(updates)
        if not gram_distances_accurate(g, sq_dists_from_gram(g)):
            return None
        membership = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
        for p in self.preaggregators:
            step = p.membership_from_gram(g, ctx).to(g.dtype)
            membership = step @ membership
            g = step @ g @ step.T
            g = (g + g.T) / 2
        return membership, self.rule.decide_from_sq_dists(sq_dists_from_gram(g))

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        n = check_updates(updates)
        ctx = context if context is not None else RoundContext()
        decided = self._decide_in_gram_space(updates, ctx) if self._in_gram_space() else None
        if decided is not None:
            membership, inner = decided
            membership = membership.to(acc_dtype(updates.dtype))
        else:
            mixed = updates
            membership = torch.eye(n, dtype=acc_dtype(updates.dtype), device=updates.device)
            for p in self.preaggregators:
                mixed, step = p(mixed, ctx)
                membership = step.to(membership.dtype) @ membership
            inner = self.rule(mixed, dataclasses.replace(ctx, client_ids=None, weights=None))
        weights = membership.T @ inner.weights.to(device=membership.device, dtype=membership.dtype)
        # in Gram space the rule never saw rows: its aggregate is the weighted sum of the originals
        vector = inner.vector if decided is None else finish(weighted_sum(updates, weights), updates)
        out_flagged = torch.zeros(membership.shape[0], dtype=torch.bool, device=updates.device)
        out_flagged[inner.flagged.to(updates.device)] = True
        touches = membership > 0  # (n', n): output row b uses input row i
        flagged = (touches & out_flagged[:, None]).sum(dim=0) == touches.sum(dim=0)
        rows = torch.arange(n, device=updates.device)
        info = dict(inner.info)
        info["mixed_rows"] = float(membership.shape[0])
        return Aggregate(
            vector=vector,
            weights=weights.to(updates.dtype),
            selected=rows[weights > 0],
            flagged=rows[flagged & (touches.sum(dim=0) > 0)],
            info=info,
            active=inner.active,
        )
