"""Bad hyper-parameters, impossible rounds and rounds at which a defense would be the plain mean fail with
RuleConfigError messages that show the values and the fix."""

from __future__ import annotations

import pytest
import torch

from strategies.rules.base import Layout, RoundContext, RuleConfigError
from strategies.rules.bulyan import Bulyan, bulyan
from strategies.rules.centered_clipping import CenteredClipping
from strategies.rules.flame import Flame, flame
from strategies.rules.fltrust import FLTrust, fltrust
from strategies.rules.foolsgold import FoolsGold, foolsgold
from strategies.rules.geomed import GeoMed, geomed
from strategies.rules.krum import Krum, MultiKrum, krum, multikrum
from strategies.rules.mean import Mean
from strategies.rules.median import Median, median
from strategies.rules.norm_bound import NormBound
from strategies.rules.pca_detect import PCADetect
from strategies.rules.preaggregators import Bucketing, Composed, NearestNeighborMixing
from strategies.rules.signsgd import SignSGDMajority
from strategies.rules.trimmed_mean import TrimmedMean, smallest_trimming_beta, trim_count, trimmed_mean


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
    if f > 0:
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
        (lambda: SignSGDMajority(lr=0.0), r"lr must be in \(0, inf\], got lr=0.0"),
        (lambda: PCADetect(source=1, min_rows=2), "min_rows must be >= 3, got min_rows=2"),
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


# --------------------------------------------------------------------------- no defense silently becomes the mean


def test_trimmed_mean_refuses_a_beta_that_trims_nothing() -> None:
    with pytest.raises(RuleConfigError) as err:
        TrimmedMean(beta=0.2).check_clients(4)
    message = str(err.value)
    for part in ("beta=0.2", "int(0.8) = 0", "n=4", "plain mean", "strategy.beta to >= 1/n (0.25 for n=4)"):
        assert part in message, message
    assert "strategy=fedavg" in message
    TrimmedMean(beta=0.2).check_clients(5)  # int(1.0) = 1
    TrimmedMean(beta=0.0).check_clients(2)  # beta = 0 is an explicit plain mean
    with pytest.raises(RuleConfigError, match="sample at least 3 clients per round"):
        TrimmedMean(beta=0.45).check_clients(2)  # no beta < 0.5 trims anything from 2 values
    with pytest.raises(RuleConfigError, match="at least 1 reply, got n=0"):
        TrimmedMean(beta=0.0).check_clients(0)
    # the function still computes the maths it is given: cut 0 is the plain mean
    x = updates(4)
    torch.testing.assert_close(trimmed_mean(x, beta=0.2).vector, x.mean(dim=0))


@pytest.mark.parametrize("n", [3, 4, 7, 29, 49, 100, 999])
def test_the_suggested_beta_is_the_smallest_four_decimal_one_that_trims(n: int) -> None:
    beta = smallest_trimming_beta(n)
    assert trim_count(beta, n) == 1 and trim_count(round(beta - 1e-4, 4), n) == 0
    TrimmedMean(beta=beta).check_clients(n)


@pytest.mark.parametrize("n", [1, 2])
def test_median_and_geomed_refuse_two_or_fewer_replies(n: int) -> None:
    x = updates(n)
    torch.testing.assert_close(median(x).vector, x.mean(dim=0))  # what the refused rounds would have been
    torch.testing.assert_close(geomed(x, max_iter=50).vector, x.mean(dim=0))
    with pytest.raises(RuleConfigError, match=rf"median of n={n} replies is their plain mean.*at least 3 clients"):
        Median().check_clients(n)
    with pytest.raises(RuleConfigError, match=rf"geomed of n={n} replies is no defense.*at least 3 clients"):
        GeoMed().check_clients(n)
    Median().check_clients(3)
    GeoMed(weighted=True).check_clients(3)


@pytest.mark.parametrize("n", [1, 2])
def test_flame_and_foolsgold_refuse_fewer_than_three_replies(n: int) -> None:
    x = updates(n)
    assert flame(x, noise_lambda=0.0).flagged.tolist() == []  # the majority cluster is everyone
    weights = foolsgold(x).weights
    assert bool((weights == weights[0]).all())  # nobody to tell apart
    with pytest.raises(RuleConfigError, match=rf"flame needs at least 3 replies to cluster, got n={n}"):
        Flame().check_clients(n)
    with pytest.raises(RuleConfigError, match=rf"foolsgold needs at least 3 replies to compare, got n={n}"):
        FoolsGold().check_clients(n)
    Flame().check_clients(3)
    FoolsGold().check_clients(3)


def test_multikrum_refuses_to_average_every_reply() -> None:
    x = updates(5)
    torch.testing.assert_close(multikrum(x, f=0).vector, x.mean(dim=0))  # m = n - 0 = n
    with pytest.raises(RuleConfigError, match=r"m=5 of n=5 replies \(f=0, m=None\).*plain mean.*strategy.m below n"):
        MultiKrum(f=0).check_clients(5)
    with pytest.raises(RuleConfigError, match=r"m=5 of n=5 replies \(f=1, m=5\)"):
        MultiKrum(f=1, m=5).check_clients(5)
    MultiKrum(f=1).check_clients(5)  # m = 4
    MultiKrum(f=0, m=2).check_clients(5)
    Krum(f=0).check_clients(3)  # one row of three: never the mean


def test_bulyan_refuses_f_zero() -> None:
    x = updates(7)
    torch.testing.assert_close(bulyan(x, f=0).vector, x.mean(dim=0))  # theta = beta = n
    with pytest.raises(RuleConfigError, match=r"bulyan with f=0 keeps all n=7 replies.*plain mean.*strategy.f >= 1"):
        Bulyan(f=0).check_clients(7)


def test_pca_detect_refuses_rounds_too_small_to_ever_stack_min_rows() -> None:
    alone = PCADetect(source=0, history_rounds=0, min_rows=10)
    with pytest.raises(RuleConfigError, match=r"n \* \(history_rounds \+ 1\) = 9 rows, below min_rows=10"):
        alone.check_clients(9)
    alone.check_clients(10)
    window = PCADetect(source=0, history_rounds=1, min_rows=10)
    with pytest.raises(RuleConfigError, match="n=4 replies a round and history_rounds=1 stacks at most"):
        window.check_clients(4)
    window.check_clients(5)
    PCADetect(source=0).check_clients(1)  # the defaults stack 21 rounds: 21 >= 10
    with pytest.raises(RuleConfigError, match="at least 1 reply, got n=0"):
        PCADetect(source=0).check_clients(0)


def test_degenerate_mixing_is_refused() -> None:
    with pytest.raises(RuleConfigError, match="nnm with f=0 replaces each of the n=5 replies by the mean of all n"):
        Composed(Median(), [NearestNeighborMixing(f=0)]).check_clients(5)
    with pytest.raises(RuleConfigError, match="bucketing with s=5 >= n=5 puts every reply into one bucket"):
        Composed(CenteredClipping(tau=1.0), [Bucketing(s=5)]).check_clients(5)
    assert NearestNeighborMixing(f=0).output_size(1) == 1 and Bucketing(s=3).output_size(1) == 1
    Composed(Median(), [Bucketing(s=2)]).check_clients(6)  # 3 buckets


def test_rules_whose_degeneration_depends_on_the_data_accept_any_round() -> None:
    # Centered clipping and norm bounding are the plain mean exactly when nothing is clipped; they say so in
    # info["clipped"] instead of refusing, since it depends on the updates, not on n.
    x = updates(4)
    for result in (CenteredClipping(tau=1e6)(x), NormBound(max_norm=1e6)(x)):
        assert result.info["clipped"] == 0
        torch.testing.assert_close(result.vector, x.mean(dim=0))
    for rule in (CenteredClipping(tau=1.0), NormBound(max_norm=1.0), FLTrust(), SignSGDMajority(), Mean()):
        rule.check_clients(1)
        with pytest.raises(RuleConfigError, match="n=0"):
            rule.check_clients(0)


def test_composed_needs_a_rule_that_says_whether_it_detects() -> None:
    class Unlabelled:
        def check_clients(self, n: int) -> None:
            pass

        def __call__(self, updates: torch.Tensor, context: RoundContext | None = None) -> None:
            pass

    with pytest.raises(RuleConfigError, match="must say whether it detects"):
        Composed(Unlabelled(), [])
