"""Update poisoning: sign flip, Gaussian attack, boosting / model replacement."""

from __future__ import annotations

import pytest
import torch

from attacks.update import GaussianNoise, Scaling, SignFlip, model_replacement_boost


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sign_flip() -> None:
    u = torch.tensor([1.0, -2.0, 0.5, 0.0])
    assert SignFlip()(u, generator=_gen()).tolist() == [-1.0, 2.0, -0.5, 0.0]
    assert SignFlip(scale=3.0)(u, generator=_gen()).tolist() == [-3.0, 6.0, -1.5, 0.0]
    assert u.tolist() == [1.0, -2.0, 0.5, 0.0]


def test_gaussian_replaces_the_update_with_centred_noise_of_the_given_std() -> None:
    d = 40_000
    u = torch.full((d,), 5.0)
    out = GaussianNoise(std=0.3)(u, generator=_gen(1))
    assert out.shape == u.shape and out.dtype == u.dtype
    assert abs(float(out.mean())) < 4 * 0.3 / d**0.5
    assert abs(float(out.std()) / 0.3 - 1) < 0.02
    # Replacement ignores the honest update: same generator state, same output.
    assert torch.equal(out, GaussianNoise(std=0.3)(torch.zeros(d), generator=_gen(1)))


def test_gaussian_additive_adds_the_same_noise() -> None:
    u = torch.linspace(-1, 1, 100)
    noise = GaussianNoise(std=0.5)(u, generator=_gen(2))
    added = GaussianNoise(std=0.5, additive=True)(u, generator=_gen(2))
    assert torch.allclose(added, u + noise)


def test_scaling_without_a_binding_bound_is_boost_times_update() -> None:
    u = torch.tensor([3.0, 4.0], dtype=torch.float64)  # norm 5
    assert torch.equal(Scaling(boost=10.0)(u, generator=_gen()), 10.0 * u)
    assert torch.equal(Scaling(boost=10.0, norm_bound=60.0)(u, generator=_gen()), 10.0 * u)  # 50 <= 60


def test_scaling_hits_the_norm_bound_exactly_when_it_binds() -> None:
    u = torch.tensor([3.0, 4.0, 12.0], dtype=torch.float64)  # norm 13
    out = Scaling(boost=10.0, norm_bound=2.6)(u, generator=_gen())
    assert float(torch.linalg.vector_norm(out)) == pytest.approx(2.6, rel=1e-12)
    assert torch.allclose(out, u * 0.2, rtol=1e-12)  # same direction: 2.6 / 13 = 0.2


def test_model_replacement_boost_is_n_over_eta() -> None:
    assert model_replacement_boost(10) == 10.0
    assert model_replacement_boost(10, server_lr=0.5) == 20.0


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: SignFlip(scale=0.0), "scale=0.0"),
        (lambda: GaussianNoise(std=-1.0), r"std=-1\.0"),
        (lambda: GaussianNoise(std=1.0, additive="yes"), "additive='yes'"),
        (lambda: Scaling(boost=float("inf")), "boost=inf"),
        (lambda: Scaling(boost=2.0, norm_bound=0.0), "norm_bound=0.0"),
        (lambda: model_replacement_boost(0), "num_clients_per_round=0"),
        (lambda: model_replacement_boost(10, server_lr=-1.0), r"server_lr=-1\.0"),
    ],
)
def test_update_attack_config_errors(factory, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        factory()


def test_updates_must_be_flat() -> None:
    with pytest.raises(ValueError, match="flat"):
        SignFlip()(torch.zeros(2, 3), generator=_gen())
