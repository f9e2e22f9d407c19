"""Fused local training: a group of clients of one architecture trained together.

Each client of a group runs exactly the loop of
:func:`common.training.train_on_batches` (SGD with momentum and weight decay as
``torch.optim.SGD``, mini-batches from its own seeded generator, optional
augmentation, normalisation, mean cross-entropy per batch), but the clients'
parameters are stacked along a leading client dimension and every local step of
the whole group is one vectorised forward/backward pass: ``torch.func.vmap`` of
``torch.func.grad_and_value`` over ``torch.func.functional_call`` of the shared
module (the "model ensembling" technique of functorch). On a GPU this replaces
hundreds of small kernels per client and step by a few large batched ones.

The fused path equals the sequential one up to floating-point rounding (batched
matrix products sum in another order): same batches, same augmentation draws,
same optimizer arithmetic. Clients whose shards differ in size take different
numbers of steps: a client that has run out of batches takes no more steps
(its parameters and momentum are left as they were), and a smaller last batch
is padded to the group's batch with zero-weight samples so that its loss is the
mean over its real samples only, as in the sequential loop.

Limits (:func:`fusable`): the model must have no buffers (BatchNorm's running
statistics change in training), no layer that mixes the samples of a batch
(BatchNorm's batch statistics would see the padding) and no random layer
(dropout's draws cannot follow the sequential generator), and every parameter
must be trainable. The loss is cross-entropy. DP-SGD (per-example clipping,
Poisson batches) and step observers (type-2 leakage capture) are not fused.
Callers fall back to the sequential loop for anything else.

On CPU the sequential loop stays the default (:func:`default_fused`). The first
fused step of a process imports ``torch._dynamo`` (``torch.func``'s autograd
needs it), a one-off cost of about two seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils.rnn import pad_sequence

from common.data import DatasetSpec, normalize
from common.training import epoch_batches, step_batches

#: Layers that mix the samples of a batch (batch statistics) or draw random numbers in training.
_UNFUSABLE_LAYERS: tuple[type[nn.Module], ...] = (_BatchNorm, nn.SyncBatchNorm, _DropoutNd, nn.RReLU)

#: Zero padding of the random crop, as :func:`common.data.augment_batch` uses by default.
_CROP_PADDING = 4


@dataclass
class FusedClientResult:
    """One client's outcome of a fused group training.

    Attributes
    ----------
    state : dict of str to Tensor
        The trained parameters by state-dict name (views into the group's
        stacked tensors, on the training device).
    momentum : dict of str to Tensor
        The SGD momentum buffers by parameter index (``str(i)`` over
        ``model.parameters()``), the form ``clients.app`` stores; only the
        parameters that have one, as ``torch.optim.SGD``'s state would.
    stats : dict of str to float
        ``train_loss`` (mean over the samples seen) and ``steps``, as
        :func:`common.training.train_on_batches` returns.
    """

    state: dict[str, Tensor]
    momentum: dict[str, Tensor]
    stats: dict[str, float]


def fusable(model: nn.Module) -> bool:
    """Whether ``model`` can be trained by :func:`train_group_fused`.

    False when the model has any buffer (BatchNorm's running statistics), a
    layer that mixes the samples of a batch (BatchNorm, even without running
    statistics), a random layer (dropout, RReLU) or a frozen parameter.
    """
    if next(model.buffers(), None) is not None:
        return False
    if any(not p.requires_grad for p in model.parameters()):
        return False
    return not any(isinstance(m, _UNFUSABLE_LAYERS) for m in model.modules())


def default_fused(device: torch.device | str) -> bool:
    """Whether to fuse a group's local training on ``device`` by default.

    True on CUDA, where one batched step over hundreds of clients replaces
    hundreds of small kernel launches; false on CPU (and any other device),
    where the sequential loop stays the default as long as the fused one is not
    measured faster there (``benchmarks/bench_fused_training.py``).
    """
    return torch.device(device).type == "cuda"


def train_group_epochs(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor]],
    momenta: Sequence[Mapping[int | str, Tensor] | None],
    xs: Sequence[Tensor],
    ys: Sequence[Tensor],
    lrs: Sequence[float],
    *,
    momentum: float,
    weight_decay: float,
    spec: DatasetSpec,
    batch_size: int,
    epochs: int,
    generators: Sequence[torch.Generator],
    local_steps: int = 0,
    channels_last: bool = False,
    chunk_size: int | None = None,
) -> list[FusedClientResult]:
    """Fused :func:`common.training.train_epochs` for a group of clients.

    Client ``k`` trains on ``(xs[k], ys[k])`` for ``epochs`` epochs (or exactly
    ``local_steps`` steps when ``> 0``), its batch order and augmentation drawn
    from ``generators[k]``; see :func:`train_group_fused` for the rest.
    """
    if local_steps > 0:
        index_batches = [step_batches(len(y), batch_size, local_steps, g) for y, g in zip(ys, generators, strict=True)]
    else:
        index_batches = [epoch_batches(len(y), batch_size, epochs, g) for y, g in zip(ys, generators, strict=True)]
    return train_group_fused(model, states, momenta, xs, ys, index_batches, lrs, momentum=momentum,
                             weight_decay=weight_decay, spec=spec, generators=generators,
                             channels_last=channels_last, chunk_size=chunk_size)  # fmt: skip


def train_group_fused(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor]],
    momenta: Sequence[Mapping[int | str, Tensor] | None],
    xs: Sequence[Tensor],
    ys: Sequence[Tensor],
    index_batches: Sequence[Iterable[Tensor]],
    lrs: Sequence[float],
    *,
    momentum: float,
    weight_decay: float,
    spec: DatasetSpec,
    generators: Sequence[torch.Generator],
    channels_last: bool = False,
    chunk_size: int | None = None,
) -> list[FusedClientResult]:
    """Train a group of clients of one architecture together, each exactly as the sequential loop would.

    Fused local training by ``torch.func.vmap`` over stacked parameters
    (``functional_call`` + ``grad_and_value``), with ``torch.optim.SGD``'s
    update (dampening 0, no Nesterov) applied to all clients at once.

    Parameters
    ----------
    model : nn.Module
        The architecture (a template: its own weights are neither read nor
        changed); must be :func:`fusable`. Put in training mode.
    states : sequence of mapping of str to Tensor
        Each client's start weights by state-dict name (usually all the same
        global model); entries other than the parameters are ignored.
    momenta : sequence of mapping or None
        Each client's momentum buffers by parameter index (int or ``str``, over
        ``model.parameters()``), as ``clients.app`` restores them into the
        optimizer; ``None`` or empty on a first participation. A parameter
        without a buffer starts one from its first step's gradient (weight
        decay included), as ``torch.optim.SGD`` does.
    xs, ys : sequence of Tensor
        Each client's float images in [0, 1] and labels, on the training device.
    index_batches : sequence of iterable of Tensor
        Each client's index batches (e.g. :func:`common.training.epoch_batches`),
        consumed lazily one step at a time, interleaved with that client's
        augmentation draws exactly as in the sequential loop. Batches may have
        any non-zero size; clients may take different numbers of steps.
    lrs : sequence of float
        Each client's learning rate (``LocalTraining.lr_at(participations)``).
    momentum, weight_decay : float
        SGD settings, shared by the group.
    spec : DatasetSpec
        Normalisation and augmentation (``spec.augment``) of the dataset.
    generators : sequence of torch.Generator
        Each client's generator, the one its index batches draw from; its
        augmentation draws from it too. One distinct generator per client.
    channels_last : bool
        Accepted for parity with :func:`common.training.train_epochs`; the
        vectorised convolutions choose their own memory format.
    chunk_size : int or None
        Clients per vectorised chunk (``vmap``'s ``chunk_size``) to bound
        memory; ``None``: the whole group at once.

    Returns
    -------
    list of FusedClientResult
        Per client, in order: trained weights, momentum buffers and
        ``{"train_loss", "steps"}``.

    Raises
    ------
    ValueError
        On an unfusable model, sequences of different lengths, a shared
        generator, a missing weight or an empty batch.
    """
    del channels_last  # a layout choice only: vmap batches the convolutions itself
    k_all = len(states)
    if not k_all:
        return []
    if not fusable(model):
        raise ValueError(f"{type(model).__name__} cannot be fused (buffers, BatchNorm, dropout or frozen parameters)")
    if {len(momenta), len(xs), len(ys), len(index_batches), len(lrs), len(generators)} != {k_all}:
        raise ValueError("states, momenta, xs, ys, index_batches, lrs and generators must have one entry per client")
    if len({id(g) for g in generators}) != k_all:
        raise ValueError("every client needs its own generator: a shared one would see its draws in another order")
    model.train()
    names = [name for name, _ in model.named_parameters()]
    for k, state in enumerate(states):
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"client {k}'s state lacks {missing}")
    device = xs[0].device
    params = {n: torch.stack([s[n].detach() for s in states]).to(device) for n in names}
    bufs, has_buf = _stack_momenta(momenta, names, params)

    x_all, y_all = torch.cat(list(xs)), torch.cat(list(ys))
    sizes = [len(y) for y in ys]
    offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
    lr_t = torch.tensor(list(lrs), dtype=next(iter(params.values())).dtype, device=device)

    def client_loss(p: dict[str, Tensor], x: Tensor, y: Tensor, valid: Tensor | None, count: Tensor | None) -> Tensor:
        logits = functional_call(model, p, (x,))
        if valid is None or count is None:  # every batch of the step has the same size: the sequential loss as such
            return nn.functional.cross_entropy(logits, y)
        return (nn.functional.cross_entropy(logits, y, reduction="none") * valid).sum() / count  # mean of the real ones

    full_step = vmap(grad_and_value(client_loss), in_dims=(0, 0, 0, None, None), chunk_size=chunk_size)
    ragged_step = vmap(grad_and_value(client_loss), in_dims=(0, 0, 0, 0, 0), chunk_size=chunk_size)

    iterators = [iter(b) for b in index_batches]
    active = list(range(k_all))
    steps = [0] * k_all
    loss_sum = torch.zeros(k_all, device=device)
    seen = [0] * k_all
    while True:
        drawn = [(k, next(iterators[k], None)) for k in active]
        active = [k for k, idx in drawn if idx is not None]
        if not active:
            break
        batch = [idx.cpu() for _, idx in drawn if idx is not None]
        lengths = [len(idx) for idx in batch]
        if min(lengths) == 0:
            raise ValueError("an empty batch (Poisson sampling under DP-SGD) cannot be fused")
        draws = [_augment_draws(n, generators[k]) for k, n in zip(active, lengths, strict=True)] if spec.augment else []
        everyone = len(active) == k_all
        act = torch.tensor(active, dtype=torch.long)
        rows = pad_sequence(batch, batch_first=True) + offsets[act].view(-1, 1)  # padding: the client's first sample
        rows = _to(rows, device)
        xb, yb = x_all[rows], y_all[rows]  # (clients, batch, ...)
        if spec.augment:
            xb = _augment_padded(xb, draws)
        xb = normalize(xb.flatten(0, 1), spec).view_as(xb)
        act_d = _to(act, device)
        p_act = params if everyone else {n: t.index_select(0, act_d) for n, t in params.items()}
        counts = _to(torch.tensor(lengths, dtype=x_all.dtype), device)
        if len(set(lengths)) == 1:
            grads, losses = full_step(p_act, xb, yb, None, None)
        else:
            valid = _to(torch.arange(rows.shape[1]).view(1, -1) < torch.tensor(lengths).view(-1, 1), device)
            grads, losses = ragged_step(p_act, xb, yb, valid.to(x_all.dtype), counts)
        lr_act = lr_t if everyone else lr_t.index_select(0, act_d)
        lr_same = lrs[active[0]] if all(lrs[k] == lrs[active[0]] for k in active) else None
        for i, n in enumerate(names):
            _sgd_step(params[n], p_act[n], grads[n], lr_act, lr_same, bufs[i], has_buf[i], act, act_d, everyone,
                      momentum=momentum, weight_decay=weight_decay)  # fmt: skip
        loss_sum.index_add_(0, act_d, losses.detach() * counts)
        for k, n in zip(active, lengths, strict=True):
            steps[k] += 1
            seen[k] += n
    totals = loss_sum.tolist()
    has_lists = [h.tolist() for h in has_buf]
    results = []
    for k in range(k_all):
        state = {n: params[n][k] for n in names}
        kept = {str(i): bufs[i][k] for i in range(len(names)) if has_lists[i][k]}
        stats = {"train_loss": totals[k] / max(seen[k], 1), "steps": float(steps[k])}
        results.append(FusedClientResult(state, kept, stats))
    return results


def _stack_momenta(
    momenta: Sequence[Mapping[int | str, Tensor] | None], names: list[str], params: dict[str, Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """Stacked momentum buffers (zeros where absent) and, per parameter, which clients have one (on the host)."""
    bufs, has = [], []
    for i, n in enumerate(names):
        ref = params[n]
        found = [None if not saved else saved.get(str(i), saved.get(i)) for saved in momenta]  # type: ignore[call-overload]
        present = torch.tensor([b is not None for b in found], dtype=torch.bool)
        if bool(present.all()):
            stacked = torch.stack([b.to(device=ref.device, dtype=ref.dtype) for b in found])  # type: ignore[union-attr]
        else:
            stacked = torch.zeros_like(ref)
            for k, buf in enumerate(found):
                if buf is not None:
                    stacked[k] = buf.to(device=ref.device, dtype=ref.dtype)
        bufs.append(stacked)
        has.append(present)
    return bufs, has


def _to(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor on ``device``, without stalling the host on CUDA (pinned, non-blocking copy)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _sgd_step(
    param_all: Tensor,
    p: Tensor,
    g: Tensor,
    lr: Tensor,
    lr_same: float | None,
    buf_all: Tensor,
    has_all: Tensor,
    act: Tensor,
    act_d: Tensor,
    everyone: bool,
    *,
    momentum: float,
    weight_decay: float,
) -> None:
    """``torch.optim.SGD``'s update (dampening 0, no Nesterov) of the active clients' slices of one stacked parameter.

    Updates ``param_all`` and ``buf_all`` (the whole group's parameter and
    momentum buffers) and ``has_all`` (which clients have a buffer, on the
    host) in place at the rows ``act`` (``act_d`` on the device); ``p`` is
    those rows of ``param_all`` (``param_all`` itself when ``everyone``) and
    ``g`` their fresh gradient, both consumed. ``lr`` holds the active clients'
    learning rates, ``lr_same`` their common value when they share one: then
    the update is the very kernel ``torch.optim.SGD`` calls. A client without a
    buffer starts it from this step's gradient (weight decay included), not
    from zero; with ``momentum == 0`` buffers are neither read nor written.
    """
    d_p = g.add_(p, alpha=weight_decay) if weight_decay != 0 else g
    if momentum != 0:
        has = has_all if everyone else has_all.index_select(0, act)
        buf = buf_all if everyone else buf_all.index_select(0, act_d)
        if bool(has.all()):
            buf.mul_(momentum).add_(d_p)
        elif not bool(has.any()):
            buf.copy_(d_p)
        else:
            shape = (-1,) + (1,) * (p.dim() - 1)
            buf = torch.where(_to(has, buf.device).view(shape), buf.mul_(momentum).add_(d_p), d_p)
            if everyone:
                buf_all.copy_(buf)
        if not everyone:
            buf_all.index_copy_(0, act_d, buf)
        has_all.index_fill_(0, act, True)
        d_p = buf
    if lr_same is not None:
        p.add_(d_p, alpha=-lr_same)
    else:
        p.addcmul_(lr.view((-1,) + (1,) * (p.dim() - 1)), d_p, value=-1.0)
    if not everyone:
        param_all.index_copy_(0, act_d, p)


def _augment_draws(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """One batch's random flips and crop offsets, drawn as :func:`common.data.augment_batch` draws them."""
    flip = torch.rand(n, generator=generator, device="cpu") < 0.5
    dy = torch.randint(0, 2 * _CROP_PADDING + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * _CROP_PADDING + 1, (n,), generator=generator)
    return flip, dy, dx


def _augment_padded(x: Tensor, draws: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """Random flip and random crop of a padded ``(clients, batch, C, H, W)`` batch with per-sample draws."""
    k, b, c, h, w = x.shape
    flip, dy, dx = (_to(pad_sequence([d[j] for d in draws], batch_first=True), x.device) for j in range(3))
    flat = x.flatten(0, 1)
    n = flat.shape[0]
    flat = torch.where(flip.reshape(n, 1, 1, 1), flat.flip(-1), flat)
    padded = nn.functional.pad(flat, (_CROP_PADDING,) * 4)
    rows = (dy.reshape(n, 1) + torch.arange(h, device=x.device).view(1, h)).view(n, 1, h, 1)
    cols = (dx.reshape(n, 1) + torch.arange(w, device=x.device).view(1, w)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols].view(k, b, c, h, w)
