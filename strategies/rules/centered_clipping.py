"""Centered clipping (Karimireddy, He and Jaggi, ICML 2021, "Learning from history
for Byzantine robust optimization").

Starting from a centre ``v_0``, run ``L`` iterations of

    v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||)

and return ``v_L``. The paper's centre is the previous round's aggregate (its
clients send momentum, so consecutive aggregates are close); the configured
rule :class:`CenteredClipping` keeps that aggregate as state and starts from
zero in the first round. The paper reports that ``L = 1`` suffices; ``tau`` is
the clipping radius in the units of the updates.

Because every step is affine in the rows, ``v_L = a * v_0 + sum_i w_i x_i``;
``weights`` reports the ``w_i`` (they sum to ``1 - a``, the rest is the
centre's share, ``info["center_weight"]``). Nothing is flagged
(``detects = False``); ``info["clipped"]`` counts the rows clipped in the last
iteration.

When it is the plain mean: an iteration that clips no row
(``||x_i - v_l|| <= tau`` for every ``i``) returns ``v_l + mean_i (x_i - v_l)
= mean_i x_i``, whatever the centre. So a round with ``info["clipped"] == 0``
returned exactly the plain mean, which is what a ``tau`` large against the
spread of the updates around the centre gives. This depends on the data, not
on ``n``, so :meth:`CenteredClipping.check_clients` does not refuse it; choose
``tau`` in the units of the model's updates and watch ``clipped``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules._common import (
    acc_dtype,
    everyone,
    finish,
    float_param,
    int_param,
    nobody,
    sq_dists_to,
    weighted_sum,
)
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def centered_clipping(
    updates: Tensor,
    *,
    tau: float,
    iterations: int = 1,
    center: Tensor | None = None,
) -> Aggregate:
    """Centered clipping around ``center`` (zero when ``None``).

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    tau : float
        Clipping radius (> 0).
    iterations : int
        Number of clipping iterations ``L`` (>= 1).
    center : Tensor, optional
        ``(d,)`` starting point ``v_0``.

    Returns
    -------
    Aggregate
        ``v_L``; row coefficients as ``weights``; nothing flagged.
    """
    tau = float_param("centered_clipping", "tau", tau, low=0.0, low_open=True)
    iterations = int_param("centered_clipping", "iterations", iterations, minimum=1)
    n = check_updates(updates)
    d = updates.shape[1]
    acc = acc_dtype(updates.dtype)
    if center is None:
        v0 = torch.zeros(d, dtype=acc, device=updates.device)
    else:
        if center.shape != (d,):
            raise ValueError(f"centered_clipping: center has shape {tuple(center.shape)}, expected ({d},)")
        v0 = center.to(device=updates.device, dtype=acc)
    v = v0
    row_coef = torch.zeros(n, dtype=acc, device=updates.device)
    center_coef = 1.0
    clipped = 0
    for _ in range(iterations):
        dist = sq_dists_to(updates, v).sqrt()
        scale = torch.where(dist > tau, tau / dist.clamp_min(torch.finfo(acc).tiny), torch.ones_like(dist))
        clipped = int((dist > tau).sum())
        step = scale / n
        keep = 1.0 - float(step.sum())
        row_coef = keep * row_coef + step
        center_coef *= keep
        v = keep * v + weighted_sum(updates, step)
    return Aggregate(
        vector=finish(v, updates),
        weights=row_coef.to(updates.dtype),
        selected=everyone(n, updates.device)[row_coef > 0],
        flagged=nobody(updates.device),
        info={"clipped": float(clipped), "center_weight": center_coef, "tau": tau},
    )


class CenteredClipping:
    """Centered clipping with the previous aggregate as centre (stateful).

    Parameters
    ----------
    tau : float
        Clipping radius (> 0).
    iterations : int
        Clipping iterations per round ``L``; default 1 (the paper's choice).

    Notes
    -----
    The centre starts at zero and becomes each round's aggregate. Call
    :meth:`reset` between independent runs.
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, tau: float, iterations: int = 1) -> None:
        self.tau = float_param("centered_clipping", "tau", tau, low=0.0, low_open=True)
        self.iterations = int_param("centered_clipping", "iterations", iterations, minimum=1)
        self.center: Tensor | None = None

    def reset(self) -> None:
        """Forget the previous aggregate (the next round starts from zero)."""
        self.center = None

    def check_clients(self, n: int) -> None:
        """Any positive number of replies will do (whether a round clips, or is the plain mean, depends on the data)."""
        if n < 1:
            raise RuleConfigError(f"centered_clipping needs at least 1 reply, got n={n}")

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        if self.center is not None and self.center.shape[0] != updates.shape[1]:
            raise ValueError(
                f"centered_clipping: updates have d={updates.shape[1]} but the stored centre has "
                f"d={self.center.shape[0]}; call reset() when the model changes"
            )
        result = centered_clipping(updates, tau=self.tau, iterations=self.iterations, center=self.center)
        self.center = result.vector.detach().clone()
        return result
