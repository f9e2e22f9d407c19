"""FoolsGold (Fung, Yoon and Beschastnikh, RAID 2020, "The limitations of federated
learning in sybil settings"; arXiv 2018 "Mitigating sybils in federated
learning poisoning").

Sybils that push the same poisoned objective send updates that look alike
*over time*. FoolsGold keeps, per client, the running sum of all its past
updates (its history ``H_i``) and each round computes, following the authors'
reference code (DistributedML/FoolsGold):

1. ``cs = cosine_similarity(H) - I`` (pairwise over this round's clients);
2. pardoning: ``cs_ij *= v_i / v_j`` where ``v_i = max_j cs_ij < v_j``;
3. ``w_i = 1 - max_j cs_ij``, clipped to ``[0, 1]``;
4. ``w = w / max(w)``, then ``w_i = 0.99`` where ``w_i = 1``;
5. logit: ``w_i = kappa * (ln(w_i / (1 - w_i)) + 0.5)``, clipped to ``[0, 1]``.

The reference code then returns ``sum_i w_i x_i``, an *unnormalised* weighted
sum used as a gradient step; here the aggregate is the weighted *mean*
``sum_i w_i x_i / sum_i w_i``, so the rule plugs in wherever the mean of the
updates would (the scale then matches FedAvg's). When every weight is 0 (all
clients look alike), the aggregate is the zero update and every row is
flagged. The optional feature-importance weighting of the paper is not
implemented (the reference code's default leaves it off).

History and client identity: the rule only sees rows, so the configured rule
:class:`FoolsGold` keys the history by ``context.client_ids`` (the adapter's
stable client identities). Without ids it falls back to **per-round
similarity**: ``H`` is just this round's updates, and nothing is kept.
FoolsGold is a detector (``detects = True``): ``flagged`` is the rows with
weight 0.

Degenerate ``n``: with one client there is nobody to compare with (weight 1);
with two, both have the same maximum similarity (each other's), so both get
the same weight: the plain mean, or the zero update when they point the same
way. :meth:`FoolsGold.check_clients` refuses ``n < 3`` (the function computes
it).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules._common import (
    acc_dtype,
    cosine_similarity_matrix,
    everyone,
    finish,
    float_param,
    weighted_sum,
)
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def foolsgold_weights(history: Tensor, kappa: float = 1.0, rows: Tensor | None = None) -> Tensor:
    """FoolsGold's per-client weights in ``[0, 1]`` from the ``(n, d)`` histories (float64).

    ``rows`` picks this round's clients out of a larger history store.
    """
    n = history.shape[0] if rows is None else int(rows.numel())
    cs = cosine_similarity_matrix(history, rows=rows).to(torch.float64)
    cs = cs - torch.eye(n, dtype=cs.dtype, device=cs.device)
    maxcs = cs.max(dim=1).values
    pardon = maxcs[:, None] < maxcs[None, :]
    pardon.fill_diagonal_(False)
    ratio = maxcs[:, None] / torch.where(maxcs[None, :] != 0, maxcs[None, :], 1.0)
    cs = torch.where(pardon, cs * ratio, cs)
    wv = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = float(wv.max())
    if top <= 0:
        return torch.zeros_like(wv)
    wv = wv / top
    wv = torch.where(wv == 1.0, torch.full_like(wv, 0.99), wv)
    logit = kappa * (torch.log(wv / (1.0 - wv)) + 0.5)  # log(0) = -inf, clipped to 0 below
    return logit.clamp(0.0, 1.0)


def foolsgold(
    updates: Tensor, *, history: Tensor | None = None, kappa: float = 1.0, rows: Tensor | None = None
) -> Aggregate:
    """FoolsGold aggregation of this round's ``updates`` given the clients' histories.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` this round's update deltas.
    history : Tensor, optional
        ``(n, d)`` each client's summed updates *including* this round's;
        ``None`` uses ``updates`` (per-round similarity).
    rows : Tensor, optional
        With ``rows``, ``history`` is a larger store and ``history[rows]`` are
        this round's clients, in the order of ``updates``.
    kappa : float
        Confidence of the logit (> 0); 1 in the reference code.

    Returns
    -------
    Aggregate
        Weighted mean; FoolsGold weights normalised to sum 1; weight-0 rows flagged.
    """
    kappa = float_param("foolsgold", "kappa", kappa, low=0.0, low_open=True)
    n = check_updates(updates)
    h = updates if history is None else history
    picked = (h.shape[0] if rows is None else int(rows.numel()), h.shape[1])
    if picked != tuple(updates.shape):
        raise ValueError(f"foolsgold: history rows have shape {picked}, updates {tuple(updates.shape)}")
    wv = foolsgold_weights(h, kappa, rows=rows).to(updates.device)
    total = float(wv.sum())
    coef = wv / total if total > 0 else wv
    acc = acc_dtype(updates.dtype)
    vector = weighted_sum(updates, coef.to(acc))
    return Aggregate(
        vector=finish(vector, updates),
        weights=coef.to(updates.dtype),
        selected=everyone(n, updates.device)[wv > 0],
        flagged=everyone(n, updates.device)[wv <= 0],
        info={"zero_weight": float((wv <= 0).sum()), "max_weight": float(wv.max())},
    )


class FoolsGold:
    """FoolsGold with per-client history across rounds (stateful).

    Parameters
    ----------
    kappa : float
        Logit confidence (> 0); default 1 as in the reference code.

    Notes
    -----
    Histories are keyed by ``context.client_ids``; without ids each round
    uses its own updates only (see the module docstring). Memory: one
    ``d``-vector per distinct client seen. Call :meth:`reset` between runs.
    """

    detects: ClassVar[bool] = True

    def __init__(self, *, kappa: float = 1.0) -> None:
        self.kappa = float_param("foolsgold", "kappa", kappa, low=0.0, low_open=True)
        self._rows: dict[int, int] = {}
        self._store: Tensor | None = None

    def reset(self) -> None:
        """Forget all client histories."""
        self._rows = {}
        self._store = None

    def check_clients(self, n: int) -> None:
        """At least 3 replies: one or two clients always get equal weights (the plain mean)."""
        if n < 1:
            raise RuleConfigError(f"foolsgold needs at least 1 reply, got n={n}")
        if n < 3:
            raise RuleConfigError(
                f"foolsgold needs at least 3 replies to compare, got n={n}: with 2 or fewer every client gets "
                f"the same weight (the plain mean, or nothing when two point the same way); "
                f"sample at least 3 clients per round"
            )

    def _history(self, updates: Tensor, ids: list[int]) -> tuple[Tensor, Tensor]:
        """Add this round's updates to the store; return ``(store, rows of this round's clients)``."""
        n, d = updates.shape
        if len(ids) != n:
            raise ValueError(f"foolsgold: {len(ids)} client ids for {n} updates")
        if len(set(ids)) != n:
            raise ValueError(f"foolsgold: duplicate client ids in one round: {sorted(ids)}")
        acc = acc_dtype(updates.dtype)
        if self._store is not None and (self._store.shape[1] != d or self._store.device != updates.device):
            raise ValueError(
                f"foolsgold: updates (d={d}, {updates.device}) do not match the stored history "
                f"(d={self._store.shape[1]}, {self._store.device}); call reset() when the model changes"
            )
        new = [i for i in ids if i not in self._rows]
        for cid in new:
            self._rows[cid] = len(self._rows)
        need = len(self._rows)
        if self._store is None or self._store.shape[0] < need:
            capacity = 2 ** math.ceil(math.log2(need))
            grown = torch.zeros(capacity, d, dtype=acc, device=updates.device)
            if self._store is not None:
                grown[: self._store.shape[0]] = self._store
            self._store = grown
        rows = torch.tensor([self._rows[i] for i in ids], dtype=torch.long, device=updates.device)
        self._store.index_add_(0, rows, updates.to(acc))
        return self._store, rows

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        ids = context.client_ids if context is not None else None
        check_updates(updates)
        if ids is None:
            return foolsgold(updates, kappa=self.kappa)
        store, rows = self._history(updates, list(ids))
        return foolsgold(updates, history=store, rows=rows, kappa=self.kappa)
