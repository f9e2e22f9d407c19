"""Bad hyper-parameters and impossible rounds fail with RuleConfigError messages that show the values."""

from __future__ import annotations

import pytest
import torch

from strategies.rules.base import Layout, RoundContext, RuleConfigError
from strategies.rules.bulyan import Bulyan, bulyan
from strategies.rules.centered_clipping import CenteredClipping
from strategies.rules.flame import Flame
from strategies.rules.fltrust import FLTrust, fltrust
from strategies.rules.foolsgold import FoolsGold
from strategies.rules.geomed import GeoMed
from strategies.rules.krum import Krum, MultiKrum, krum, multikrum
from strategies.rules.norm_bound import NormBound
from strategies.rules.pca_detect import PCADetect
from strategies.rules.preaggregators import Bucketing, Composed, NearestNeighborMixing
from strategies.rules.trimmed_mean import TrimmedMean, trimmed_mean


def updates(n: int, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize(("n", "f"), [(6, 2), (4, 1), (2, 0)])
def test_krum_needs_more_than_2f_plus_2(n: int, f: int) -> None:
    for call in (
        lambda: Krum(f=f).check_clients(n),
        lambda: krum(updates(n), f=f),
        lambda: MultiKrum(f=f).check_clients(n),
        lambda: multikrum(updates(n), f=f),
    ):
        with pytest.raises(RuleConfigError, match=rf"n={n} with f={f} \(2f \+ 2 = {2 * f + 2}\)"):
            call()
    Krum(f=f).check_clients(2 * f + 3)  # the smallest n that works


def test_multikrum_m_must_fit() -> None:
    with pytest.raises(RuleConfigError, match="m=9 with n=7"):
        MultiKrum(f=1, m=9).check_clients(7)
    with pytest.raises(RuleConfigError, match="m must be >= 1, got m=0"):
        MultiKrum(f=1, m=0)


@pytest.mark.parametrize("beta", [0.5, 0.7, -0.1, float("nan")])
def test_trimmed_mean_beta_must_be_below_one_half(beta: float) -> None:
    with pytest.raises(RuleConfigError, match=r"beta must be .*\[0, 0\.5\)|beta must be a finite number"):
        TrimmedMean(beta=beta)
    with pytest.raises(RuleConfigError, match=str(beta)):
        trimmed_mean(updates(5), beta=beta)


@pytest.mark.parametrize(("n", "f"), [(10, 2), (6, 1), (2, 0)])
def test_bulyan_needs_4f_plus_3(n: int, f: int) -> None:
    with pytest.raises(RuleConfigError, match=rf"n={n} with f={f} \(4f \+ 3 = {4 * f + 3}\)"):
        Bulyan(f=f).check_clients(n)
    with pytest.raises(RuleConfigError, match=rf"n={n} with f={f}"):
        bulyan(updates(n), f=f)
    Bulyan(f=f).check_clients(4 * f + 3)


def test_bad_values_name_the_parameter_and_value() -> None:
    cases = [
        (lambda: Krum(f=-1), "f must be >= 0, got f=-1"),
        (lambda: Krum(f=1.5), "f must be an integer, got 1.5"),
        (lambda: Krum(f=True), "f must be an integer, got True"),
        (lambda: Bulyan(f=1, selection="greedy"), "selection must be one of .* got 'greedy'"),
        (lambda: GeoMed(max_iter=0), "max_iter must be >= 1, got max_iter=0"),
        (lambda: GeoMed(nu=0.0), r"nu must be in \(0, inf\], got nu=0.0"),
        (lambda: CenteredClipping(tau=0.0), r"tau must be in \(0, inf\], got tau=0.0"),
        (lambda: CenteredClipping(tau=1.0, iterations=0), "iterations must be >= 1, got iterations=0"),
        (lambda: NormBound(max_norm=-2.0), "max_norm must be in .* got max_norm=-2.0"),
        (lambda: NormBound(max_norm=1.0, sigma=-0.1), "sigma must be in .* got sigma=-0.1"),
        (lambda: Flame(noise_lambda=-1.0), "noise_lambda must be in .* got noise_lambda=-1.0"),
        (lambda: FoolsGold(kappa=0.0), "kappa must be in .* got kappa=0.0"),
        (lambda: PCADetect(source=-1), "source must be >= 0, got source=-1"),
        (lambda: PCADetect(source=1, start_round=0), "start_round must be >= 1, got start_round=0"),
        (lambda: Bucketing(s=0), "s must be >= 1, got s=0"),
        (lambda: NearestNeighborMixing(f=-3), "f must be >= 0, got f=-3"),
    ]
    for make, message in cases:
        with pytest.raises(RuleConfigError, match=message):
            make()


def test_fltrust_needs_the_server_update() -> None:
    with pytest.raises(RuleConfigError, match="context.server_update"):
        FLTrust()(updates(5), RoundContext())
    with pytest.raises(RuleConfigError, match=r"shape \(3,\), expected \(4,\)"):
        fltrust(updates(5), server_update=torch.zeros(3))


def test_pca_detect_needs_a_layout_and_a_real_layer() -> None:
    x = updates(6, 12)
    with pytest.raises(RuleConfigError, match="context.layout"):
        PCADetect(source=0, start_round=1)(x, RoundContext(server_round=3))
    layout = Layout(names=("fc.weight",), shapes=(torch.Size([3, 4]),), offsets=(0,))
    with pytest.raises(RuleConfigError, match="no tensor named 'head.weight'"):
        PCADetect(source=0, layer="head.weight", start_round=1)(x, RoundContext(layout=layout))
    with pytest.raises(RuleConfigError, match="source=5 is not a class of 'fc.weight' with 3 rows"):
        PCADetect(source=5, start_round=1)(x, RoundContext(layout=layout))


def test_composed_checks_each_stage_with_the_rows_it_receives() -> None:
    rule = Composed(Krum(f=1), [Bucketing(s=2)])
    rule.check_clients(10)  # 5 buckets > 2f + 2 = 4
    with pytest.raises(RuleConfigError, match="n=4 with f=1"):
        rule.check_clients(8)  # 4 buckets
    with pytest.raises(RuleConfigError, match="context.generator"):
        rule(updates(10), RoundContext())
