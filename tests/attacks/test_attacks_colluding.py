"""Omniscient colluding attacks: ALIE, IPM, Min-Max, Min-Sum, Fang (Krum, trimmed mean)."""

from __future__ import annotations

import math

import pytest
import torch

from attacks._colluding import pairwise_sq
from attacks.colluding_search import MinMax, MinSum
from attacks.colluding_stats import ALIE, IPM
from attacks.fang import FangKrum, FangTrimmedMean, _krum_choice
from strategies.rules.krum import krum


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _honest(h: int = 10, d: int = 30, seed: int = 0, spread: float = 0.5) -> torch.Tensor:
    """Honest deltas scattered (``spread``) around a common direction of unit-scale coordinates (float64)."""
    g = _gen(seed)
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    return direction + spread * torch.randn(h, d, generator=g, dtype=torch.float64)


def _icdf(p: float) -> float:
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p, dtype=torch.float64)))


# ---------------------------------------------------------------------- ALIE


def test_alie_matches_the_formula_by_hand() -> None:
    honest = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 2.0, 5.0], [2.0, 6.0, 3.0]], dtype=torch.float64)
    # n = 4 + 2 = 6, s = floor(6/2 + 1) - 2 = 2, z = Phi^-1((6 - 2)/6)
    z = _icdf(4 / 6)
    mean = torch.tensor([2.0, 3.0, 3.0], dtype=torch.float64)
    std = torch.tensor([math.sqrt(0.5), math.sqrt(3.0), math.sqrt(2.0)], dtype=torch.float64)  # divide by h
    out = ALIE()(honest, 2, generator=_gen())
    assert out.shape == (2, 3)
    assert torch.allclose(out, (mean - z * std).expand(2, 3), atol=1e-9)


def test_alie_z_max_of_the_paper() -> None:
    # n = 50, m = 10: s = 26 - 10 = 16, z = Phi^-1(34/50) = 0.4677
    assert ALIE.z_max(50, 10) == pytest.approx(_icdf(34 / 50), abs=1e-9)
    assert ALIE.z_max(50, 10) == pytest.approx(0.4677, abs=1e-4)


def test_alie_fixed_z_and_majority_error() -> None:
    honest = _honest(h=5, d=4)
    out = ALIE(z=1.5)(honest, 3, generator=_gen())
    expected = honest.mean(0) - 1.5 * honest.std(0, correction=0)
    assert torch.allclose(out, expected.expand(3, 4))
    # n = 4 + 6 = 10: s = floor(10/2 + 1) - 6 = 0, the quantile is undefined
    with pytest.raises(ValueError, match=r"n=10 clients and m=6 malicious, s = floor\(n/2 \+ 1\) - m = 0"):
        ALIE()(honest[:4], 6, generator=_gen())
    assert ALIE(z=1.0)(honest[:4], 6, generator=_gen()).shape == (6, 4)  # a fixed z still works


# ----------------------------------------------------------------------- IPM


def test_ipm_is_minus_epsilon_times_the_honest_mean() -> None:
    honest = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    out = IPM(epsilon=0.5)(honest, 3, generator=_gen())
    assert out.tolist() == [[-1.0, -0.5]] * 3


# ------------------------------------------------------- Min-Max / Min-Sum


def _sq_to_each(honest: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((honest - v) ** 2).sum(dim=1)


def _pairwise(honest: torch.Tensor) -> torch.Tensor:
    return ((honest[:, None, :] - honest[None, :, :]) ** 2).sum(dim=2)


@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_min_max_satisfies_its_constraint_with_the_largest_gamma(perturbation: str) -> None:
    honest = _honest()
    attack = MinMax(perturbation=perturbation)
    gamma = attack.search_gamma(honest)
    p = attack.perturbation_vector(honest)
    out = attack(honest, 4, generator=_gen())
    assert out.shape == (4, 30) and torch.equal(out[0], out[3])
    assert gamma > 0
    assert torch.allclose(out[0], honest.mean(0) + gamma * p)
    bound = float(_pairwise(honest).max())
    assert float(_sq_to_each(honest, out[0]).max()) <= bound * (1 + 1e-12)
    # maximal: a slightly larger gamma breaks the constraint
    assert float(_sq_to_each(honest, honest.mean(0) + (gamma + 1e-3) * p).max()) > bound
    if perturbation != "std":  # -unit(mean) and -sign(mean) point against the honest mean
        assert float((out[0] - honest.mean(0)) @ honest.mean(0)) < 0


@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_min_sum_satisfies_its_constraint_with_the_largest_gamma(perturbation: str) -> None:
    honest = _honest(seed=1)
    attack = MinSum(perturbation=perturbation)
    gamma = attack.search_gamma(honest)
    p = attack.perturbation_vector(honest)
    out = attack(honest, 2, generator=_gen())
    assert gamma > 0
    bound = float(_pairwise(honest).sum(dim=1).max())
    assert float(_sq_to_each(honest, out[0]).sum()) <= bound * (1 + 1e-12)
    assert float(_sq_to_each(honest, honest.mean(0) + (gamma + 1e-3) * p).sum()) > bound


def test_min_sum_code_variant_is_stricter_than_the_paper() -> None:
    honest = _honest(seed=2)
    paper, code = MinSum().search_gamma(honest), MinSum(bound="min").search_gamma(honest)
    assert 0 < code < paper
    mal = honest.mean(0) + code * MinSum().perturbation_vector(honest)
    assert float(_sq_to_each(honest, mal).sum()) <= float(_pairwise(honest).sum(dim=1).min()) * (1 + 1e-12)


def test_perturbation_vectors() -> None:
    honest = torch.tensor([[1.0, -2.0, 0.0], [3.0, -2.0, 0.0]], dtype=torch.float64)
    mean = torch.tensor([2.0, -2.0, 0.0], dtype=torch.float64)
    assert torch.allclose(MinMax().perturbation_vector(honest), -mean / mean.norm())
    assert MinMax(perturbation="sign").perturbation_vector(honest).tolist() == [-1.0, 1.0, 0.0]
    assert torch.allclose(
        MinMax(perturbation="std").perturbation_vector(honest),
        torch.tensor([-math.sqrt(2.0), 0.0, 0.0], dtype=torch.float64),  # unbiased std
    )


# ---------------------------------------------------------------------- Fang


def test_fang_trimmed_mean_by_hand() -> None:
    honest = torch.tensor([[1.0, -1.0, 2.0, -3.0, 1.0], [3.0, -2.0, -1.0, -1.0, -1.0]])
    # s = sign(mean) = [+, -, +, -, 0]; min = [1, -2, -1, -3, -1]; max = [3, -1, 2, -1, 1]
    exact = FangTrimmedMean(b=1.0)(honest, 2, generator=_gen())
    assert exact.tolist() == [[1.0, -1.0, -1.0, -1.0, 0.0]] * 2
    out = FangTrimmedMean()(honest, 500, generator=_gen(3))
    # intervals: [w_min/2, w_min], [w_max, w_max/2], [2 w_min, w_min], [w_max, w_max/2], {0}
    low = torch.tensor([0.5, -1.0, -2.0, -1.0, 0.0])
    high = torch.tensor([1.0, -0.5, -1.0, -0.5, 0.0])
    assert torch.all(out >= low) and torch.all(out <= high)
    assert not torch.equal(out[0], out[1])  # independent draws per attacker
    spread = out.max(dim=0).values - out.min(dim=0).values
    assert torch.all(spread[:4] > 0.4)  # fills its interval (widths 0.5, 0.5, 1, 0.5)


def test_fang_trimmed_mean_moves_against_the_honest_direction() -> None:
    honest = _honest(h=8, d=50, spread=3.0)
    out = FangTrimmedMean()(honest, 3, generator=_gen(1))
    s = torch.sign(honest.mean(0))
    # beyond the honest extreme on the side opposite to each coordinate's direction
    assert torch.all(out[:, s > 0] <= honest.min(0).values[s > 0])
    assert torch.all(out[:, s < 0] >= honest.max(0).values[s < 0])
    assert torch.all((out - honest.mean(0)) @ s < 0)
    assert torch.all(out @ honest.mean(0) < 0)  # noisy deltas: even the raw direction is reversed
    # the generator is the only source of randomness
    assert torch.equal(out, FangTrimmedMean()(honest, 3, generator=_gen(1)))


def _krum_pick(updates: torch.Tensor, f: int) -> int:
    n = updates.shape[0]
    scores = []
    for i in range(n):
        d = sorted(float(((updates[i] - updates[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return min(range(n), key=lambda i: (scores[i], i))


def test_fang_krum_gets_a_malicious_update_selected_against_the_honest_direction() -> None:
    honest = _honest(h=12, d=40, seed=0, spread=3.0)
    m = 3
    attack = FangKrum()
    lam, success = attack.search_lambda(honest, m)
    out = attack(honest, m, generator=_gen())
    assert success and lam > 0
    assert torch.allclose(out, (-lam * torch.sign(honest.mean(0))).expand(m, 40))
    assert _krum_pick(torch.cat([out, honest]), f=m) < m
    assert torch.all(out @ honest.mean(0) < 0)


def test_fang_krum_lambda_starts_at_the_paper_bound() -> None:
    honest = _honest(h=7, d=5, seed=3, spread=3.0)
    h, c, d = 7, 2, 5
    dist = torch.cdist(honest, honest)
    near = [sorted(dist[i, j].item() for j in range(h) if j != i)[: h - 2] for i in range(h)]
    max_norm = honest.norm(dim=1).max().item()
    bound = min(sum(r) for r in near) / ((h - c - 1) * math.sqrt(d)) + max_norm / math.sqrt(d)
    lam, success = FangKrum().search_lambda(honest, c)
    assert success
    assert any(lam == pytest.approx(bound / 2**k, rel=1e-9) for k in range(40))


def test_fang_krum_falls_back_to_the_smallest_lambda_when_krum_resists() -> None:
    # Honest deltas far from the origin and tightly packed: no -lambda * s gets picked.
    honest = _honest(h=12, d=40, seed=0, spread=0.5)
    lam, success = FangKrum(tau=1e-4).search_lambda(honest, 3)
    assert not success and 1e-4 < lam <= 2e-4


def test_fang_krum_needs_enough_clients() -> None:
    with pytest.raises(ValueError, match=r"n > 2f \+ 2, got n=8 \(h=5 honest \+ c=3 malicious\), f=3"):
        FangKrum()(_honest(h=5), 3, generator=_gen())


@pytest.mark.parametrize(("n", "f", "copies", "seed"), [(7, 2, 1, 0), (10, 3, 3, 1), (12, 1, 4, 2), (20, 6, 6, 3)])
def test_fang_krum_choice_is_the_rule_s_krum(n: int, f: int, copies: int, seed: int) -> None:
    # Identical rows first (like the malicious copies), then distinct ones. Picking any of the
    # identical rows is the same choice (the rule's Gram-trick distances between them need not be 0).
    rows = _honest(h=n, d=15, seed=seed, spread=2.0)
    rows[:copies] = rows[0]
    assert torch.equal(rows[_krum_choice(pairwise_sq(rows), f)], rows[int(krum(rows, f=f).selected[0])])


@pytest.mark.parametrize(("spread", "tau", "expected"), [(3.0, 1e-5, True), (0.5, 1e-4, False), (1.5, 1e-5, None)])
def test_fang_krum_success_means_the_rule_s_krum_picks_a_malicious_update(
    spread: float, tau: float, expected: bool | None
) -> None:
    honest = _honest(h=12, d=40, seed=0, spread=spread)
    c = 3
    lam, success = FangKrum(tau=tau).search_lambda(honest, c)
    if expected is not None:
        assert success is expected
    out = FangKrum(tau=tau)(honest, c, generator=_gen())
    assert (int(krum(torch.cat([out, honest]), f=c).selected[0]) < c) is success


# ------------------------------------------------------------------- common


@pytest.mark.parametrize("attack", [ALIE(), IPM(), MinMax(), MinSum(), FangTrimmedMean(), FangKrum()])
def test_shapes_dtype_and_inputs_untouched(attack) -> None:
    honest = _honest(h=9, d=12).float()
    before = honest.clone()
    out = attack(honest, 2, generator=_gen())
    assert out.shape == (2, 12) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(honest, before)
    assert attack(honest, 0, generator=_gen()).shape == (0, 12)
    with pytest.raises(ValueError, match="at least one honest"):
        attack(honest[:0], 2, generator=_gen())


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: IPM(epsilon=0.0), "epsilon=0.0"),
        (lambda: ALIE(z=float("nan")), "z=nan"),
        (lambda: MinMax(perturbation="ones"), "perturbation='ones'"),
        (lambda: MinMax(gamma_init=1.0, tau=2.0), "tau=2.0, gamma_init=1.0"),
        (lambda: MinSum(bound="mean"), "bound='mean'"),
        (lambda: FangTrimmedMean(b=0.5), "b=0.5"),
        (lambda: FangKrum(f=-1), "f=-1"),
    ],
)
def test_colluding_config_errors(factory, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        factory()
