"""Client-side DP-SGD with Opacus around the plain local-training loop.

DP-SGD (Abadi et al., CCS 2016), as Wei, Liu et al. (arXiv 2409.13004) use it
per client ("Fed-CDP"): every local step clips each example's gradient to L2
norm ``C``, sums, adds Gaussian noise of standard deviation ``sigma * C`` and
divides by the expected batch size. Batches are Poisson samples (each example
in each batch with probability ``q = batch_size / n``, Opacus' sampler, about
``1 / q`` batches per epoch, empty ones included and counted), so the RDP
accountant's sampled-Gaussian-mechanism analysis holds. The loop itself is
:func:`common.training.train_on_batches`: this module only wraps the model in
Opacus' grad-sample module and the optimizer in its ``DPOptimizer``.

Optional dynamic clipping (Wei, Liu et al.): each step's ``C`` is the max (or
mean) of the current per-example gradient norms, clamped to ``[lo, hi]``. That
bound is itself computed from private data and is not privatized: the reported
epsilon accounts for the noise multiplier only.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.data import DatasetSpec
from common.privacy import NoiseSchedule
from common.training import StepObserver, train_on_batches

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")
CLIPPING = ("fixed", "dynamic")


@dataclass(frozen=True)
class DpSgd:
    """A client's DP-SGD settings (``dp=opacus``).

    Attributes
    ----------
    schedule : NoiseSchedule
        The noise multiplier of each round.
    max_grad_norm : float
        Per-example clipping bound ``C`` (the fixed one, or the start of dynamic clipping).
    delta : float
        The delta of the reported epsilon.
    clipping : {"fixed", "dynamic"}
        ``dynamic``: ``C`` per step from the current per-example norms.
    dynamic_statistic : {"max", "mean"}
        Which statistic of the per-example norms dynamic clipping uses.
    dynamic_min, dynamic_max : float
        Clamp of the dynamic ``C``.
    epsilon_budget : float or None
        A client whose cumulative epsilon would exceed it stops training.
    grad_sample_mode : {"hooks", "functorch", "ew"}
        Opacus' per-example gradient engine.
    """

    schedule: NoiseSchedule
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    clipping: str = "fixed"
    dynamic_statistic: str = "max"
    dynamic_min: float = 0.1
    dynamic_max: float = 8.0
    epsilon_budget: float | None = None
    grad_sample_mode: str = "hooks"

    def check(self) -> None:
        """Raise ``ValueError`` naming the key and the fix."""
        self.schedule.check()
        if not math.isfinite(self.max_grad_norm) or self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm (C) must be > 0, got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.clipping not in CLIPPING:
            raise ValueError(f"clipping={self.clipping!r}: use one of {list(CLIPPING)}")
        if self.dynamic_statistic not in ("max", "mean"):
            raise ValueError(f"dynamic_statistic={self.dynamic_statistic!r}: use max or mean")
        if not 0 < self.dynamic_min <= self.dynamic_max:
            raise ValueError(f"need 0 < dynamic_min <= dynamic_max, got {self.dynamic_min}, {self.dynamic_max}")
        if self.epsilon_budget is not None and self.epsilon_budget <= 0:
            raise ValueError(f"epsilon_budget must be > 0 or null, got {self.epsilon_budget}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode={self.grad_sample_mode!r}: use one of {list(GRAD_SAMPLE_MODES)}")


def sampling_plan(num_examples: int, batch_size: int, epochs: int, local_steps: int = 0) -> tuple[float, int]:
    """Poisson sample rate ``q = min(1, batch_size / n)`` and the round's steps.

    ``epochs`` epochs of ``int(1 / q)`` steps each, or exactly ``local_steps`` when it is positive.
    """
    q = min(1.0, batch_size / num_examples)
    return q, local_steps if local_steps > 0 else epochs * int(1 / q)


def dp_compatible(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The model Opacus can train: BatchNorm swapped for GroupNorm, in-place activations made out-of-place.

    Applied to the server's and the clients' models alike, so their state-dict
    keys agree. With ``input_shape`` (one example's shape) it also takes one
    trial per-example backward pass on a copy, which catches what static
    validation cannot (in-place ops on a hooked layer's output, no trainable
    parameter). Raises ``ValueError`` saying what Opacus refuses.
    """
    from opacus.validators import ModuleValidator  # Opacus costs 1.5 s to import: only where DP-SGD is used

    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
    for module in model.modules():
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"{type(model).__name__} cannot be trained with Opacus: {[str(e) for e in errors]}")
    if input_shape is not None:
        _trial_step(model, input_shape)
    return model


def _trial_step(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """One per-example backward pass of a copy on two random examples; every parameter must get its samples."""
    from opacus.grad_sample.utils import wrap_model

    trial = copy.deepcopy(model)
    if not any(p.requires_grad for p in trial.parameters()):
        raise ValueError(f"{type(model).__name__} has no trainable parameter for DP-SGD to train")
    wrapped = wrap_model(trial, "hooks", batch_first=True, loss_reduction="mean")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            out = wrapped(torch.rand(2, *input_shape))
            nn.functional.cross_entropy(out, torch.zeros(2, dtype=torch.long)).backward()
        missing = [n for n, p in trial.named_parameters() if p.requires_grad and p.grad_sample is None]
        if missing:
            raise ValueError(f"Opacus computed no per-example gradient for {missing}")
    except Exception as err:
        raise ValueError(f"{type(model).__name__} cannot be trained with Opacus (a trial DP-SGD step failed: "
                         f"{type(err).__name__}: {err})") from None  # fmt: skip
    finally:
        wrapped._close()


@functools.cache
def _dynamic_clipping() -> type:
    """Opacus' ``DPOptimizer`` with a clipping bound set each step from the per-example gradient norms.

    Made on first use, so that importing this module does not import Opacus.
    """
    from opacus.optimizers import DPOptimizer

    class DynamicClipping(DPOptimizer):
        def __init__(self, *args, statistic: str, bounds: tuple[float, float], **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.statistic, self.bounds = statistic, bounds
            self.bounds_used: list[float] = []

        def pre_step(self, closure=None):
            samples = [p.grad_sample for p in self.params if getattr(p, "grad_sample", None) is not None]
            if samples and samples[0].shape[0] > 0:
                norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=1) for g in samples], dim=1).norm(2, dim=1)
                value = float(norms.max() if self.statistic == "max" else norms.mean())
                self.max_grad_norm = min(max(value, self.bounds[0]), self.bounds[1])
            self.bounds_used.append(self.max_grad_norm)
            return super().pre_step(closure)

    return DynamicClipping


def poisson_batches(num_examples: int, sample_rate: float, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """``steps`` Poisson index batches (Opacus' uniform-with-replacement sampler; some may be empty)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(
        num_samples=num_examples, sample_rate=sample_rate, generator=generator, steps=steps
    )
    for indices in sampler:
        yield torch.as_tensor(indices, dtype=torch.long)


def train_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    dp: DpSgd,
    sigma: float,
    spec: DatasetSpec,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    noise_generator: torch.Generator,
    local_steps: int = 0,
    channels_last: bool = False,
    observer: StepObserver | None = None,
) -> dict[str, float]:
    """DP-SGD on ``(x, y)`` for ``epochs`` epochs of Poisson batches; trains ``model`` in place.

    ``optimizer`` is the plain optimizer over ``model``'s parameters (its
    momentum state is kept by the caller); ``noise_generator`` must live on the
    parameters' device. Returns the plain loop's statistics plus ``sigma``,
    ``sample_rate``, ``steps`` and the mean clipping bound ``clip_norm``.
    """
    from opacus.grad_sample.utils import wrap_model
    from opacus.optimizers import DPOptimizer

    q, steps = sampling_plan(len(y), batch_size, epochs, local_steps)
    wrapped = wrap_model(model, dp.grad_sample_mode, batch_first=True, loss_reduction="mean")
    settings = {"noise_multiplier": sigma, "max_grad_norm": dp.max_grad_norm, "expected_batch_size": batch_size,
                "generator": noise_generator}  # fmt: skip
    if dp.clipping == "dynamic":
        bounds = (dp.dynamic_min, dp.dynamic_max)
        private = _dynamic_clipping()(optimizer, statistic=dp.dynamic_statistic, bounds=bounds, **settings)
    else:
        private = DPOptimizer(optimizer, **settings)
    with warnings.catch_warnings():
        # Opacus' hooks fire on module outputs when the input needs no gradient (the first layer): expected here
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            stats = train_on_batches(
                wrapped, private, x, y, poisson_batches(len(y), q, steps, generator),
                spec=spec, generator=generator, channels_last=channels_last, observer=observer,
            )  # fmt: skip
        finally:
            if hasattr(wrapped, "_close"):
                wrapped._close()
    used = getattr(private, "bounds_used", None)
    clip = sum(used) / len(used) if used else dp.max_grad_norm
    return {**stats, "sigma": float(sigma), "sample_rate": q, "steps": float(steps), "clip_norm": float(clip)}
