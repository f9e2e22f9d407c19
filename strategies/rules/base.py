"""The contract every aggregation rule follows.

A rule sees an ``(n, d)`` tensor of update deltas (one row per replying client,
rows in an arbitrary order) and returns an :class:`Aggregate`: the aggregated
delta and its decision (which rows it kept, with which weight, which it flagged).
Rules never see who is malicious; the harness scores ``flagged`` against the
truth afterwards.

Rules are small callables configured once with keyword-only hyper-parameters
(validated in ``__init__`` with messages that show the values) and called once
per round. ``check_clients(n)`` raises :class:`RuleConfigError` when a round of
``n`` replies cannot satisfy the rule's precondition (e.g. Krum needs
``n > 2f + 2``); the runner calls it at configuration time with the run's
``clients_per_round`` and the adapter calls it again each round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


class RuleConfigError(ValueError):
    """A rule's hyper-parameters, or the number of replies, violate its preconditions."""


@dataclass(frozen=True)
class Layout:
    """Where each named model tensor lives inside the flat update vector.

    Attributes
    ----------
    names : tuple of str
        State-dict keys of the floating-point tensors, in vector order.
    shapes : tuple of torch.Size
        Shape of each tensor.
    offsets : tuple of int
        Start index of each tensor in the flat vector (``offsets[i] + numel``
        is its end).
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]

    def slice_of(self, name: str) -> slice:
        """Return the slice of the flat vector that holds tensor ``name``."""
        try:
            i = self.names.index(name)
        except ValueError:
            raise KeyError(f"no tensor named {name!r} in the model; known: {list(self.names)}") from None
        return slice(self.offsets[i], self.offsets[i] + self.shapes[i].numel())

    @property
    def size(self) -> int:
        """Total length of the flat vector."""
        if not self.names:
            return 0
        return self.offsets[-1] + self.shapes[-1].numel()


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
    """Result of one aggregation.

    Attributes
    ----------
    vector : Tensor
        ``(d,)`` aggregated update delta, same dtype and device as the input.
    weights : Tensor
        ``(n,)`` weight each input row received in ``vector`` (0 for rows
        that were dropped). For rules that are not a weighted mean (median,
        geometric median) this is the rule's best per-row attribution, and
        rows are 1/k for the k rows that took part.
    selected : Tensor
        Indices (long) of the rows that contributed to ``vector``.
    flagged : Tensor
        Indices (long) of the rows the rule considers suspicious.
    info : dict
        Optional scalar diagnostics (e.g. clipping threshold, cluster sizes).
    """

    vector: Tensor
    weights: Tensor
    selected: Tensor
    flagged: Tensor
    info: dict[str, float] = field(default_factory=dict)


def as_index(mask_or_indices: Tensor | list[int], n: int | None = None) -> Tensor:
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
