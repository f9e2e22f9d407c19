"""Norm bounding with optional weak differential privacy (Sun, Kairouz, Suresh and
McMahan, 2019, "Can you really backdoor federated learning?").

Each update is scaled down to L2 norm at most ``max_norm`` (``M``):

    x_i' = x_i * min(1, M / ||x_i||)

the clipped updates are averaged (unweighted), and with ``sigma > 0``
Gaussian noise ``N(0, sigma^2 I)`` is added to the average ("weak DP"; the
noise is drawn from ``context.generator``).

Norm bounding flags nothing (``detects = False``); ``weights`` are the
coefficients ``min(1, M / ||x_i||) / n`` (so the vector before noise is exactly
``weights @ updates``), ``info["clipped"]`` counts the rows that were scaled
down.

When it is the plain mean: a round in which no update is longer than ``M``
(``info["clipped"] == 0``) returns exactly the plain mean, plus the noise when
``sigma > 0``. A ``max_norm`` large against the updates' norms makes every
round so; that depends on the data, not on ``n``, so
:meth:`NormBound.check_clients` does not refuse it. Choose ``max_norm`` in the
units of the model's updates and watch ``clipped``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules._common import (
    everyone,
    finish,
    float_param,
    gaussian_noise,
    nobody,
    require_generator,
    row_norms,
    weighted_sum,
)
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates


def norm_bound(
    updates: Tensor,
    *,
    max_norm: float,
    sigma: float = 0.0,
    generator: torch.Generator | None = None,
) -> Aggregate:
    """Clip every update to L2 norm ``max_norm``, average, add ``N(0, sigma^2)`` noise.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    max_norm : float
        Norm bound ``M`` (> 0).
    sigma : float
        Standard deviation of the per-coordinate Gaussian noise (>= 0).
    generator : torch.Generator, optional
        Required when ``sigma > 0``.

    Returns
    -------
    Aggregate
        Noisy mean of clipped updates; every row selected; nothing flagged.
    """
    max_norm = float_param("norm_bound", "max_norm", max_norm, low=0.0, low_open=True)
    sigma = float_param("norm_bound", "sigma", sigma, low=0.0)
    n = check_updates(updates)
    norms = row_norms(updates)
    over = norms > max_norm
    scale = torch.where(over, max_norm / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.ones_like(norms))
    coef = scale / n
    vector = weighted_sum(updates, coef)
    if sigma > 0:
        gen = require_generator("norm_bound(sigma > 0)", generator)
        vector = vector + gaussian_noise(updates.shape[1], sigma, gen, updates)
    return Aggregate(
        vector=finish(vector, updates),
        weights=coef.to(updates.dtype),
        selected=everyone(n, updates.device)[coef > 0],
        flagged=nobody(updates.device),
        info={"clipped": float(over.sum()), "max_norm": max_norm, "noise_std": sigma},
    )


class NormBound:
    """Norm bounding (+ weak DP) as a configured rule (see :func:`norm_bound`).

    Parameters
    ----------
    max_norm : float
        Norm bound ``M`` (> 0).
    sigma : float
        Noise standard deviation (>= 0); 0 disables the noise.
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, max_norm: float, sigma: float = 0.0) -> None:
        self.max_norm = float_param("norm_bound", "max_norm", max_norm, low=0.0, low_open=True)
        self.sigma = float_param("norm_bound", "sigma", sigma, low=0.0)

    def check_clients(self, n: int) -> None:
        """Any positive number of replies will do (whether a round clips, or is the plain mean, depends on the data)."""
        if n < 1:
            raise RuleConfigError(f"norm_bound needs at least 1 reply, got n={n}")

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        generator = context.generator if context is not None else None
        return norm_bound(updates, max_norm=self.max_norm, sigma=self.sigma, generator=generator)
