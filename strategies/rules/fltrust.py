"""FLTrust (Cao, Fang, Liu and Gong, NDSS 2021, "FLTrust: Byzantine-robust federated
learning via trust bootstrapping").

The server trains on a small clean root data set and obtains its own update
``g0`` (``context.server_update``). Each client update ``g_i`` gets the trust
score ``TS_i = ReLU(cos(g_i, g0))``, is rescaled to the norm of ``g0`` and the
rescaled updates are averaged with the trust scores as weights:

    g = sum_i TS_i * (||g0|| / ||g_i||) * g_i / sum_j TS_j

A zero update has cosine 0, hence trust 0. When no client earns trust
(``sum TS = 0``, where the paper's formula divides by zero) the aggregate is
the zero update and every row is flagged.

``weights`` are the coefficients on the raw rows,
``TS_i * ||g0|| / ||g_i|| / sum TS`` (the vector is exactly
``weights @ updates``). FLTrust is a detector (``detects = True``):
``flagged`` is the rows with trust 0.

No degenerate ``n``: every reply is judged against the server's own update,
not against the other replies, so even a single reply is checked, weighted by
its trust and rescaled to the server update's norm; no number of replies
reduces FLTrust to the plain mean.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules._common import acc_dtype, everyone, finish, row_norms, weighted_sum
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def fltrust(updates: Tensor, *, server_update: Tensor) -> Aggregate:
    """FLTrust aggregation against the server's root-data update ``server_update``.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` client update deltas.
    server_update : Tensor
        ``(d,)`` the server's own update ``g0`` on its clean root data.

    Returns
    -------
    Aggregate
        Trust-weighted mean of norm-matched updates; rows with zero trust flagged.
    """
    n = check_updates(updates)
    d = updates.shape[1]
    if server_update is None:
        raise RuleConfigError("fltrust needs the server's root-data update (context.server_update), got None")
    if tuple(server_update.shape) != (d,):
        raise RuleConfigError(
            f"fltrust: server_update has shape {tuple(server_update.shape)}, expected ({d},) like the updates"
        )
    acc = acc_dtype(updates.dtype)
    g0 = server_update.to(device=updates.device, dtype=acc)
    g0_norm = torch.linalg.vector_norm(g0)
    norms = row_norms(updates)
    dots = (updates @ g0) if updates.dtype == acc else updates.to(acc) @ g0
    ok = (norms > 0) & (g0_norm > 0) & torch.isfinite(norms)
    safe = torch.where(ok, norms, torch.ones_like(norms))
    trust = torch.where(ok, torch.relu(dots / (safe * g0_norm.clamp_min(torch.finfo(acc).tiny))), 0.0)
    total = trust.sum()
    if float(total) > 0:
        coef = trust * g0_norm / safe / total
    else:
        coef = torch.zeros_like(trust)
    vector = weighted_sum(updates, coef)
    return Aggregate(
        vector=finish(vector, updates),
        weights=coef.to(updates.dtype),
        selected=everyone(n, updates.device)[trust > 0],
        flagged=everyone(n, updates.device)[trust <= 0],
        info={"trusted": float((trust > 0).sum()), "server_update_norm": float(g0_norm)},
    )


class FLTrust:
    """FLTrust as a configured rule; needs ``context.server_update`` every round."""

    detects: ClassVar[bool] = True
    needs_server_update: ClassVar[bool] = True

    def check_clients(self, n: int) -> None:
        """Any positive number of replies will do (each is judged against the server's update)."""
        if n < 1:
            raise RuleConfigError(f"fltrust needs at least 1 reply, got n={n}")

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        server_update = context.server_update if context is not None else None
        if server_update is None:
            raise RuleConfigError(
                "fltrust needs the server's update on its clean root data set in "
                "context.server_update, got None (configure a root data set for the server)"
            )
        return fltrust(updates, server_update=server_update)
