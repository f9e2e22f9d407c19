"""Colluding attacks with partial knowledge: computed from the colluders' own benign updates only.

Hand-computed values on small matrices, the papers' bounds on the colluders'
set, the two-colluder minimum, and the omniscient default against the outputs
recorded from the omniscient implementation (``data/colluding_omniscient_reference.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from attacks import ALIE, IPM, CollusionInfeasible, FangKrum, FangTrimmedMean, MinMax, MinSum
from attacks._colluding import KNOWLEDGE, pairwise_sq
from attacks.fang import _krum_choice

REFERENCE = Path(__file__).parent / "data" / "colluding_omniscient_reference.json"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(c: int = 4, d: int = 20, seed: int = 0, spread: float = 0.5) -> torch.Tensor:
    """Benign deltas scattered (``spread``) around a common direction (float64)."""
    g = _gen(seed)
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    return direction + spread * torch.randn(c, d, generator=g, dtype=torch.float64)


def _sq_to_each(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((rows - v) ** 2).sum(dim=1)


def _pairwise(rows: torch.Tensor) -> torch.Tensor:
    return ((rows[:, None, :] - rows[None, :, :]) ** 2).sum(dim=2)


ALL_PARTIAL = [
    ALIE(z=1.0, knowledge="partial"),
    IPM(knowledge="partial"),
    MinMax(knowledge="partial"),
    MinSum(knowledge="partial"),
    FangTrimmedMean(knowledge="partial"),
    FangKrum(knowledge="partial"),
]


# ---------------------------------------------------------------------- ALIE


def test_partial_alie_is_mean_minus_z_std_of_the_colluders_by_hand() -> None:
    own = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=torch.float64)
    # mean [2, 2, 2], population std [1, 0, 1]; z = 1.5
    out = ALIE(z=1.5, knowledge="partial")(own, 3, generator=_gen())
    assert out.tolist() == [[0.5, 2.0, 0.5]] * 3


def test_partial_alie_needs_two_colluders_and_a_bound_z() -> None:
    one = torch.tensor([[1.0, 2.0]])
    with pytest.raises(CollusionInfeasible, match=r"ALIE \(partial knowledge\) needs the benign updates of at least 2"):
        ALIE(z=1.0, knowledge="partial")(one, 1, generator=_gen())
    with pytest.raises(ValueError, match=r"needs z: the colluders do not know the round's honest count") as err:
        ALIE(knowledge="partial")(_rows(3), 3, generator=_gen())
    assert not isinstance(err.value, CollusionInfeasible)


# ----------------------------------------------------------------------- IPM


def test_partial_ipm_is_minus_epsilon_times_the_colluders_mean_by_hand() -> None:
    own = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert IPM(epsilon=0.5, knowledge="partial")(own, 2, generator=_gen()).tolist() == [[-1.0, -0.5]] * 2
    # one colluder suffices: its own update, scaled by -epsilon
    assert IPM(epsilon=2.0, knowledge="partial")(own[:1], 1, generator=_gen()).tolist() == [[-2.0, 4.0]]


# ------------------------------------------------------- Min-Max / Min-Sum


@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_partial_min_max_bound_holds_on_the_colluders_set_with_the_largest_gamma(perturbation: str) -> None:
    own = _rows(c=3)
    attack = MinMax(perturbation=perturbation, knowledge="partial")
    gamma = attack.search_gamma(own)
    p = attack.perturbation_vector(own)
    out = attack(own, 3, generator=_gen())
    assert gamma > 0 and torch.equal(out[0], out[2])
    assert torch.allclose(out[0], own.mean(0) + gamma * p)
    bound = float(_pairwise(own).max())
    assert float(_sq_to_each(own, out[0]).max()) <= bound * (1 + 1e-12)
    assert float(_sq_to_each(own, own.mean(0) + (gamma + 1e-3) * p).max()) > bound
    # the same search as the omniscient attack, run on the colluders' updates
    assert torch.equal(out, MinMax(perturbation=perturbation)(own, 3, generator=_gen()))


@pytest.mark.parametrize("bound_kind", ["max", "min"])
def test_partial_min_sum_bound_holds_on_the_colluders_set_with_the_largest_gamma(bound_kind: str) -> None:
    own = _rows(c=4, seed=1)
    attack = MinSum(bound=bound_kind, knowledge="partial")
    gamma = attack.search_gamma(own)
    p = attack.perturbation_vector(own)
    out = attack(own, 2, generator=_gen())
    sums = _pairwise(own).sum(dim=1)
    bound = float(sums.max() if bound_kind == "max" else sums.min())
    assert gamma > 0
    assert float(_sq_to_each(own, out[0]).sum()) <= bound * (1 + 1e-12)
    assert float(_sq_to_each(own, own.mean(0) + (gamma + 1e-3) * p).sum()) > bound


@pytest.mark.parametrize("cls", [MinMax, MinSum])
def test_partial_min_max_and_min_sum_need_two_colluders(cls) -> None:
    pattern = rf"{cls.__name__} \(partial knowledge\) needs .* at least 2 .*got c=1"
    with pytest.raises(CollusionInfeasible, match=pattern):
        cls(knowledge="partial")(_rows(1), 1, generator=_gen())
    assert cls(knowledge="partial")(_rows(1), 0, generator=_gen()).shape == (0, 20)


# ---------------------------------------------------------------------- Fang


def test_partial_fang_trimmed_mean_by_hand() -> None:
    own = torch.tensor([[1.0, -1.0, 2.0, 0.0], [3.0, -3.0, -2.0, 0.0]], dtype=torch.float64)
    # mu = [2, -2, 0, 0], population sigma = [1, 1, 2, 0], s = sign(mu) = [+, -, 0, 0]
    out = FangTrimmedMean(knowledge="partial")(own, 2, generator=_gen(5))
    r = 3 + torch.rand((2, 4), generator=_gen(5), dtype=torch.float64)  # U[3, 4] per colluder and coordinate
    assert torch.equal(out[:, 0], 2 - r[:, 0])  # s = +1: below mu - 3 sigma
    assert torch.equal(out[:, 1], -2 + r[:, 1])  # s = -1: above mu + 3 sigma
    assert out[:, 2:].tolist() == [[0.0, 0.0]] * 2  # s = 0: mu
    assert bool((out[:, 0] <= -1).all() and (out[:, 0] >= -2).all())  # [mu - 4 sigma, mu - 3 sigma]
    assert bool((out[:, 1] >= 1).all() and (out[:, 1] <= 2).all())  # [mu + 3 sigma, mu + 4 sigma]


def test_partial_fang_trimmed_mean_lies_beyond_the_colluders_gaussian_extremes() -> None:
    own = _rows(c=5, d=50)
    mu, sigma = own.mean(0), own.std(0, correction=0)
    out = FangTrimmedMean(knowledge="partial")(own, 4, generator=_gen())
    s = torch.sign(mu)
    beyond = -s * (out - mu)  # how far against the estimated direction, in units of sigma below
    assert bool((beyond >= 3 * sigma - 1e-12).all() and (beyond <= 4 * sigma + 1e-12).all())


def test_partial_fang_krum_by_hand() -> None:
    own = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    # s~ = sign([1, 0]) = [1, 0], ||s~|| = 1; max ||x_i|| = sqrt 2; the smallest row sum of squared distances = 4,
    # over c - 1 = 1: lambda_0 = sqrt 2 + 2. z = [-lambda, 0] is at squared distance (1 + lambda)^2 + 1 from both
    # rows; Krum (f = 0, 1 neighbour) picks z once that is <= 4 (ties in score go to the smaller total
    # distance): lambda_0, lambda_0/2, lambda_0/4 fail ((1 + 0.854)^2 + 1 = 4.44 > 4), lambda_0/8 succeeds.
    lam0 = math.sqrt(2) + 2
    attack = FangKrum(knowledge="partial")
    lam, success = attack.search_lambda(own, 2)
    assert success and lam == pytest.approx(lam0 / 8, rel=1e-12)
    out = attack(own, 2, generator=_gen())
    assert torch.allclose(out, torch.tensor([[-lam0 / 8, 0.0]] * 2, dtype=torch.float64))


def test_partial_fang_krum_gets_its_crafted_update_picked_among_the_colluders() -> None:
    own = _rows(c=4, d=30, spread=3.0)
    attack = FangKrum(knowledge="partial")
    lam, success = attack.search_lambda(own, 4)
    out = attack(own, 4, generator=_gen())
    s = torch.sign(own.mean(0))
    assert success and lam > attack.tau
    assert torch.allclose(out, (-lam * s).expand(4, 30))
    assert _krum_choice(pairwise_sq(torch.cat([out[:1], own])), 0) == 0  # the crafted update first, as searched
    assert _krum_choice(pairwise_sq(torch.cat([(-2 * lam * s).unsqueeze(0), own])), 0) != 0  # twice lambda fails
    # lambda is a halving of the bound (max ||x_i|| + sqrt(min_i sum_l ||x_l - x_i||^2 / (c - 1))) / ||s||
    sq = _pairwise(own)
    lam0 = (own.norm(dim=1).max().item() + math.sqrt(sq.sum(dim=1).min().item() / 3)) / s.norm().item()
    assert any(lam == pytest.approx(lam0 / 2**k, rel=1e-9) for k in range(40))


def test_partial_fang_krum_falls_back_to_the_smallest_lambda_when_krum_resists() -> None:
    # colluders' updates far from the origin and tightly packed: no -lambda * s gets picked among them
    own = _rows(c=4, d=30, spread=0.5)
    lam, success = FangKrum(tau=1e-4, knowledge="partial").search_lambda(own, 4)
    assert not success and 1e-4 < lam <= 2e-4


def test_partial_fang_attacks_need_two_colluders() -> None:
    one = _rows(1)
    with pytest.raises(CollusionInfeasible, match=r"FangTrimmedMean \(partial knowledge\) needs .* at least 2"):
        FangTrimmedMean(knowledge="partial")(one, 1, generator=_gen())
    with pytest.raises(CollusionInfeasible, match=r"FangKrum \(partial knowledge\) needs .* at least 2"):
        FangKrum(knowledge="partial")(one, 1, generator=_gen())


# ------------------------------------------------------------------- common


@pytest.mark.parametrize("attack", ALL_PARTIAL, ids=lambda a: type(a).__name__)
def test_partial_shapes_dtype_finiteness_and_inputs_untouched(attack) -> None:
    own = _rows(c=3, d=12).float()
    before = own.clone()
    out = attack(own, 3, generator=_gen())
    assert out.shape == (3, 12) and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert torch.equal(own, before)
    assert attack(own, 0, generator=_gen()).shape == (0, 12)
    with pytest.raises(CollusionInfeasible, match=r"partial knowledge\) needs the benign updates of at least 1"):
        attack(own[:0], 2, generator=_gen())


@pytest.mark.parametrize("attack", ALL_PARTIAL, ids=lambda a: type(a).__name__)
def test_partial_identical_colluders_give_no_nan(attack) -> None:
    own = torch.ones(2, 5)  # zero spread: std 0, distances 0
    out = attack(own, 2, generator=_gen())
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("cls", [ALIE, IPM, MinMax, MinSum, FangTrimmedMean, FangKrum])
def test_knowledge_is_checked_at_construction(cls) -> None:
    assert cls().knowledge == "omniscient" and KNOWLEDGE == ("omniscient", "partial")
    pattern = r"knowledge must be one of \['omniscient', 'partial'\].*knowledge='full'"
    with pytest.raises(ValueError, match=pattern) as e:
        cls(knowledge="full")
    assert not isinstance(e.value, CollusionInfeasible)


# ------------------------------------------------- omniscient stays the same

_FACTORIES = {
    "ALIE()": lambda **k: ALIE(**k),
    "ALIE(z=1.5)": lambda **k: ALIE(z=1.5, **k),
    "IPM()": lambda **k: IPM(**k),
    "IPM(epsilon=100.0)": lambda **k: IPM(epsilon=100.0, **k),
    "MinMax(perturbation='unit_vec')": lambda **k: MinMax(perturbation="unit_vec", **k),
    "MinMax(perturbation='std')": lambda **k: MinMax(perturbation="std", **k),
    "MinMax(perturbation='sign')": lambda **k: MinMax(perturbation="sign", **k),
    "MinSum(perturbation='unit_vec')": lambda **k: MinSum(perturbation="unit_vec", **k),
    "MinSum(perturbation='std', bound='min')": lambda **k: MinSum(perturbation="std", bound="min", **k),
    "FangTrimmedMean()": lambda **k: FangTrimmedMean(**k),
    "FangKrum()": lambda **k: FangKrum(**k),
    "FangKrum(f=1)": lambda **k: FangKrum(f=1, **k),
}


@pytest.mark.parametrize("name", sorted(_FACTORIES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_omniscient_outputs_equal_the_recorded_omniscient_implementation(name: str, dtype: torch.dtype) -> None:
    ref = json.loads(REFERENCE.read_text())
    key = str(dtype).removeprefix("torch.")
    honest = torch.tensor(ref[f"honest_{key}"], dtype=dtype)
    expected = torch.tensor(ref["cases"][name][key], dtype=dtype)
    for kwargs in ({}, {"knowledge": "omniscient"}):
        out = _FACTORIES[name](**kwargs)(honest, ref["m"], generator=_gen(ref["generator_seed"]))
        assert out.dtype == dtype and torch.equal(out, expected), (name, kwargs)
