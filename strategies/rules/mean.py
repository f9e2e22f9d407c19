"""Plain averaging: FedAvg (McMahan et al. 2017).

Two variants:

* unweighted mean, as in Tolpegin et al. (ESORICS 2020)'s code: every reply
  counts the same;
* example-weighted mean, as in McMahan et al., where the weights are the
  partition sizes *the server knows* (``RoundContext.weights``), never the
  sample counts a client reports about itself.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def mean(updates: Tensor, *, weights: Tensor | None = None) -> Aggregate:
    """Average the rows of ``updates``.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    weights : Tensor, optional
        ``(n,)`` non-negative weights; normalised to sum to 1. ``None`` gives
        the unweighted mean.

    Returns
    -------
    Aggregate
        Every row selected, none flagged.
    """
    n = check_updates(updates)
    if weights is None:
        w = torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device)
    else:
        w = torch.as_tensor(weights, dtype=updates.dtype, device=updates.device).flatten()
        if w.shape[0] != n:
            raise ValueError(f"weights has {w.shape[0]} entries for {n} updates")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
        w = w / w.sum()
    everyone = torch.arange(n, device=updates.device)
    return Aggregate(
        vector=w @ updates,
        weights=w,
        selected=everyone,
        flagged=everyone[:0],
    )


class Mean:
    """FedAvg as a configured rule.

    Parameters
    ----------
    weighted : bool
        ``False`` (paper A): unweighted mean. ``True``: weight by the partition
        sizes the server knows.
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, weighted: bool = False) -> None:
        if not isinstance(weighted, bool):
            raise RuleConfigError(f"mean: weighted must be true or false, got {weighted!r}")
        self.weighted = weighted

    def check_clients(self, n: int) -> None:
        """Any positive number of replies will do."""
        if n < 1:
            raise RuleConfigError(f"mean needs at least 1 reply, got n={n}")

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        weights = context.weights if (self.weighted and context is not None) else None
        if self.weighted and weights is None:
            raise RuleConfigError("mean(weighted=true) needs the partition sizes in the round context")
        return mean(updates, weights=weights)
