"""DP-SGD with Opacus around the plain loop: models it can train, clipping, noise, Poisson batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.data import spec_of
from common.dp_training import DpSgd, dp_compatible, sampling_plan, train_private
from common.models import FashionMnistCnn, Mlp
from common.privacy import NoiseSchedule

SPEC = spec_of("fashion_mnist")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder:
    """A step observer that keeps every step's batch size and applied gradient norm."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.norms: list[float] = []
        self.grads: list[torch.Tensor] = []

    def wants(self, step: int, batch_size: int) -> bool:
        return True

    def record(self, step, params, grads, images, labels) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sizes.append(len(labels))
        self.norms.append(float(flat.norm()))
        self.grads.append(flat)


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(model, dp: DpSgd, *, n=60, batch_size=4, sigma=0.0, lr=0.1, observer=None, seed=0):
    x, y = data(n, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return train_private(
        model, optimizer, x, y, dp=dp, sigma=sigma, spec=SPEC, batch_size=batch_size, epochs=1,
        generator=torch.Generator().manual_seed(seed), noise_generator=torch.Generator().manual_seed(seed + 1),
        observer=observer,
    )  # fmt: skip


def test_batchnorm_becomes_groupnorm_and_inplace_activations_are_made_out_of_place():
    torch.manual_seed(0)
    model = dp_compatible(FashionMnistCnn())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(16, 16), (32, 32)]  # GroupNorm(gcd(32, C), C)
    trainable = [name for name, p in FashionMnistCnn().named_parameters()]
    assert [name for name, p in model.named_parameters()] == trainable  # same keys on server and clients
    assert not any(k.endswith("running_var") for k in model.state_dict())
    residual = dp_compatible(nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True)))
    assert isinstance(residual[1], nn.GroupNorm) and residual[2].inplace is False  # as in torchvision's ResNet


def test_every_applied_gradient_is_clipped_to_c_times_the_batch_over_the_expected_batch():
    c, b = 0.05, 4
    recorder = Recorder()
    stats = run(Mlp(), DpSgd(schedule=NoiseSchedule(start=0.0), max_grad_norm=c), batch_size=b, observer=recorder)
    q, steps = sampling_plan(60, b, 1)
    assert (q, steps) == (pytest.approx(4 / 60), 15) and stats["steps"] == 15 and len(recorder.sizes) == 15
    assert len(set(recorder.sizes)) > 1  # Poisson batches: their sizes vary
    for size, norm in zip(recorder.sizes, recorder.norms, strict=True):
        assert norm <= c * size / b + 1e-6
    # gradients of random data are far above 0.05: the busiest steps hit the bound
    assert max(n / max(s, 1) for s, n in zip(recorder.sizes, recorder.norms, strict=True)) == pytest.approx(c / b)


def test_the_noise_on_the_averaged_gradient_has_std_sigma_c_over_b_and_empty_batches_still_step():
    c, b, sigma = 1e-6, 2, 3.0  # C so small that the applied gradient is the noise alone
    recorder = Recorder()
    model = Mlp(hidden=(64,))
    before = [p.detach().clone() for p in model.parameters()]
    run(model, DpSgd(schedule=NoiseSchedule(start=sigma), max_grad_norm=c), n=40, batch_size=b, sigma=sigma,
        observer=recorder)  # fmt: skip
    noise = torch.cat(recorder.grads)
    assert float(noise.std()) == pytest.approx(sigma * c / b, rel=0.02)
    assert 0 in recorder.sizes  # an empty Poisson batch was drawn, and it took a (noisy) step
    empty = recorder.sizes.index(0)
    assert float(recorder.grads[empty].norm()) > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_dynamic_clipping_follows_the_per_example_norms_within_its_bounds():
    dynamic = DpSgd(schedule=NoiseSchedule(start=0.0), clipping="dynamic", dynamic_min=0.1, dynamic_max=8.0)
    stats = run(Mlp(), dynamic)
    assert 0.1 < stats["clip_norm"] < 8.0 and stats["clip_norm"] != 1.0
    pinned = DpSgd(schedule=NoiseSchedule(start=0.0), clipping="dynamic", dynamic_min=0.02, dynamic_max=0.02)
    recorder = Recorder()
    stats = run(Mlp(), pinned, observer=recorder, batch_size=4)
    assert stats["clip_norm"] == pytest.approx(0.02)
    assert all(n <= 0.02 * s / 4 + 1e-6 for s, n in zip(recorder.sizes, recorder.norms, strict=True))


@pytest.mark.parametrize(
    ("dp", "message"),
    [
        (DpSgd(schedule=NoiseSchedule(), max_grad_norm=0.0), "max_grad_norm"),
        (DpSgd(schedule=NoiseSchedule(), delta=1.0), "delta must be in"),
        (DpSgd(schedule=NoiseSchedule(start=-0.5)), "must be >= 0"),
        (DpSgd(schedule=NoiseSchedule(), clipping="adaptive"), "clipping="),
        (DpSgd(schedule=NoiseSchedule(), epsilon_budget=0.0), "epsilon_budget"),
    ],
)
def test_impossible_settings_are_refused(dp, message):
    with pytest.raises(ValueError, match=message):
        dp.check()
