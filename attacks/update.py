"""Update poisoning: a malicious client's honest update -> the update it sends.

Kind ``"update"``: every attack is a small callable configured once with
keyword-only hyper-parameters and called as ``attack(update, *, generator)``
on the client's flat ``(d,)`` model delta (local - global). It returns a new
tensor of the same shape, dtype and device and never modifies its input.
Randomness comes only from ``generator``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from attacks._checks import is_int


def _check_update(update: Tensor) -> None:
    if not isinstance(update, Tensor) or update.ndim != 1 or not torch.is_floating_point(update):
        raise ValueError(
            f"update must be a flat (d,) floating-point tensor, got {getattr(update, 'shape', type(update))!r}"
        )


def _positive(owner: str, name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {name}={value!r}")
    return float(value)


class SignFlip:
    """Sign flipping: send ``-scale * update``.

    The standard sign-flipping Byzantine baseline (e.g. Li et al., RSA, AAAI
    2019): ``scale=1`` reverses the honest direction, larger values also boost
    it.

    Parameters
    ----------
    scale : float
        Positive multiplier.
    """

    kind: ClassVar[str] = "update"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = _positive("SignFlip", "scale", scale)

    def __call__(self, update: Tensor, *, generator: torch.Generator) -> Tensor:
        _check_update(update)
        return update * (-self.scale)


class GaussianNoise:
    """Gaussian attack: send random noise instead of (or on top of) the update.

    ``additive=False`` (default, the "Gaussian attack" of Fang et al. 2020 and
    Blanchard et al. 2017): the update is replaced by a draw from
    ``N(0, std^2 I)``. ``additive=True``: ``update + N(0, std^2 I)``.

    Parameters
    ----------
    std : float
        Standard deviation of every coordinate (>= 0).
    additive : bool
        Add the noise to the honest update instead of replacing it.
    """

    kind: ClassVar[str] = "update"

    def __init__(self, *, std: float, additive: bool = False) -> None:
        self.std = _positive("GaussianNoise", "std", std, allow_zero=True)
        if additive is not True and additive is not False:
            raise ValueError(f"GaussianNoise: additive must be true or false, got additive={additive!r}")
        self.additive = additive

    def __call__(self, update: Tensor, *, generator: torch.Generator) -> Tensor:
        _check_update(update)
        if not isinstance(generator, torch.Generator):
            raise TypeError("GaussianNoise needs a torch.Generator (the global RNG is never used)")
        noise = torch.randn(update.shape, generator=generator, device=generator.device, dtype=update.dtype)
        noise = noise.to(update.device) * self.std
        return update + noise if self.additive else noise


class Scaling:
    """Boosted update / model replacement (Bagdasaryan et al., AISTATS 2020).

    The attacker sends ``boost * update``; with ``boost = n / eta``
    (:func:`model_replacement_boost`) and a server that applies
    ``G + eta/n * sum(updates)``, the new global model lands on the attacker's
    local model ("model replacement"), assuming the honest updates roughly
    cancel. With ``norm_bound`` set, the boosted update is then rescaled so its
    L2 norm is at most ``norm_bound`` (the attacker's counter to a server norm
    bound, Sun et al. 2019): ``u * min(1, norm_bound / ||u||)``.

    Parameters
    ----------
    boost : float
        ``gamma > 0``.
    norm_bound : float, optional
        Maximum L2 norm of the sent update.
    """

    kind: ClassVar[str] = "update"

    def __init__(self, *, boost: float, norm_bound: float | None = None) -> None:
        self.boost = _positive("Scaling", "boost", boost)
        self.norm_bound = None if norm_bound is None else _positive("Scaling", "norm_bound", norm_bound)

    def __call__(self, update: Tensor, *, generator: torch.Generator) -> Tensor:
        _check_update(update)
        out = update * self.boost
        if self.norm_bound is not None:
            norm = float(torch.linalg.vector_norm(out))
            if norm > self.norm_bound:
                out = out * (self.norm_bound / norm)
        return out


def model_replacement_boost(num_clients_per_round: int, server_lr: float = 1.0) -> float:
    """Boost ``gamma = n / eta`` of model replacement (Bagdasaryan et al. 2020).

    Parameters
    ----------
    num_clients_per_round : int
        ``n``, the number of updates the server averages.
    server_lr : float
        ``eta``, the server's learning rate on the averaged delta (1 for FedAvg).
    """
    if not is_int(num_clients_per_round) or num_clients_per_round < 1:
        raise ValueError(
            f"num_clients_per_round must be a positive integer, got num_clients_per_round={num_clients_per_round!r}"
        )
    eta = _positive("model_replacement_boost", "server_lr", server_lr)
    return num_clients_per_round / eta
