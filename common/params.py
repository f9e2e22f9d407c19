"""Model state <-> flat update vectors of the trainable parameters; buffers apart.

Aggregation rules and update-poisoning attacks work on one flat ``float32``
vector per client that holds the model's **trainable parameters** only. Every
other entry of the state dict (BatchNorm ``running_mean`` / ``running_var`` /
``num_batches_tracked``, frozen parameters) is a **buffer**: buffers travel
apart, are checked (finite; running variances >= 0) and are combined by their
coordinate-wise median over the replies the rule kept, in their own dtype.

Why: on Fashion-MNIST, BatchNorm statistics are 75-80 % of an honest round-1
update's squared norm, so with them in the vector, norm bounds, clipping,
cosines and Krum distances mostly compare data statistics; and an attack that
scales the whole vector can push a running variance below zero, a finite model
whose every output is NaN. (Tolpegin et al.'s code takes a plain mean over the
whole models; for honest replies the median of the statistics differs from their
mean by far less than their round-to-round change.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.layout import Layout


class UpdateRejected(ValueError):
    """A client's model does not fit the global model (names, shapes, dtypes) or is not valid."""


@dataclass(frozen=True)
class ModelCodec:
    """Flattens state dicts of one architecture, and checks that replies fit it.

    Build it once with :meth:`of_model` (or :meth:`of` from a state dict and the
    names of the trainable parameters).

    Attributes
    ----------
    layout : Layout
        Where each trainable parameter lives in the flat vector.
    param_dtypes : tuple of torch.dtype
        Each parameter's own dtype (the vector is float32).
    buffer_names, buffer_shapes, buffer_dtypes : tuple
        Every other state-dict entry, in state-dict order.
    """

    layout: Layout
    param_dtypes: tuple[torch.dtype, ...]
    buffer_names: tuple[str, ...]
    buffer_shapes: tuple[torch.Size, ...]
    buffer_dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, state: dict[str, Tensor], trainable: Iterable[str]) -> ModelCodec:
        """The codec of ``state``, whose floating-point entries named in ``trainable`` form the vector."""
        trainable = set(trainable)
        unknown = trainable - set(state)
        if unknown:
            raise ValueError(f"trainable names not in the state dict: {sorted(unknown)}")
        names, shapes, offsets, dtypes = [], [], [], []
        bnames, bshapes, bdtypes = [], [], []
        offset = 0
        for name, t in state.items():
            if name in trainable and torch.is_floating_point(t):
                names.append(name)
                shapes.append(t.shape)
                offsets.append(offset)
                dtypes.append(t.dtype)
                offset += t.numel()
            else:
                bnames.append(name)
                bshapes.append(t.shape)
                bdtypes.append(t.dtype)
        return cls(
            Layout(tuple(names), tuple(shapes), tuple(offsets)),
            tuple(dtypes),
            tuple(bnames),
            tuple(bshapes),
            tuple(bdtypes),
        )

    @classmethod
    def of_model(cls, model: nn.Module) -> ModelCodec:
        """The codec of ``model``: its parameters with ``requires_grad`` form the vector."""
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        return cls.of(model.state_dict(), trainable)

    def check(self, state: dict[str, Tensor]) -> None:
        """Raise :class:`UpdateRejected` unless ``state`` has exactly our tensors, shapes and dtypes."""
        expected = set(self.layout.names) | set(self.buffer_names)
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise UpdateRejected(f"tensor names differ from the global model: missing {missing}, extra {extra}")
        for name, shape, dtype in zip(
            self.layout.names + self.buffer_names,
            self.layout.shapes + self.buffer_shapes,
            self.param_dtypes + self.buffer_dtypes,
            strict=True,
        ):
            t = state[name]
            if t.shape != shape:
                raise UpdateRejected(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
            if t.dtype != dtype:
                raise UpdateRejected(f"{name}: dtype {t.dtype}, expected {dtype}")

    def to_vector(self, state: dict[str, Tensor]) -> Tensor:
        """Concatenate the trainable parameters into one ``float32`` vector."""
        return torch.cat([state[n].detach().reshape(-1).to(torch.float32) for n in self.layout.names])

    def buffers(self, state: dict[str, Tensor]) -> list[Tensor]:
        """The buffers, in order, in their own dtype."""
        return [state[n] for n in self.buffer_names]

    def check_buffers(self, buffers: list[Tensor]) -> None:
        """Raise :class:`UpdateRejected` for a non-finite buffer or a negative running variance."""
        for name, t in zip(self.buffer_names, buffers, strict=True):
            if not torch.is_floating_point(t):
                if bool((t < 0).any()) and name.endswith("num_batches_tracked"):
                    raise UpdateRejected(f"{name}: negative count {int(t.min())}")
                continue
            if not bool(torch.isfinite(t).all()):
                raise UpdateRejected(f"{name}: {int((~torch.isfinite(t)).sum())} non-finite values (NaN/Inf)")
            if name.endswith("running_var") and bool((t < 0).any()):
                raise UpdateRejected(f"{name}: negative variance {float(t.min()):.4g} (a variance is >= 0)")

    def to_state(self, vector: Tensor, buffers: list[Tensor]) -> OrderedDict[str, Tensor]:
        """Inverse of :meth:`to_vector` + :meth:`buffers`: a state dict (parameters, then buffers) in their dtypes."""
        if vector.numel() != self.layout.size:
            raise UpdateRejected(f"vector has {vector.numel()} values, the model {self.layout.size}")
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, shape, offset, dtype in zip(
            self.layout.names, self.layout.shapes, self.layout.offsets, self.param_dtypes, strict=True
        ):
            out[name] = vector[offset : offset + shape.numel()].reshape(shape).to(dtype).clone()
        for name, t in zip(self.buffer_names, buffers, strict=True):
            out[name] = t.clone()
        return out

    @staticmethod
    def combine_buffers(per_client: list[list[Tensor]]) -> list[Tensor]:
        """Element-wise median of each buffer over clients, in the buffer's own dtype.

        An even count takes the mean of the two middle values (``torch.quantile(0.5)``,
        as the ``median`` rule); integer buffers are rounded back to their dtype.
        """
        if not per_client:
            return []
        combined = []
        for tensors in zip(*per_client, strict=True):
            stacked = torch.stack([t.to(torch.float64) for t in tensors])
            middle = stacked.quantile(0.5, dim=0)
            dtype = tensors[0].dtype
            combined.append(middle.to(dtype) if torch.is_floating_point(tensors[0]) else middle.round().to(dtype))
        return combined


def finite_or_raise(vector: Tensor) -> None:
    """Raise :class:`UpdateRejected` if ``vector`` holds NaN or Inf.

    The sum is checked first: it is finite only if every value is (a NaN or an
    Inf makes it NaN or Inf), and one reduction is about 40x cheaper than an
    element-wise test. Only a non-finite sum (a bad value, or finite values
    whose sum overflows) is looked at element by element, which decides.
    """
    if bool(torch.isfinite(vector.sum())):
        return
    if not bool(torch.isfinite(vector).all()):
        bad = int((~torch.isfinite(vector)).sum())
        raise UpdateRejected(f"{bad} non-finite values (NaN/Inf)")
