"""Colluding attacks: a round that cannot be formed raises CollusionInfeasible, bad settings plain ValueError."""

from __future__ import annotations

import pytest
import torch

from attacks import ALIE, IPM, CollusionInfeasible, FangKrum, FangTrimmedMean, MinMax, MinSum


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _honest(h: int, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    return torch.randn(d, generator=g, dtype=torch.float64) + torch.randn(h, d, generator=g, dtype=torch.float64)


ALL = [ALIE(), ALIE(z=1.0), IPM(), MinMax(), MinSum(), FangTrimmedMean(), FangKrum()]


def test_it_is_a_value_error_exported_from_attacks() -> None:
    assert issubclass(CollusionInfeasible, ValueError)


@pytest.mark.parametrize("attack", ALL, ids=lambda a: type(a).__name__)
def test_no_honest_update_this_round(attack) -> None:
    with pytest.raises(CollusionInfeasible, match=rf"{type(attack).__name__}: no honest update this round \(h=0\)"):
        attack(_honest(3)[:0], 2, generator=_gen())


def test_alie_when_this_round_s_attackers_are_a_majority() -> None:
    # n = 4 + 6 = 10: s = floor(10/2 + 1) - 6 = 0, so z_max is undefined
    with pytest.raises(CollusionInfeasible, match=r"n=10 clients and m=6 malicious.*this round: h=4 honest"):
        ALIE()(_honest(4), 6, generator=_gen())
    # n = 6 + 6 = 12: s = 7 - 6 = 1, defined
    assert ALIE()(_honest(6), 6, generator=_gen()).shape == (6, 6)
    # a fixed z never needs z_max
    assert ALIE(z=1.0)(_honest(4), 6, generator=_gen()).shape == (6, 6)


def test_alie_z_max_outside_a_round_stays_a_plain_value_error() -> None:
    with pytest.raises(ValueError, match=r"s = floor\(n/2 \+ 1\) - m = 0") as err:
        ALIE.z_max(10, 6)
    assert not isinstance(err.value, CollusionInfeasible)


@pytest.mark.parametrize("cls", [MinMax, MinSum])
@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_min_max_and_min_sum_need_two_honest_updates(cls, perturbation: str) -> None:
    attack = cls(perturbation=perturbation)
    with pytest.raises(CollusionInfeasible, match=rf"{cls.__name__} needs at least 2 honest updates .*got h=1"):
        attack(_honest(1), 3, generator=_gen())
    with pytest.raises(CollusionInfeasible, match="got h=1"):
        attack.search_gamma(_honest(1))
    assert attack(_honest(1), 0, generator=_gen()).shape == (0, 6)  # no attacker, nothing to form
    assert attack(_honest(2), 3, generator=_gen()).shape == (3, 6)


def test_the_std_perturbation_of_one_update_is_undefined() -> None:
    with pytest.raises(CollusionInfeasible, match="unbiased std of one update is undefined"):
        MinMax(perturbation="std").perturbation_vector(_honest(1))
    assert MinMax(perturbation="sign").perturbation_vector(_honest(1)).shape == (6,)


def test_ipm_and_fang_trimmed_mean_work_from_one_honest_update() -> None:
    assert IPM()(_honest(1), 2, generator=_gen()).shape == (2, 6)
    assert FangTrimmedMean()(_honest(1), 2, generator=_gen()).shape == (2, 6)


def test_fang_krum_needs_n_above_2f_plus_2() -> None:
    with pytest.raises(CollusionInfeasible, match=r"n > 2f \+ 2, got n=8 \(h=5 honest \+ c=3 malicious\), f=3"):
        FangKrum()(_honest(5), 3, generator=_gen())
    with pytest.raises(CollusionInfeasible, match=r"got n=9 \(h=7 honest \+ c=2 malicious\), f=4"):
        FangKrum(f=4)(_honest(7), 2, generator=_gen())
    with pytest.raises(CollusionInfeasible, match=r"n > 2f \+ 2"):
        FangKrum().search_lambda(_honest(5), 3)
    assert FangKrum()(_honest(6), 3, generator=_gen()).shape == (3, 6)  # n = 9 > 8


def test_fang_krum_needs_h_above_c_plus_1_for_its_lambda_bound() -> None:
    # f = 0 lets Krum run (n = 6 > 2), but h - c - 1 = -1 leaves the bound undefined
    with pytest.raises(CollusionInfeasible, match=r"h - c - 1 > 0, got h=3, c=3"):
        FangKrum(f=0)(_honest(3), 3, generator=_gen())


@pytest.mark.parametrize(
    "factory",
    [
        lambda: IPM(epsilon=0.0),
        lambda: ALIE(z=float("inf")),
        lambda: MinMax(perturbation="ones"),
        lambda: MinSum(gamma_init=1.0, tau=1.0),
        lambda: MinSum(bound="mean"),
        lambda: FangTrimmedMean(b=0.5),
        lambda: FangKrum(f=1.5),
        lambda: FangKrum(tau=0.0),
    ],
)
def test_constructor_errors_are_not_collusion_infeasible(factory) -> None:
    with pytest.raises(ValueError) as err:
        factory()
    assert not isinstance(err.value, CollusionInfeasible)


@pytest.mark.parametrize("attack", ALL, ids=lambda a: type(a).__name__)
def test_malformed_arguments_are_not_collusion_infeasible(attack) -> None:
    for honest, m in ((_honest(6)[0], 2), (_honest(6).long(), 2), (_honest(6), -1)):
        with pytest.raises(ValueError) as err:
            attack(honest, m, generator=_gen())
        assert not isinstance(err.value, CollusionInfeasible)
