"""Helpers shared by the attack modules (private).

Argument checks with errors that show the offending value, and the two draws
the data-poisoning attacks share: how many samples a share poisons, and which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def is_int(value: object) -> bool:
    """Whether ``value`` is a Python or numpy integer (``bool`` is not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def share_count(share: float, total: int) -> int:
    """Nearest integer to ``share * total``, halves rounded up (half of 7 samples is 4)."""
    return min(total, math.floor(share * total + 0.5))


def check_share(owner: str, share: float) -> float:
    """``share`` as a float, or ``ValueError`` unless it is a number in ``[0, 1]``."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f"{owner}: share must be in [0, 1], got share={share!r}")
    return float(share)


def check_pixel_value(owner: str, value: float) -> float:
    """``value`` as a float, or ``ValueError`` unless it is a pixel value in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: value must be a pixel value in [0, 1], got value={value!r}")
    return float(value)


def check_class(owner: str, name: str, value: int) -> int:
    """``value`` as an int, or ``ValueError`` unless it is a non-negative class index."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{owner}: {name} must be a non-negative class index, got {name}={value!r}")
    return int(value)


def check_xy(x: Tensor, y: Tensor) -> None:
    """``ValueError`` unless ``x`` is a float ``(N, C, H, W)`` tensor and ``y`` its ``(N,)`` integer labels."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not torch.is_floating_point(x):
        raise ValueError(
            f"x must be a float (N, C, H, W) tensor, got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            f"{' ' + str(x.dtype) if isinstance(x, Tensor) else ''}"
        )
    if not isinstance(y, Tensor) or y.ndim != 1 or torch.is_floating_point(y) or y.dtype == torch.bool:
        raise ValueError(f"y must be an integer (N,) label tensor, got {getattr(y, 'shape', y)!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")


def check_rank(attacker_rank: int) -> None:
    """``ValueError`` unless ``attacker_rank`` is a non-negative integer."""
    if not is_int(attacker_rank) or attacker_rank < 0:
        raise ValueError(f"attacker_rank must be a non-negative integer, got attacker_rank={attacker_rank!r}")


def check_trigger_shape(owner: str, shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)`` ints, or ``ValueError`` unless it is three positive integers."""
    if len(shape) != 3 or not all(is_int(s) and s >= 1 for s in shape):
        raise ValueError(f"{owner}: trigger shape must be (C, H, W), got {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    return c, h, w


def choose(candidates: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` entries of the index tensor ``candidates``, uniformly without replacement.

    All of them, in their order and without a draw, when ``count`` covers them.
    """
    if count >= candidates.numel():
        return candidates
    perm = torch.randperm(candidates.numel(), generator=generator, device=generator.device)
    return candidates[perm[:count].to(candidates.device)]
