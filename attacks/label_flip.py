"""Label flipping: a malicious client's training set -> the same images, some labels changed.

Data poisoning (``kind = "data"``): each attack is configured once with
keyword-only hyper-parameters and called as
``attack(x, y, *, attacker_rank, generator) -> (x, y)`` on the client's data:
``x`` a float ``(N, C, H, W)`` tensor in pixel space ``[0, 1]``, ``y`` its
``(N,)`` integer labels, ``attacker_rank`` the client's index among the
malicious clients (unused here) and ``generator`` the only source of
randomness. Attacks return new tensors and never modify their inputs.

Targeted flipping follows Tolpegin et al., "Data Poisoning Attacks Against
Federated Learning Systems" (ESORICS 2020).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from attacks._checks import check_class, check_rank, check_share, check_xy, choose, is_int, share_count


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

    kind: ClassVar[str] = "data"

    def __init__(self, *, source: int, target: int, share: float = 1.0) -> None:
        self.source = check_class("TargetedLabelFlip", "source", source)
        self.target = check_class("TargetedLabelFlip", "target", target)
        if self.source == self.target:
            raise ValueError(
                f"TargetedLabelFlip: source and target must differ, got source={source}, target={target}; "
                "pick two different classes (e.g. source=5, target=3 for CIFAR-10 dog -> cat)"
            )
        self.share = check_share("TargetedLabelFlip", share)

    def __call__(
        self, x: Tensor, y: Tensor, *, attacker_rank: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        check_xy(x, y)
        check_rank(attacker_rank)
        sources = torch.nonzero(y == self.source, as_tuple=False).flatten()
        flipped = choose(sources, share_count(self.share, sources.numel()), generator)
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

    kind: ClassVar[str] = "data"

    def __init__(
        self,
        *,
        num_classes: int,
        mode: Literal["random", "permutation"] = "random",
        permutation: Sequence[int] | None = None,
    ) -> None:
        if not is_int(num_classes) or num_classes < 2:
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
            if not all(is_int(p) for p in perm) or sorted(perm) != list(range(num_classes)):
                raise ValueError(
                    "UntargetedLabelFlip: permutation must list each class "
                    f"0..{num_classes - 1} exactly once, got {perm}"
                )
        self.permutation: tuple[int, ...] = tuple(int(p) for p in perm)

    def __call__(
        self, x: Tensor, y: Tensor, *, attacker_rank: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        check_xy(x, y)
        check_rank(attacker_rank)
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
