"""All-to-one backdoors: BadNets (Gu et al. 2017), Blended (Chen et al. 2017), DBA (Xie et al., ICLR 2020).

Data poisoning (``kind = "data"``) with the call of :mod:`attacks.label_flip`:
``attack(x, y, *, attacker_rank, generator) -> (x, y)``, ``x`` in pixel space
``[0, 1]`` before any normalisation; DBA splits its trigger by ``attacker_rank``.
:func:`backdoor_test_set` builds the set the attack success rate is measured on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from attacks._checks import (
    check_class,
    check_pixel_value,
    check_rank,
    check_share,
    check_trigger_shape,
    check_xy,
    choose,
    is_int,
    share_count,
)


class Backdoor:
    """All-to-one backdoor: stamp a trigger on some samples and relabel them.

    A trigger is a ``(mask, pattern)`` pair of ``(C, H, W)`` tensors; stamping
    computes ``x' = (1 - mask) * x + mask * pattern`` (pixels where the mask is
    0 are left exactly as they were). During training a uniformly random subset
    of ``floor(share * N + 0.5)`` of the client's ``N`` samples (of any class)
    is stamped with the attacker's trigger and relabelled as ``target``.
    :meth:`stamp` applies the full trigger, for measuring the attack success
    rate at test time (see :func:`backdoor_test_set`).

    Subclasses implement :meth:`trigger`.
    """

    kind: ClassVar[str] = "data"

    def __init__(self, *, target: int, share: float) -> None:
        self.target = check_class(type(self).__name__, "target", target)
        self.share = check_share(type(self).__name__, share)

    def trigger(self, shape: Sequence[int], *, attacker_rank: int | None = None) -> tuple[Tensor, Tensor]:
        """Return the ``(mask, pattern)`` float ``(C, H, W)`` tensors of the trigger.

        ``attacker_rank=None`` gives the full (global) trigger; a rank gives the
        trigger that attacker stamps during training (the same, except for DBA).
        """
        raise NotImplementedError

    def _apply(self, x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
        mask = mask.to(device=x.device, dtype=x.dtype)
        pattern = pattern.to(device=x.device, dtype=x.dtype)
        return x * (1 - mask) + pattern * mask

    def stamp(self, x: Tensor) -> Tensor:
        """Apply the full trigger to ``x`` (``(C, H, W)`` or ``(N, C, H, W)``), as a new tensor."""
        if not isinstance(x, Tensor) or x.ndim not in (3, 4) or not torch.is_floating_point(x):
            raise ValueError(f"stamp expects a float (C, H, W) or (N, C, H, W) tensor, got {getattr(x, 'shape', x)!r}")
        mask, pattern = self.trigger(tuple(x.shape[-3:]))
        return self._apply(x, mask, pattern)

    def __call__(
        self, x: Tensor, y: Tensor, *, attacker_rank: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        check_xy(x, y)
        check_rank(attacker_rank)
        everyone = torch.arange(x.shape[0], device=x.device)
        chosen = choose(everyone, share_count(self.share, x.shape[0]), generator)
        mask, pattern = self.trigger(tuple(x.shape[1:]), attacker_rank=attacker_rank)
        x_new = x.clone()
        x_new[chosen] = self._apply(x[chosen], mask, pattern)
        y_new = y.clone()
        y_new[chosen] = self.target
        return x_new, y_new


_POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left")


class BadNets(Backdoor):
    """BadNets pixel-pattern backdoor (Gu et al. 2017), all-to-one.

    The trigger is a ``size x size`` patch at one corner of the image, ``margin``
    pixels from both edges, set on every channel:

    * ``pattern="square"`` (default, the common BackdoorBench form): every patch
      pixel is ``value`` (white for 1.0);
    * ``pattern="checker"``: patch pixel ``(i, j)`` is ``value`` when ``i + j``
      is even and ``1 - value`` otherwise (a checkerboard whose top-left patch
      pixel is ``value``).

    Parameters
    ----------
    target : int
        Label every triggered sample should be classified as.
    share : float
        Share of the client's samples to poison, in ``[0, 1]``.
    size : int
        Side of the patch in pixels (>= 1).
    position : {"bottom_right", "bottom_left", "top_right", "top_left"}
    value : float
        Pixel value in ``[0, 1]``.
    pattern : {"square", "checker"}
    margin : int
        Distance in pixels between the patch and the image borders (>= 0).
    """

    def __init__(
        self,
        *,
        target: int,
        share: float,
        size: int = 3,
        position: Literal["bottom_right", "bottom_left", "top_right", "top_left"] = "bottom_right",
        value: float = 1.0,
        pattern: Literal["square", "checker"] = "square",
        margin: int = 0,
    ) -> None:
        super().__init__(target=target, share=share)
        if not is_int(size) or size < 1:
            raise ValueError(f"BadNets: size must be a positive number of pixels, got size={size!r}")
        if position not in _POSITIONS:
            raise ValueError(f"BadNets: position must be one of {_POSITIONS}, got position={position!r}")
        value = check_pixel_value("BadNets", value)
        if pattern not in ("square", "checker"):
            raise ValueError(f"BadNets: pattern must be 'square' or 'checker', got pattern={pattern!r}")
        if not is_int(margin) or margin < 0:
            raise ValueError(f"BadNets: margin must be a non-negative number of pixels, got margin={margin!r}")
        self.size, self.position, self.value = int(size), position, value
        self.pattern, self.margin = pattern, int(margin)

    def patch_slices(self, height: int, width: int) -> tuple[slice, slice]:
        """Rows and columns of the patch in an ``height x width`` image."""
        extent = self.size + self.margin
        if extent > height or extent > width:
            raise ValueError(
                f"BadNets: a {self.size}x{self.size} trigger with margin {self.margin} does not fit a "
                f"{height}x{width} image; lower size or margin"
            )
        top = self.margin if self.position.startswith("top") else height - extent
        left = self.margin if self.position.endswith("left") else width - extent
        return slice(top, top + self.size), slice(left, left + self.size)

    def trigger(self, shape: Sequence[int], *, attacker_rank: int | None = None) -> tuple[Tensor, Tensor]:
        c, h, w = check_trigger_shape("BadNets", shape)
        rows, cols = self.patch_slices(h, w)
        mask = torch.zeros(c, h, w)
        mask[:, rows, cols] = 1.0
        pattern = torch.zeros(c, h, w)
        if self.pattern == "square":
            pattern[:, rows, cols] = self.value
        else:
            i = torch.arange(self.size)
            even = ((i[:, None] + i[None, :]) % 2 == 0).float()
            pattern[:, rows, cols] = even * self.value + (1 - even) * (1 - self.value)
        return mask, pattern


class Blended(Backdoor):
    """Blended backdoor (Chen et al. 2017), all-to-one.

    ``x' = (1 - alpha) * x + alpha * pattern`` on every pixel. The pattern is
    fixed uniform noise in ``[0, 1]`` of the image's shape, drawn from its own
    generator seeded with ``pattern_seed`` (the Hello-Kitty image of the paper
    is not shipped); it is the same for every attacker and at test time.

    Parameters
    ----------
    target : int
        Label every triggered sample should be classified as.
    share : float
        Share of the client's samples to poison, in ``[0, 1]``.
    alpha : float
        Blend ratio in ``(0, 1]``.
    pattern_seed : int
        Seed of the noise pattern (not the run seed: the trigger is part of the
        attack's definition).
    """

    def __init__(self, *, target: int, share: float, alpha: float = 0.1, pattern_seed: int = 0) -> None:
        super().__init__(target=target, share=share)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Blended: alpha must be in (0, 1], got alpha={alpha!r}")
        if not is_int(pattern_seed) or pattern_seed < 0:
            raise ValueError(f"Blended: pattern_seed must be a non-negative integer, got {pattern_seed!r}")
        self.alpha, self.pattern_seed = float(alpha), int(pattern_seed)

    def trigger(self, shape: Sequence[int], *, attacker_rank: int | None = None) -> tuple[Tensor, Tensor]:
        c, h, w = check_trigger_shape("Blended", shape)
        pattern = torch.rand(c, h, w, generator=torch.Generator().manual_seed(self.pattern_seed))
        return torch.full((c, h, w), self.alpha), pattern


class DBA(Backdoor):
    """Distributed backdoor attack, DBA (Xie et al., ICLR 2020), all-to-one.

    The global trigger is ``num_pieces`` horizontal bars of ``bar_length``
    pixels (one pixel high, every channel set to ``value``), laid out
    ``pieces_per_row`` to a row from ``origin`` (row, column), ``gap`` pixels
    apart horizontally and vertically. The defaults (4 pieces of 4 pixels,
    gap 2, top-left origin) give the MNIST trigger of the DBA code (bars at rows
    0 and 3, columns 0-3 and 6-9); ``bar_length=6, gap=3`` gives its CIFAR-10
    trigger (rows 0 and 4, columns 0-5 and 9-14). Attacker ``r`` stamps only
    its local piece ``r % num_pieces`` on its poisoned samples; :meth:`stamp`
    (test time) applies the union of all pieces.

    Parameters
    ----------
    target : int
        Label every triggered sample should be classified as.
    share : float
        Share of the client's samples to poison, in ``[0, 1]``.
    num_pieces : int
        Number of local triggers (>= 1).
    bar_length : int
        Length of each bar in pixels (>= 1).
    gap : int
        Pixels between neighbouring bars, horizontally and vertically (>= 0).
    pieces_per_row : int
        Bars per row of the layout (>= 1).
    origin : sequence of two int
        (row, column) of the first bar's left end.
    value : float
        Pixel value in ``[0, 1]``.
    """

    def __init__(
        self,
        *,
        target: int,
        share: float,
        num_pieces: int = 4,
        bar_length: int = 4,
        gap: int = 2,
        pieces_per_row: int = 2,
        origin: Sequence[int] = (0, 0),
        value: float = 1.0,
    ) -> None:
        super().__init__(target=target, share=share)
        for name, v, low in (
            ("num_pieces", num_pieces, 1),
            ("bar_length", bar_length, 1),
            ("gap", gap, 0),
            ("pieces_per_row", pieces_per_row, 1),
        ):
            if not is_int(v) or v < low:
                raise ValueError(f"DBA: {name} must be an integer >= {low}, got {name}={v!r}")
        origin = tuple(origin)
        if len(origin) != 2 or not all(is_int(o) and o >= 0 for o in origin):
            raise ValueError(f"DBA: origin must be two non-negative integers (row, column), got {origin!r}")
        value = check_pixel_value("DBA", value)
        self.num_pieces, self.bar_length, self.gap = int(num_pieces), int(bar_length), int(gap)
        self.pieces_per_row = int(pieces_per_row)
        self.origin = (int(origin[0]), int(origin[1]))
        self.value = value

    def piece_mask(self, height: int, width: int, piece: int | None = None) -> Tensor:
        """Boolean ``(H, W)`` mask of local piece ``piece`` (``None``: the global trigger)."""
        pieces = range(self.num_pieces) if piece is None else [piece]
        if piece is not None and not (is_int(piece) and 0 <= piece < self.num_pieces):
            raise ValueError(f"DBA: piece must be in [0, {self.num_pieces}), got {piece!r}")
        mask = torch.zeros(height, width, dtype=torch.bool)
        for p in pieces:
            row = self.origin[0] + (p // self.pieces_per_row) * (1 + self.gap)
            col = self.origin[1] + (p % self.pieces_per_row) * (self.bar_length + self.gap)
            if row >= height or col + self.bar_length > width:
                raise ValueError(
                    f"DBA: piece {p} (row {row}, columns {col}..{col + self.bar_length - 1}) does not fit a "
                    f"{height}x{width} image; lower num_pieces, bar_length or gap, or move origin"
                )
            mask[row, col : col + self.bar_length] = True
        return mask

    def trigger(self, shape: Sequence[int], *, attacker_rank: int | None = None) -> tuple[Tensor, Tensor]:
        c, h, w = check_trigger_shape("DBA", shape)
        piece = None if attacker_rank is None else attacker_rank % self.num_pieces
        mask = self.piece_mask(h, w, piece).float().expand(c, h, w).clone()
        return mask, mask * self.value


def backdoor_test_set(x: Tensor, y: Tensor, attack: Backdoor) -> tuple[Tensor, Tensor]:
    """Build the test set for a backdoor's attack success rate.

    Keeps the samples whose true class is not ``attack.target`` and stamps them
    with the full trigger. The attack success rate is then the share of them
    the model classifies as ``attack.target``.

    Returns
    -------
    (x_triggered, y_true)
        Stamped images and their original labels (new tensors).
    """
    check_xy(x, y)
    keep = y != attack.target
    return attack.stamp(x[keep]), y[keep].clone()
