"""Data poisoning: a malicious client's training set -> a poisoned training set.

Every attack is a small callable configured once with keyword-only
hyper-parameters and called as ``attack(x, y, *, attacker_rank, generator)``
on the client's data:

* ``x``: ``(N, C, H, W)`` float tensor in pixel space ``[0, 1]`` (before any
  normalisation), ``y``: ``(N,)`` integer labels;
* ``attacker_rank``: this client's index among the malicious clients
  (``0 .. m-1``), used by attacks that split work between attackers (DBA);
* ``generator``: the client's ``torch.Generator``, the only source of randomness.

Attacks return new tensors and never modify their inputs. Shares are turned
into counts by rounding to the nearest integer with halves rounded up
(``floor(share * count + 0.5)``): half of 7 samples is 4.

Label flipping follows Tolpegin et al. (ESORICS 2020); backdoors are all-to-one
(every triggered input should be classified as ``target``): BadNets (Gu et al.
2017), Blended (Chen et al. 2017) and DBA (Xie et al., ICLR 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from attacks.threat import _is_int

# ----------------------------------------------------------------- helpers


def _count(share: float, total: int) -> int:
    """Nearest integer to ``share * total``, halves rounded up."""
    return min(total, math.floor(share * total + 0.5))


def _check_share(owner: str, share: float) -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise ValueError(f"{owner}: share must be in [0, 1], got share={share!r}")
    return float(share)


def _check_class(owner: str, name: str, value: int) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{owner}: {name} must be a non-negative class index, got {name}={value!r}")
    return int(value)


def _check_xy(x: Tensor, y: Tensor) -> None:
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


def _check_rank(attacker_rank: int) -> None:
    if not _is_int(attacker_rank) or attacker_rank < 0:
        raise ValueError(f"attacker_rank must be a non-negative integer, got attacker_rank={attacker_rank!r}")


def _choose(candidates: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` entries of the index tensor ``candidates``, uniformly without replacement."""
    if count >= candidates.numel():
        return candidates
    perm = torch.randperm(candidates.numel(), generator=generator, device=generator.device)
    return candidates[perm[:count].to(candidates.device)]


# ----------------------------------------------------------- label flipping


class TargetedLabelFlip:
    """Targeted label flipping (Tolpegin et al., ESORICS 2020).

    Samples of class ``source`` are relabelled as ``target``; the images and
    every other label stay as they are. The paper flips all of them
    (``share=1``, the default); with ``share < 1`` a uniformly random subset of
    ``floor(share * n_source + 0.5)`` source samples is flipped.

    Parameters
    ----------
    source, target : int
        Class indices, different from each other.
    share : float
        Share of the source-class samples to relabel, in ``[0, 1]``.
    """

    def __init__(self, *, source: int, target: int, share: float = 1.0) -> None:
        self.source = _check_class("TargetedLabelFlip", "source", source)
        self.target = _check_class("TargetedLabelFlip", "target", target)
        if self.source == self.target:
            raise ValueError(
                f"TargetedLabelFlip: source and target must differ, got source={source}, target={target}; "
                "pick two different classes (e.g. source=5, target=3 for CIFAR-10 dog -> cat)"
            )
        self.share = _check_share("TargetedLabelFlip", share)

    def __call__(
        self, x: Tensor, y: Tensor, *, attacker_rank: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        _check_xy(x, y)
        _check_rank(attacker_rank)
        sources = torch.nonzero(y == self.source, as_tuple=False).flatten()
        flipped = _choose(sources, _count(self.share, sources.numel()), generator)
        y_new = y.clone()
        y_new[flipped] = self.target
        return x.clone(), y_new


class UntargetedLabelFlip:
    """Untargeted label flipping on every sample of the client.

    Two variants:

    * ``mode="random"``: each label is replaced by a class drawn uniformly from
      the ``num_classes - 1`` *other* classes (``y' = (y + U{1..C-1}) mod C``);
    * ``mode="permutation"``: a fixed mapping ``y' = permutation[y]``; the
      default is the reversal ``y -> num_classes - 1 - y`` used by e.g.
      Fang et al. (2020) and Shejwalkar et al.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C`` (>= 2).
    mode : {"random", "permutation"}
    permutation : sequence of int, optional
        Only with ``mode="permutation"``: a permutation of ``0 .. C-1``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        mode: Literal["random", "permutation"] = "random",
        permutation: Sequence[int] | None = None,
    ) -> None:
        if not _is_int(num_classes) or num_classes < 2:
            raise ValueError(f"UntargetedLabelFlip: num_classes must be an integer >= 2, got {num_classes!r}")
        if mode not in ("random", "permutation"):
            raise ValueError(f"UntargetedLabelFlip: mode must be 'random' or 'permutation', got mode={mode!r}")
        self.num_classes = int(num_classes)
        self.mode = mode
        if permutation is not None and mode != "permutation":
            raise ValueError(
                f"UntargetedLabelFlip: permutation={list(permutation)} is only used with mode='permutation', "
                f"got mode={mode!r}; drop it or set mode='permutation'"
            )
        if permutation is None:
            perm = list(range(num_classes - 1, -1, -1))
        else:
            perm = list(permutation)
            if sorted(perm) != list(range(num_classes)) or not all(_is_int(p) for p in perm):
                raise ValueError(
                    "UntargetedLabelFlip: permutation must list each class "
                    f"0..{num_classes - 1} exactly once, got {perm}"
                )
        self.permutation: tuple[int, ...] = tuple(int(p) for p in perm)

    def __call__(
        self, x: Tensor, y: Tensor, *, attacker_rank: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        _check_xy(x, y)
        _check_rank(attacker_rank)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"UntargetedLabelFlip: labels must be in [0, {self.num_classes}), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )
        if self.mode == "random":
            shift = torch.randint(1, self.num_classes, y.shape, generator=generator, device=generator.device).to(
                device=y.device, dtype=y.dtype
            )
            y_new = (y + shift) % self.num_classes
        else:
            mapping = torch.tensor(self.permutation, dtype=y.dtype, device=y.device)
            y_new = mapping[y]
        return x.clone(), y_new


# ----------------------------------------------------------------- backdoors


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

    def __init__(self, *, target: int, share: float) -> None:
        self.target = _check_class(type(self).__name__, "target", target)
        self.share = _check_share(type(self).__name__, share)

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
        _check_xy(x, y)
        _check_rank(attacker_rank)
        everyone = torch.arange(x.shape[0], device=x.device)
        chosen = _choose(everyone, _count(self.share, x.shape[0]), generator)
        mask, pattern = self.trigger(tuple(x.shape[1:]), attacker_rank=attacker_rank)
        x_new = x.clone()
        x_new[chosen] = self._apply(x[chosen], mask, pattern)
        y_new = y.clone()
        y_new[chosen] = self.target
        return x_new, y_new


def _check_shape(owner: str, shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or not all(_is_int(s) and s >= 1 for s in shape):
        raise ValueError(f"{owner}: trigger shape must be (C, H, W), got {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    return c, h, w


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
        if not _is_int(size) or size < 1:
            raise ValueError(f"BadNets: size must be a positive number of pixels, got size={size!r}")
        if position not in _POSITIONS:
            raise ValueError(f"BadNets: position must be one of {_POSITIONS}, got position={position!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"BadNets: value must be a pixel value in [0, 1], got value={value!r}")
        if pattern not in ("square", "checker"):
            raise ValueError(f"BadNets: pattern must be 'square' or 'checker', got pattern={pattern!r}")
        if not _is_int(margin) or margin < 0:
            raise ValueError(f"BadNets: margin must be a non-negative number of pixels, got margin={margin!r}")
        self.size, self.position, self.value = int(size), position, float(value)
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
        c, h, w = _check_shape("BadNets", shape)
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
        if not _is_int(pattern_seed) or pattern_seed < 0:
            raise ValueError(f"Blended: pattern_seed must be a non-negative integer, got {pattern_seed!r}")
        self.alpha, self.pattern_seed = float(alpha), int(pattern_seed)

    def trigger(self, shape: Sequence[int], *, attacker_rank: int | None = None) -> tuple[Tensor, Tensor]:
        c, h, w = _check_shape("Blended", shape)
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
            if not _is_int(v) or v < low:
                raise ValueError(f"DBA: {name} must be an integer >= {low}, got {name}={v!r}")
        origin = tuple(origin)
        if len(origin) != 2 or not all(_is_int(o) and o >= 0 for o in origin):
            raise ValueError(f"DBA: origin must be two non-negative integers (row, column), got {origin!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"DBA: value must be a pixel value in [0, 1], got value={value!r}")
        self.num_pieces, self.bar_length, self.gap = int(num_pieces), int(bar_length), int(gap)
        self.pieces_per_row = int(pieces_per_row)
        self.origin = (int(origin[0]), int(origin[1]))
        self.value = float(value)

    def piece_mask(self, height: int, width: int, piece: int | None = None) -> Tensor:
        """Boolean ``(H, W)`` mask of local piece ``piece`` (``None``: the global trigger)."""
        pieces = range(self.num_pieces) if piece is None else [piece]
        if piece is not None and not (_is_int(piece) and 0 <= piece < self.num_pieces):
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
        c, h, w = _check_shape("DBA", shape)
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
    _check_xy(x, y)
    keep = y != attack.target
    return attack.stamp(x[keep]), y[keep].clone()
