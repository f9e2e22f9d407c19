"""Gradient inversion: reconstruct a client's training images from a shared gradient.

Three optimisation-based attacks, each given the model and the gradient it
produced (``target_grads``, one tensor per trainable parameter, in the order of
``model.parameters()`` with ``requires_grad``):

* :func:`dlg` - Deep Leakage from Gradients (Zhu et al., NeurIPS 2019): dummy
  images and dummy soft labels, L-BFGS on the squared L2 gradient distance;
* :func:`idlg` - improved DLG (Zhao et al., arXiv 2001.02610, 2020): the label
  read off the last layer's weight gradient, then DLG on the images only;
* :func:`inverting_gradients` - Inverting Gradients (Geiping et al., NeurIPS
  2020): cosine gradient distance plus total variation, signed Adam, box
  constraint, step decay and restarts.

Images are optimised in [0, 1] pixel space and pass through ``preprocess``
(e.g. the dataset normalisation) before the model. The model's parameters,
``.grad`` fields and train/eval mode are never changed; all randomness comes
from the ``generator`` argument. The attacks enable autograd themselves, so
they may be called inside ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Preprocess = Callable[[Tensor], Tensor]

__all__ = [
    "METHODS",
    "Reconstruction",
    "dlg",
    "gradients_of",
    "identity",
    "idlg",
    "idlg_label",
    "infer_labels",
    "inverting_gradients",
    "output_weight_index",
    "reconstruct",
    "total_variation",
]


def identity(x: Tensor) -> Tensor:
    """The default ``preprocess``: images reach the model as they are."""
    return x


@dataclass(frozen=True)
class Reconstruction:
    """The result of one gradient-inversion attack.

    Attributes
    ----------
    images : Tensor
        ``(k, C, H, W)`` float images clamped to [0, 1], on the CPU.
    labels : Tensor
        ``(k,)`` long: the labels the attack used (given or inferred) or, for
        DLG, the argmax of its dummy label logits.
    loss : float
        Gradient-matching loss of the kept reconstruction (DLG / iDLG: squared
        L2 distance, at the kept iterate before clamping; Inverting Gradients:
        1 - cosine similarity, without the total-variation term) of the best
        restart.
    iterations : int
        Optimiser steps taken (of the kept restart).
    """

    images: Tensor
    labels: Tensor
    loss: float
    iterations: int


# ------------------------------------------------------------------ gradients


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _model_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    first = next(iter(model.parameters()))
    return first.device, first.dtype


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy; ``labels`` are class indices ``(k,)`` or probabilities ``(k, classes)``."""
    if labels.ndim == 2:
        return torch.mean(torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1))
    return F.cross_entropy(logits, labels)


def _dummy_gradients(
    model: nn.Module, images01: Tensor, labels: Tensor, preprocess: Preprocess, *, create_graph: bool
) -> tuple[Tensor, ...]:
    loss = _cross_entropy(model(preprocess(images01)), labels)
    return torch.autograd.grad(loss, _trainable(model), create_graph=create_graph)


@torch.enable_grad()
def gradients_of(
    model: nn.Module, images01: Tensor, labels: Tensor, *, preprocess: Preprocess = identity
) -> list[Tensor]:
    """Gradients of the mean cross-entropy w.r.t. the model's trainable parameters.

    What a client at batch size ``k`` would share in FedSGD: one gradient per
    trainable parameter, in the order of ``model.parameters()`` with
    ``requires_grad``, detached. ``param.grad`` is left untouched.

    Parameters
    ----------
    model : nn.Module
        The model, in the mode (train / eval) it is given in.
    images01 : Tensor
        ``(k, C, H, W)`` images in [0, 1].
    labels : Tensor
        ``(k,)`` class indices.
    preprocess : callable
        Applied to the images before the model (e.g. the dataset normalisation).
    """
    device, dtype = _model_device(model)
    images = images01.to(device=device, dtype=dtype)
    grads = _dummy_gradients(model, images, labels.to(device), preprocess, create_graph=False)
    return [g.detach() for g in grads]


def output_weight_index(model: nn.Module) -> int:
    """Index, in the trainable-parameter list, of the weight of the model's last ``nn.Linear``."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear output layer")
    for i, p in enumerate(_trainable(model)):
        if p is last.weight:
            return i
    raise ValueError(f"the output layer weight of {type(model).__name__} is not trainable")


def idlg_label(output_weight_grad: Tensor) -> int:
    """The label of a single sample from the output layer's weight gradient (Zhao et al. 2020, iDLG).

    For softmax cross-entropy, the gradient of row ``c`` of the last linear
    layer's weight is ``(p_c - 1[c = y]) * a`` with ``a`` the layer's input.
    When ``a`` is non-negative (after a sigmoid or ReLU) only the true class's
    row is non-positive, so the label is the row with the smallest sum.

    Parameters
    ----------
    output_weight_grad : Tensor
        ``(num_classes, features)`` gradient of the last linear layer's weight.
    """
    return int(_row_sums(output_weight_grad).argmin())


def infer_labels(output_weight_grad: Tensor, k: int) -> Tensor:
    """``k`` labels from the output layer's weight gradient.

    ``k = 1`` is exact iDLG (:func:`idlg_label`). For ``k > 1`` this is a
    heuristic in the spirit of Yin et al. (CVPR 2021, GradInversion): the ``k``
    rows with the most negative sums, most negative first. Up to the number of
    classes it returns distinct labels, so it cannot recover a batch in which a
    label repeats, and a row can also go negative through the batch mean of
    mixed samples; beyond it (a batch larger than the number of classes, e.g.
    a DP-SGD step of expected size 32) it cycles through that order.

    Returns
    -------
    Tensor
        ``(k,)`` long, on the CPU.
    """
    sums = _row_sums(output_weight_grad)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k == 1:
        return torch.tensor([idlg_label(output_weight_grad)], dtype=torch.long)
    order = torch.argsort(sums, stable=True).to(torch.long)
    return order.repeat(-(-k // order.numel()))[:k]


def _row_sums(output_weight_grad: Tensor) -> Tensor:
    if output_weight_grad.ndim != 2:
        raise ValueError(f"expected a (classes, features) weight gradient, got shape {tuple(output_weight_grad.shape)}")
    return output_weight_grad.detach().to("cpu", torch.float64).sum(dim=1)


# ------------------------------------------------------------ shared helpers


def _targets(model: nn.Module, target_grads: Sequence[Tensor]) -> list[Tensor]:
    params = _trainable(model)
    if len(target_grads) != len(params):
        raise ValueError(f"got {len(target_grads)} target gradients for {len(params)} trainable parameters")
    for i, (g, p) in enumerate(zip(target_grads, params, strict=True)):
        if g.shape != p.shape:
            raise ValueError(f"target gradient {i} has shape {tuple(g.shape)}, parameter has {tuple(p.shape)}")
    return [g.detach().to(device=p.device, dtype=p.dtype) for g, p in zip(target_grads, params, strict=True)]


def _generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fresh one seeded 0: the global RNG is never used."""
    return torch.Generator().manual_seed(0) if generator is None else generator


INITS = ("randn", "rand")


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; known: {list(INITS)}")


def _random(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype, init: str = "randn"
) -> Tensor:
    """A leaf tensor to optimise: N(0, 1) (``"randn"``) or U(0, 1) (``"rand"``) drawn from ``generator``."""
    draw = torch.randn if init == "randn" else torch.rand
    x = draw(shape, generator=generator, device=generator.device, dtype=dtype)
    return x.to(device).requires_grad_(True)


def _l2_distance(grads: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """Sum over layers of the squared L2 distance (DLG's matching loss)."""
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, targets, strict=True))


def _cosine_distance(grads: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """1 - cosine similarity of all layers' gradients concatenated into one vector."""
    dot = sum((g * t).sum() for g, t in zip(grads, targets, strict=True))
    norm_g = sum(g.pow(2).sum() for g in grads).sqrt()
    norm_t = sum(t.pow(2).sum() for t in targets).sqrt()
    return 1 - dot / (norm_g * norm_t).clamp_min(1e-30)


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic, mean-based total variation of a ``(k, C, H, W)`` batch.

    ``mean |x[..., i, j+1] - x[..., i, j]| + mean |x[..., i+1, j] - x[..., i, j]|``
    over valid neighbour pairs, as in Geiping et al.'s ``inversefed`` code; the
    breaching library's ``TotalVariation`` (scale 0.2 in its Inverting
    Gradients config) computes the same means with zero padding at the border
    and an ``eps`` of 1e-8.
    """
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def _check_common(image_shape: Sequence[int], num_images: int, iterations: int, lr: float) -> tuple[int, ...]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    return shape


def _label_tensor(labels: Tensor | Sequence[int] | int, num_images: int) -> Tensor:
    out = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    if out.numel() != num_images:
        raise ValueError(f"got {out.numel()} labels for num_images={num_images}")
    return out


def _inferred_labels(model: nn.Module, targets: Sequence[Tensor], num_images: int) -> Tensor:
    return infer_labels(targets[output_weight_index(model)], num_images)


# ---------------------------------------------------------------- DLG / iDLG


@dataclass
class _Best:
    """The lowest finite loss seen so far and the iterate that produced it."""

    loss: float = math.inf
    images: Tensor | None = None
    label_logits: Tensor | None = None

    def offer(self, loss: float, images: Tensor, label_logits: Tensor | None) -> None:
        if math.isfinite(loss) and loss < self.loss:
            self.loss = loss
            self.images = images.detach().clone()
            self.label_logits = None if label_logits is None else label_logits.detach().clone()


def _lbfgs_match(
    model: nn.Module,
    targets: list[Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    learn_labels: bool,
    preprocess: Preprocess,
    iterations: int,
    lr: float,
    line_search: str | None,
) -> tuple[_Best, int]:
    """L-BFGS on the squared L2 gradient distance; returns the best finite iterate and the steps taken.

    ``labels`` are logits to learn (softmax-ed, DLG) when ``learn_labels`` and
    fixed class indices (iDLG) otherwise. Each of the ``iterations`` steps is
    one ``LBFGS.step`` (up to 20 function evaluations, torch's default), as in
    the DLG and iDLG reference code. A non-finite loss or image gradient
    stops the run; the best finite iterate seen at any evaluation is kept.
    """
    variables = [images, labels] if learn_labels else [images]
    optimizer = torch.optim.LBFGS(variables, lr=lr, line_search_fn=line_search)
    best, diverged = _Best(), False

    def closure() -> Tensor:
        nonlocal diverged
        soft = F.softmax(labels, dim=-1) if learn_labels else labels
        loss = _l2_distance(_dummy_gradients(model, images, soft, preprocess, create_graph=True), targets)
        grads = torch.autograd.grad(loss, variables)
        finite = math.isfinite(loss.detach().item()) and all(bool(torch.isfinite(g).all()) for g in grads)
        if finite:
            best.offer(loss.detach().item(), images, labels if learn_labels else None)
        diverged = diverged or not finite
        for v, g in zip(variables, grads, strict=True):
            v.grad = g if finite else torch.zeros_like(v)  # a zero gradient ends the L-BFGS step at once
        return loss.detach()

    steps = 0
    while steps < iterations and not diverged:
        optimizer.step(closure)
        steps += 1
    if best.images is None:  # no step taken, or the very first loss was not finite: keep the start
        best.loss = _final_l2(model, targets, images, labels, learn_labels, preprocess)
        best.images = images.detach().clone()
        best.label_logits = labels.detach().clone() if learn_labels else None
    return best, steps


def _final_l2(
    model: nn.Module, targets: list[Tensor], images: Tensor, labels: Tensor, learn_labels: bool, preprocess: Preprocess
) -> float:
    soft = F.softmax(labels, dim=-1) if learn_labels else labels
    grads = _dummy_gradients(model, images, soft.detach(), preprocess, create_graph=False)
    return float(_l2_distance(grads, targets))


@torch.enable_grad()
def dlg(
    model: nn.Module,
    target_grads: Sequence[Tensor],
    *,
    image_shape: Sequence[int],
    num_classes: int,
    num_images: int = 1,
    preprocess: Preprocess = identity,
    iterations: int = 300,
    lr: float = 1.0,
    generator: torch.Generator | None = None,
    init: str = "randn",
    line_search: str | None = None,
) -> Reconstruction:
    """Deep Leakage from Gradients (Zhu et al., NeurIPS 2019).

    Dummy images (``init``, N(0, 1) by default, in pixel space before
    ``preprocess``) and dummy label logits (N(0, 1)) are drawn; the soft label
    is the logits' softmax. L-BFGS (``lr``) minimises the sum over layers of the squared L2 distance between
    the dummy gradient (soft-label cross-entropy, batch mean) and the target.
    The reconstruction kept is the iterate with the lowest finite loss; a
    non-finite loss stops the optimisation.

    Parameters
    ----------
    model : nn.Module
        The model that produced ``target_grads`` (not modified).
    target_grads : sequence of Tensor
        One gradient per trainable parameter (see :func:`gradients_of`); may be
        noisy, the attack only minimises the distance to it.
    image_shape : (C, H, W)
        Shape of one image.
    num_classes : int
        Width of the dummy label.
    num_images : int
        Batch size ``k`` to reconstruct.
    preprocess : callable
        Applied to the [0, 1] images before the model.
    iterations : int
        L-BFGS steps (each up to 20 function evaluations).
    lr : float
        L-BFGS learning rate (1 in the paper).
    generator : torch.Generator, optional
        Source of the random start (on the generator's device); ``None`` uses a
        fresh generator seeded 0, never the global RNG.
    init : {"randn", "rand"}
        Start of the dummy images in pixel space: N(0, 1) as in the paper, or
        U(0, 1) (breaching's ``"rand"``). With the MNIST normalisation, 28x28
        images and an untrained sigmoid LeNet, ``"rand"`` converged far more
        often (iDLG: 16/16 in 30 L-BFGS steps against 4/16 in 60).
    line_search : {None, "strong_wolfe"}
        L-BFGS line search. ``None`` (the paper's code) can jump into a
        saturated region where the gradient vanishes and stall there;
        ``"strong_wolfe"`` avoids that at up to 25 evaluations per step.

    Returns
    -------
    Reconstruction
        Labels are the argmax of the dummy label logits.
    """
    shape = _check_common(image_shape, num_images, iterations, lr)
    _check_init(init)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    targets = _targets(model, target_grads)
    device, dtype = _model_device(model)
    generator = _generator(generator)
    images = _random((num_images, *shape), generator, device, dtype, init)
    logits = _random((num_images, num_classes), generator, device, dtype)
    best, steps = _lbfgs_match(
        model,
        targets,
        images,
        logits,
        learn_labels=True,
        preprocess=preprocess,
        iterations=iterations,
        lr=lr,
        line_search=line_search,
    )
    label_logits = best.label_logits if best.label_logits is not None else logits.detach()
    return _result(best.images, label_logits.argmax(dim=-1), best.loss, steps)


@torch.enable_grad()
def idlg(
    model: nn.Module,
    target_grads: Sequence[Tensor],
    *,
    image_shape: Sequence[int],
    num_images: int = 1,
    label: Tensor | Sequence[int] | int | None = None,
    preprocess: Preprocess = identity,
    iterations: int = 300,
    lr: float = 1.0,
    generator: torch.Generator | None = None,
    init: str = "randn",
    line_search: str | None = None,
) -> Reconstruction:
    """Improved DLG (Zhao et al. 2020, iDLG).

    The label is read off the gradient of the last ``nn.Linear`` weight with
    :func:`infer_labels` (exact for one image, a heuristic for several) unless
    ``label`` gives it; then DLG (:func:`dlg`'s L-BFGS and squared L2
    distance) optimises the dummy images only, with hard labels.

    Parameters
    ----------
    label : int, sequence of int or Tensor, optional
        The ``num_images`` labels to use instead of inferring them.

    Other parameters are as in :func:`dlg`.
    """
    shape = _check_common(image_shape, num_images, iterations, lr)
    _check_init(init)
    targets = _targets(model, target_grads)
    device, dtype = _model_device(model)
    labels = _inferred_labels(model, targets, num_images) if label is None else _label_tensor(label, num_images)
    images = _random((num_images, *shape), _generator(generator), device, dtype, init)
    fixed = labels.to(device)
    best, steps = _lbfgs_match(
        model,
        targets,
        images,
        fixed,
        learn_labels=False,
        preprocess=preprocess,
        iterations=iterations,
        lr=lr,
        line_search=line_search,
    )
    return _result(best.images, labels, best.loss, steps)


def _result(images: Tensor, labels: Tensor, loss: float, iterations: int) -> Reconstruction:
    return Reconstruction(
        images=images.detach().clamp(0.0, 1.0).cpu(),
        labels=labels.detach().to("cpu", torch.long),
        loss=float(loss),
        iterations=int(iterations),
    )


# ------------------------------------------------------- Inverting Gradients


def _milestones(iterations: int) -> list[int]:
    return sorted({int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)})


def _ig_restart(
    model: nn.Module,
    targets: list[Tensor],
    labels: Tensor,
    shape: tuple[int, ...],
    *,
    preprocess: Preprocess,
    iterations: int,
    lr: float,
    tv_weight: float,
    generator: torch.Generator,
    init: str,
) -> tuple[Tensor, int]:
    """One Inverting Gradients trial from a fresh random start; returns the final images and the steps taken.

    A non-finite objective or image gradient ends the trial at the last finite iterate.
    """
    device, dtype = _model_device(model)
    images = _random((labels.numel(), *shape), generator, device, dtype, init)
    optimizer = torch.optim.Adam([images], lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=_milestones(iterations), gamma=0.1)
    last_finite = images.detach().clone()
    for step in range(iterations):
        grads = _dummy_gradients(model, images, labels, preprocess, create_graph=True)
        loss = _cosine_distance(grads, targets) + tv_weight * total_variation(images)
        (grad,) = torch.autograd.grad(loss, [images])
        if not bool(torch.isfinite(loss)) or not bool(torch.isfinite(grad).all()):
            return last_finite, step
        last_finite = images.detach().clone()
        images.grad = grad.sign()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            images.clamp_(0.0, 1.0)
    return images.detach(), iterations


def _cosine_loss_of(
    model: nn.Module, targets: list[Tensor], images: Tensor, labels: Tensor, preprocess: Preprocess
) -> float:
    grads = _dummy_gradients(model, images, labels, preprocess, create_graph=False)
    return float(_cosine_distance(grads, targets))


@torch.enable_grad()
def inverting_gradients(
    model: nn.Module,
    target_grads: Sequence[Tensor],
    *,
    image_shape: Sequence[int],
    num_images: int = 1,
    labels: Tensor | Sequence[int] | int | None = None,
    preprocess: Preprocess = identity,
    iterations: int = 2000,
    lr: float = 0.1,
    tv_weight: float = 0.2,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    init: str = "randn",
) -> Reconstruction:
    """Inverting Gradients (Geiping et al., NeurIPS 2020), as configured in the breaching library.

    Minimises ``1 - cos(g(x), g*) + tv_weight * TV(x)`` where the cosine
    similarity is taken over all layers' gradients concatenated into one
    vector and TV is :func:`total_variation` (mean-based) of the [0, 1]
    images (breaching applies it to the normalised images, so its weight acts
    1/std times stronger there). Adam (``lr``) steps
    on the sign of the image gradient; the images are clamped to [0, 1] after
    every step (box constraint); the step size decays x0.1 at 3/8, 5/8 and 7/8
    of ``iterations``. Each of the ``restarts`` trials starts from a fresh
    draw (N(0, 1) by default, unclamped as in breaching: the box applies from
    the first step on); the trial whose final images have the lowest ``1 - cos``
    (without TV) is kept. A non-finite objective ends a trial at its last
    finite iterate.

    Parameters
    ----------
    labels : int, sequence of int or Tensor, optional
        The ``num_images`` labels; inferred with :func:`infer_labels` from the
        last linear layer's weight gradient when not given.
    iterations : int
        Adam steps per restart (24,000 in breaching; far fewer suffice on a
        28x28 LeNet).
    lr : float
        Adam step size.
    tv_weight : float
        Weight of the total-variation prior (0.2 in breaching). On MNIST digits
        (sharp strokes) 0.01-0.05 gave better reconstructions here.
    restarts : int
        Independent trials.

    Other parameters are as in :func:`dlg`.
    """
    shape = _check_common(image_shape, num_images, iterations, lr)
    _check_init(init)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if not (math.isfinite(tv_weight) and tv_weight >= 0):
        raise ValueError(f"tv_weight must be a finite number >= 0, got {tv_weight}")
    targets = _targets(model, target_grads)
    device, _ = _model_device(model)
    chosen = _inferred_labels(model, targets, num_images) if labels is None else _label_tensor(labels, num_images)
    on_device = chosen.to(device)
    generator = _generator(generator)
    best_loss, best_images, best_steps = math.inf, None, 0
    for _ in range(restarts):
        images, steps = _ig_restart(
            model, targets, on_device, shape,
            preprocess=preprocess, iterations=iterations, lr=lr, tv_weight=tv_weight, generator=generator, init=init,
        )  # fmt: skip
        loss = _cosine_loss_of(model, targets, images, on_device, preprocess)
        if best_images is None or loss < best_loss:
            best_loss, best_images, best_steps = loss, images, steps
    return _result(best_images, chosen, best_loss, best_steps)


# ------------------------------------------------------------------ dispatch

METHODS: dict[str, Callable[..., Reconstruction]] = {
    "dlg": dlg,
    "idlg": idlg,
    "inverting_gradients": inverting_gradients,
}


def reconstruct(method: str, model: nn.Module, target_grads: Sequence[Tensor], **kwargs: object) -> Reconstruction:
    """Run the attack named ``method`` (``"dlg"``, ``"idlg"`` or ``"inverting_gradients"``) with ``kwargs``."""
    try:
        attack = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown gradient inversion method {method!r}; known methods: {sorted(METHODS)}") from None
    return attack(model, target_grads, **kwargs)
