"""Where each named model tensor lives inside a flat update vector.

Ground floor: both the model codec (``common.params``) and the aggregation
rules (``strategies.rules``) describe flat vectors with :class:`Layout`, so it
lives here and imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """Where each named model tensor lives inside the flat update vector.

    Attributes
    ----------
    names : tuple of str
        State-dict keys of the floating-point tensors, in vector order.
    shapes : tuple of torch.Size
        Shape of each tensor.
    offsets : tuple of int
        Start index of each tensor in the flat vector (``offsets[i] + numel``
        is its end).
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]

    def slice_of(self, name: str) -> slice:
        """Return the slice of the flat vector that holds tensor ``name``."""
        try:
            i = self.names.index(name)
        except ValueError:
            raise KeyError(f"no tensor named {name!r} in the model; known: {list(self.names)}") from None
        return slice(self.offsets[i], self.offsets[i] + self.shapes[i].numel())

    @property
    def size(self) -> int:
        """Total length of the flat vector."""
        if not self.names:
            return 0
        return self.offsets[-1] + self.shapes[-1].numel()
