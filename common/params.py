"""Model state <-> flat update vectors, with dtype and shape checks.

Aggregation rules work on one flat ``float32`` vector per client that holds
every floating-point tensor of the state dict (parameters and BatchNorm running
statistics, as in Tolpegin et al.'s plain mean over whole models). Integer
buffers (``num_batches_tracked``) are not averaged: they travel apart and are
combined with a median, then cast back to their own dtype.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from strategies.rules.base import Layout


class UpdateRejected(ValueError):
    """A client's model does not fit the global model (names, shapes, dtypes) or is not finite."""


@dataclass(frozen=True)
class ModelCodec:
    """Flattens state dicts of one architecture, and checks that replies fit it.

    Build it once from the global model's state dict with :meth:`of`.
    """

    layout: Layout
    float_dtypes: tuple[torch.dtype, ...]
    int_names: tuple[str, ...]
    int_shapes: tuple[torch.Size, ...]
    int_dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, state: dict[str, Tensor]) -> ModelCodec:
        names, shapes, offsets, dtypes = [], [], [], []
        inames, ishapes, idtypes = [], [], []
        offset = 0
        for name, t in state.items():
            if torch.is_floating_point(t):
                names.append(name)
                shapes.append(t.shape)
                offsets.append(offset)
                dtypes.append(t.dtype)
                offset += t.numel()
            else:
                inames.append(name)
                ishapes.append(t.shape)
                idtypes.append(t.dtype)
        return cls(
            Layout(tuple(names), tuple(shapes), tuple(offsets)),
            tuple(dtypes),
            tuple(inames),
            tuple(ishapes),
            tuple(idtypes),
        )

    def check(self, state: dict[str, Tensor]) -> None:
        """Raise :class:`UpdateRejected` unless ``state`` has exactly our tensors, shapes and dtypes."""
        expected = set(self.layout.names) | set(self.int_names)
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise UpdateRejected(f"tensor names differ from the global model: missing {missing}, extra {extra}")
        for name, shape, dtype in zip(
            self.layout.names + self.int_names,
            self.layout.shapes + self.int_shapes,
            self.float_dtypes + self.int_dtypes,
            strict=True,
        ):
            t = state[name]
            if t.shape != shape:
                raise UpdateRejected(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
            if t.dtype != dtype:
                raise UpdateRejected(f"{name}: dtype {t.dtype}, expected {dtype}")

    def to_vector(self, state: dict[str, Tensor]) -> Tensor:
        """Concatenate the floating-point tensors into one ``float32`` vector."""
        return torch.cat([state[n].detach().reshape(-1).to(torch.float32) for n in self.layout.names])

    def ints(self, state: dict[str, Tensor]) -> list[Tensor]:
        """The integer buffers, in order."""
        return [state[n] for n in self.int_names]

    def to_state(self, vector: Tensor, ints: list[Tensor]) -> OrderedDict[str, Tensor]:
        """Inverse of :meth:`to_vector`: a state dict with every tensor in its own dtype."""
        if vector.numel() != self.layout.size:
            raise UpdateRejected(f"vector has {vector.numel()} values, the model {self.layout.size}")
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, shape, offset, dtype in zip(
            self.layout.names, self.layout.shapes, self.layout.offsets, self.float_dtypes, strict=True
        ):
            out[name] = vector[offset : offset + shape.numel()].reshape(shape).to(dtype).clone()
        for name, t in zip(self.int_names, ints, strict=True):
            out[name] = t.clone()
        return out

    @staticmethod
    def combine_ints(per_client: list[list[Tensor]]) -> list[Tensor]:
        """Element-wise median (mean of the two middles for an even count, rounded) of each integer buffer."""
        if not per_client:
            return []
        combined = []
        for tensors in zip(*per_client, strict=True):
            stacked = torch.stack([t.to(torch.float64) for t in tensors])
            combined.append(stacked.quantile(0.5, dim=0).round().to(tensors[0].dtype))
        return combined


def finite_or_raise(vector: Tensor) -> None:
    """Raise :class:`UpdateRejected` if ``vector`` holds NaN or Inf."""
    if not bool(torch.isfinite(vector).all()):
        bad = int((~torch.isfinite(vector)).sum())
        raise UpdateRejected(f"{bad} non-finite values (NaN/Inf)")
