"""The contract every aggregation rule follows.

A rule sees an ``(n, d)`` tensor of update deltas (one row per replying client,
rows in an arbitrary order) and returns an :class:`Aggregate`: the aggregated
delta and its decision. Rules never see who is malicious; the harness scores
the decision against the truth afterwards. The decision has three parts, each
with one meaning:

* ``selected``: the rows that contributed to the aggregate. A selection rule
  (Krum, Multi-Krum, Bulyan) keeps some rows and leaves the others out; a row
  that is left out is simply not in ``selected`` (the adapter derives
  "excluded" as "not selected"). Leaving a row out is not an accusation.
* ``flagged``: the rows **declared malicious by a detector**. Only rules whose
  class says ``detects = True`` fill it (FLAME: rows outside the majority
  cluster; FoolsGold: weight-0 rows; FLTrust: trust-0 rows; the PCA defense:
  the separated minority). Every other rule returns an empty ``flagged``, so a
  detection rate is only ever computed for a detector.
* ``active``: whether the rule ran as itself this round. ``False`` means it ran
  as something else (the PCA defense before its start round, or before it has
  stacked enough rows, returns the plain mean); such a round must not be
  counted as the defense's result.

Rules are small callables configured once with keyword-only hyper-parameters
(validated in ``__init__`` with messages that show the values) and called once
per round; see :class:`Rule`. ``check_clients(n)`` raises
:class:`RuleConfigError` when a round of ``n`` replies cannot satisfy the
rule's precondition (e.g. Krum needs ``n > 2f + 2``) **or** would reduce the
defense to exactly the plain mean (e.g. a trimmed mean that trims
``int(beta * n) = 0`` values); the message shows the values and the fix. The
runner calls it at configuration time with the run's ``clients_per_round`` and
the adapter calls it again each round with the number of valid replies. The
plain functions (``trimmed_mean(updates, beta=...)``, ...) compute the maths
for every ``n`` at which it is defined, degenerate or not; the refusal of a
degenerate ``n`` is the configured rule's.

:class:`~common.layout.Layout` lives on the ground floor (``common.layout``)
and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from common.layout import Layout

__all__ = [
    "Aggregate",
    "Layout",
    "RoundContext",
    "Rule",
    "RuleConfigError",
    "as_index",
    "check_updates",
]


class RuleConfigError(ValueError):
    """A rule's hyper-parameters, or the number of replies, violate its preconditions."""


@dataclass
class RoundContext:
    """What the adapter knows about a round besides the updates.

    Attributes
    ----------
    server_round : int
        1-based round number.
    weights : Tensor or None
        ``(n,)`` non-negative example weights the server derived from the
        partition sizes it knows (never from what clients report), summing to
        1, or ``None`` for an unweighted rule.
    layout : Layout or None
        Layout of the flat vector (for rules that look at one layer).
    global_vector : Tensor or None
        ``(d,)`` current global model, flattened in the same layout.
    server_update : Tensor or None
        ``(d,)`` update the server computed on its clean root data set
        (FLTrust); ``None`` when the rule does not ask for one.
    generator : torch.Generator or None
        Source of randomness (noise-adding rules), derived from the run seed.
    client_ids : list of int or None
        Stable identity of the client behind each row (same order as the
        rows), for stateful rules that keep per-client history across rounds
        (FoolsGold); ``None`` when the adapter does not provide it.
    """

    server_round: int = 1
    weights: Tensor | None = None
    layout: Layout | None = None
    global_vector: Tensor | None = None
    server_update: Tensor | None = None
    generator: torch.Generator | None = None
    client_ids: list[int] | None = None


@dataclass(frozen=True)
class Aggregate:
    """Result of one aggregation (see the module docstring for the three parts of the decision).

    Attributes
    ----------
    vector : Tensor
        ``(d,)`` aggregated update delta, same dtype and device as the input.
    weights : Tensor
        ``(n,)`` weight each input row received in ``vector`` (0 for rows
        that were dropped). For rules that are not a weighted mean of the
        rows (coordinate-wise median and trimmed mean, Bulyan, signSGD's vote)
        this is the rule's best per-row attribution, documented with each rule.
    selected : Tensor
        Indices (long) of the rows that contributed to ``vector``.
    flagged : Tensor
        Indices (long) of the rows a detector declared malicious; always empty
        for a rule whose class has ``detects = False``.
    info : dict
        Optional scalar diagnostics (e.g. clipping threshold, cluster sizes).
    active : bool
        ``False`` when the rule ran as something else than itself this round
        (e.g. the PCA defense's plain-mean warm-up); the round is then not the
        defense's result.
    """

    vector: Tensor
    weights: Tensor
    selected: Tensor
    flagged: Tensor
    info: dict[str, float] = field(default_factory=dict)
    active: bool = True


class Rule(Protocol):
    """What a configured rule provides (every class in this package, and ``Composed``).

    Attributes
    ----------
    detects : bool
        ``True`` for detectors, the only rules that fill ``Aggregate.flagged``.
        A ``ClassVar`` of every rule class; ``Composed`` reports its inner
        rule's.
    """

    @property
    def detects(self) -> bool:
        """Whether the rule declares rows malicious (fills ``Aggregate.flagged``)."""
        ...

    def check_clients(self, n: int) -> None:
        """Raise :class:`RuleConfigError` if ``n`` rows cannot satisfy the rule or reduce it to the plain mean."""
        ...

    def __call__(self, updates: Tensor, context: RoundContext | None) -> Aggregate:
        """Aggregate one round."""
        ...


def as_index(mask_or_indices: Tensor | list[int]) -> Tensor:
    """Turn a boolean mask or a list of indices into a sorted long index tensor."""
    t = torch.as_tensor(mask_or_indices)
    if t.dtype == torch.bool:
        t = torch.nonzero(t, as_tuple=False).flatten()
    return torch.sort(t.to(torch.long).flatten()).values


def check_updates(updates: Tensor) -> int:
    """Validate the ``(n, d)`` update matrix and return ``n``."""
    if updates.ndim != 2:
        raise ValueError(f"updates must be an (n, d) matrix, got shape {tuple(updates.shape)}")
    if not torch.is_floating_point(updates):
        raise ValueError(f"updates must be floating point, got {updates.dtype}")
    if updates.shape[0] == 0:
        raise RuleConfigError("no updates to aggregate (0 replies this round)")
    return updates.shape[0]
