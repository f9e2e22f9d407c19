"""Central DP around any rule (strategies/central_dp.py): clipping, sensitivity, noise, adaptive clipping and the
whole-run epsilon, against hand values, Opacus' RDP accountant and Flower 1.41's own accountant."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from opacus.accountants import RDPAccountant

from strategies.central_dp import RDP_ORDERS, CentralDP, adaptive_noise_multiplier, clip_rows
from strategies.rules.base import RoundContext, RuleConfigError
from strategies.rules.flame import Flame
from strategies.rules.fltrust import FLTrust
from strategies.rules.krum import Krum
from strategies.rules.mean import Mean
from strategies.rules.median import Median
from strategies.rules.preaggregators import Bucketing, Composed
from strategies.rules.trimmed_mean import TrimmedMean

DELTA = 1e-5


def ctx(seed: int = 0, **kw: object) -> RoundContext:
    return RoundContext(generator=torch.Generator().manual_seed(seed), **kw)  # type: ignore[arg-type]


def rows(n: int, d: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Rows with norms spread around ``scale`` (some above, some below)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    return x * torch.linspace(0.25, 2.5, n, dtype=torch.float64)[:, None] * scale


def dp(rule: object, **kw: object) -> CentralDP:
    kw.setdefault("delta", DELTA)
    return CentralDP(rule=rule, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- clipping


def test_clip_rows_scales_only_rows_above_the_norm() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [1.0, 0.0], [-6.0, 8.0]], dtype=torch.float64)
    clipped, norms = clip_rows(x, 1.0)
    assert norms.tolist() == pytest.approx([5.0, 0.5, 0.0, 1.0, 10.0])
    assert clipped.norm(dim=1).tolist() == pytest.approx([1.0, 0.5, 0.0, 1.0, 1.0])
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0, 0], [1, 0], [-0.6, 0.8]]).double())
    out = dp(Mean(), noise_multiplier=0.0, clipping_norm=1.0)(x, ctx())
    assert out.info["dp_clipped_fraction"] == pytest.approx(2 / 5)  # norm exactly C is not clipped
    assert out.info["dp_clip_norm"] == 1.0


def test_clipping_keeps_float32_norms_at_c() -> None:
    x = rows(20, 1000, scale=3.0).float()
    clipped, _ = clip_rows(x, 0.7)
    assert clipped.dtype == torch.float32
    assert float(clipped.norm(dim=1).max()) <= 0.7 * (1 + 1e-6)


# --------------------------------------------------------------------------------- z = 0: the rule itself


@pytest.mark.parametrize(
    "make", [Mean, Median, lambda: Krum(f=2), lambda: TrimmedMean(beta=0.2)], ids=["mean", "median", "krum", "tm"]
)
def test_zero_noise_is_the_rule_on_clipped_rows(make: object) -> None:
    x = rows(11, 64, seed=3)
    inner = make()  # type: ignore[operator]
    want = inner(clip_rows(x, 1.0)[0], ctx())
    assert float(want.vector.norm()) <= 1.0  # so the projection cannot hide a difference
    got = dp(make(), noise_multiplier=0.0, clipping_norm=1.0)(x, ctx())  # type: ignore[operator]
    assert torch.equal(got.vector, want.vector)
    assert torch.equal(got.weights, want.weights)
    assert torch.equal(got.selected, want.selected)
    assert got.info["dp_noise_std"] == 0.0


def test_zero_noise_keeps_the_rules_randomness_first() -> None:
    """Bucketing draws its permutation before any noise: same generator seed, same buckets, same Krum choice."""
    x = rows(12, 32, seed=5)
    composed = Composed(Krum(f=1), preaggregators=[Bucketing(s=2)])
    want = composed(clip_rows(x, 1.0)[0], ctx(seed=9))
    got = dp(Composed(Krum(f=1), preaggregators=[Bucketing(s=2)]), noise_multiplier=0.0, clipping_norm=1.0)(
        x, ctx(seed=9)
    )
    assert torch.allclose(got.vector, want.vector, atol=1e-12)
    assert torch.equal(got.selected, want.selected)
    assert got.info["mixed_rows"] == 6.0  # the rule's info is kept
    assert got.info["dp_sensitivity"] == 2.0  # behind a pre-aggregator even the mean pays 2C


def test_a_robust_aggregate_is_projected_onto_the_c_ball() -> None:
    """Coordinate-wise median of three unit rows (a,a,0), (a,0,a), (0,a,a) is (a,a,a), norm a*sqrt(3) > 1."""
    a = 1 / math.sqrt(2)
    x = torch.tensor([[a, a, 0.0], [a, 0.0, a], [0.0, a, a]], dtype=torch.float64)
    assert torch.allclose(Median()(x).vector, torch.full((3,), a, dtype=torch.float64))
    out = dp(Median(), noise_multiplier=0.0, clipping_norm=1.0)(x, ctx())
    assert torch.allclose(out.vector, torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))
    assert out.info["dp_sensitivity"] == 2.0


# ------------------------------------------------------------------------------------------------ noise


@pytest.fixture(scope="module")
def wide() -> torch.Tensor:
    return rows(10, 100_000, seed=1).float()


@pytest.mark.parametrize(
    ("make", "std"),
    [(Mean, 1.5 * 0.8 / 10), (Median, 1.5 * 2 * 0.8), (lambda: Krum(f=2), 1.5 * 2 * 0.8)],
    ids=["mean C/m", "median 2C", "krum 2C"],
)
def test_noise_std_is_z_times_sensitivity(make: object, std: float, wide: torch.Tensor) -> None:
    clean = dp(make(), noise_multiplier=0.0, clipping_norm=0.8)(wide, ctx())  # type: ignore[operator]
    assert float(clean.vector.norm()) <= 0.8 * (1 + 1e-6)  # bounded before the noise
    out = dp(make(), noise_multiplier=1.5, clipping_norm=0.8)(wide, ctx(seed=4))  # type: ignore[operator]
    noise = (out.vector - clean.vector).double()
    assert out.vector.dtype == torch.float32
    assert out.info["dp_noise_std"] == pytest.approx(std)
    assert out.info["dp_sensitivity"] == pytest.approx(std / 1.5)
    assert out.info["dp_noise_multiplier"] == 1.5
    # 100,000 draws: the sample std's relative s.e. is 0.22 %, so 1 % is 4.5 s.e. (measured: -0.21 %)
    assert float(noise.std()) == pytest.approx(std, rel=1e-2)
    assert abs(float(noise.mean())) < 5 * std / math.sqrt(100_000)


def test_weighted_mean_sensitivity_is_c_times_the_largest_weight() -> None:
    x = rows(4, 8, seed=2)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    out = dp(Mean(weighted=True), noise_multiplier=2.0, clipping_norm=0.5)(x, ctx(weights=w))
    assert out.info["dp_sensitivity"] == pytest.approx(0.5 * 0.4)
    assert out.info["dp_noise_std"] == pytest.approx(2.0 * 0.5 * 0.4)


def test_noise_comes_from_the_context_generator() -> None:
    x = rows(10, 50)
    a = dp(Mean(), noise_multiplier=1.0, clipping_norm=1.0)(x, ctx(seed=1)).vector
    b = dp(Mean(), noise_multiplier=1.0, clipping_norm=1.0)(x, ctx(seed=1)).vector
    c = dp(Mean(), noise_multiplier=1.0, clipping_norm=1.0)(x, ctx(seed=2)).vector
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert dp(Mean(), noise_multiplier=1.0, clipping_norm=1.0)(x, None).vector.shape == (50,)  # private generator


def test_the_rules_decision_passes_through() -> None:
    x = rows(9, 16, seed=7)
    inner = Krum(f=2)(clip_rows(x, 1.0)[0])
    out = dp(Krum(f=2), noise_multiplier=1.0, clipping_norm=1.0)(x, ctx())
    assert torch.equal(out.selected, inner.selected) and out.selected.numel() == 1
    assert torch.equal(out.weights, inner.weights) and out.active
    assert set(inner.info) == {"best_score", "neighbours"}  # the rule's diagnostics are kept
    assert set(out.info) == set(inner.info) | {
        "dp_clip_norm",
        "dp_clipped_fraction",
        "dp_sensitivity",
        "dp_noise_std",
        "dp_noise_multiplier",
        "dp_epsilon",
    }


def test_protocol_attributes_are_the_inner_rules() -> None:
    assert dp(Flame(), noise_multiplier=1.0, clipping_norm=1.0).detects is True
    assert dp(Mean(), noise_multiplier=1.0, clipping_norm=1.0).detects is False
    assert dp(FLTrust(), noise_multiplier=1.0, clipping_norm=1.0).needs_server_update is True
    assert dp(Composed(FLTrust()), noise_multiplier=1.0, clipping_norm=1.0).needs_server_update is True
    assert dp(Krum(f=1), noise_multiplier=1.0, clipping_norm=1.0).needs_server_update is False
    with pytest.raises(RuleConfigError, match=r"n=4 with f=1"):
        dp(Krum(f=1), noise_multiplier=1.0, clipping_norm=1.0).check_clients(4)
    assert not hasattr(dp(Krum(f=1), noise_multiplier=1.0, clipping_norm=1.0), "decide_from_sq_dists")


# --------------------------------------------------------------------------------------- adaptive clipping


@pytest.mark.parametrize("z", [0.0, 1e-9])
def test_adaptive_clip_shrinks_when_no_row_reaches_it(z: float) -> None:
    x = rows(10, 20, scale=0.01)  # every norm <= 0.025 < C
    w = dp(Mean(), noise_multiplier=z, clipping_norm=1.0, adaptive=True, clipped_count_stddev=1e-9)
    c = 1.0
    for _ in range(3):
        out = w(x, ctx())
        assert out.info["dp_clip_norm"] == pytest.approx(c)
        assert out.info["dp_clipped_fraction"] == 0.0
        c *= math.exp(-0.2 * (1 - 0.5))
        assert out.info["dp_next_clip_norm"] == pytest.approx(c, rel=1e-8)
    assert w.clip_norm == pytest.approx(math.exp(-0.3), rel=1e-8)


def test_adaptive_clip_grows_when_every_row_is_clipped_and_noise_uses_the_current_norm() -> None:
    x = rows(10, 20, scale=100.0)  # every norm >= 25 > C
    w = dp(
        Mean(), noise_multiplier=1e-9, clipping_norm=1.0, adaptive=True, clipped_count_stddev=1e-9, target_quantile=0.8
    )
    out = w(x, ctx())
    assert out.info["dp_clipped_fraction"] == 1.0
    assert out.info["dp_next_clip_norm"] == pytest.approx(math.exp(0.2 * 0.8), rel=1e-8)
    # round 1's noise is calibrated to the C its rows were clipped to (1.0), not to the next one
    z_delta = (1e-9**-2 - (2e-9) ** -2) ** -0.5
    assert out.info["dp_noise_std"] == pytest.approx(z_delta * 1.0 / 10)
    assert w(x, ctx()).info["dp_clip_norm"] == pytest.approx(math.exp(0.16))


def test_adaptive_noise_multiplier_hand_values() -> None:
    assert adaptive_noise_multiplier(0.5, 0.5) == pytest.approx(1 / math.sqrt(3))  # (4 - 1)^(-1/2)
    assert adaptive_noise_multiplier(1.0, 1.0) == pytest.approx(1 / math.sqrt(0.75))
    assert adaptive_noise_multiplier(0.0, 0.0) == 0.0
    # the default sigma_b = m / 20: m = 10 rows -> 0.5 -> z_delta = 1/sqrt(3) at z = 0.5
    out = dp(Mean(), noise_multiplier=0.5, clipping_norm=2.0, adaptive=True)(rows(10, 30), ctx())
    assert out.info["dp_noise_multiplier"] == pytest.approx(1 / math.sqrt(3))
    assert out.info["dp_noise_std"] == pytest.approx(2.0 / 10 / math.sqrt(3))
    # robust rule under adaptive clipping: 2C sensitivity with the same z_delta
    out = dp(Median(), noise_multiplier=0.5, clipping_norm=2.0, adaptive=True)(rows(10, 30), ctx())
    assert out.info["dp_noise_std"] == pytest.approx(2 * 2.0 / math.sqrt(3))


def test_adaptive_rejects_a_count_noise_too_small_for_z() -> None:
    w = dp(Mean(), noise_multiplier=1.0, clipping_norm=1.0, adaptive=True)  # sigma_b = m/20
    with pytest.raises(RuleConfigError, match=r"clipped_count_stddev=0\.5.*raise clipped_count_stddev above 0\.5"):
        w.check_clients(10)  # 2 sigma_b = 1 = z
    with pytest.raises(RuleConfigError, match="noise_multiplier=1"):
        w(rows(10, 4), ctx())
    assert w.rounds == 0
    w.check_clients(30)  # sigma_b = 1.5
    with pytest.raises(RuleConfigError, match=r"clipped_count_stddev=0\.4"):
        dp(Mean(), noise_multiplier=1.0, clipping_norm=1.0, adaptive=True, clipped_count_stddev=0.4)


# ------------------------------------------------------------------------------------------- accounting


def flower_epsilon(z: float, rounds: int, delta: float, m: int = 10, population: int = 100) -> float:
    """Flower 1.41's accountant exactly as its fixed-clipping wrapper drives it on FedAvg (its only accepted setup)."""
    config = PrivacyConfig(
        target_delta=delta,
        population_size=population,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
    )
    accountant = RdpAccountant(config)
    wrapper = DifferentialPrivacyServerSideFixedClipping(FedAvg(), z, 1.0, m, accountant=accountant)
    for server_round in range(1, rounds + 1):
        wrapper._prepare_accounting(server_round, [object()] * m)  # the round's m sampled messages
        wrapper._compose_release(wrapper._pop_pending_event(server_round))
    assert accountant.num_releases == rounds
    return wrapper.privacy_spent().epsilon


def test_epsilon_is_opacus_rdp_over_the_rounds_aggregated() -> None:
    w = dp(Mean(), noise_multiplier=1.1, clipping_norm=1.0)
    assert w.epsilon == 0.0 and w.rounds == 0
    x = rows(10, 8)
    for t in range(1, 8):
        w.check_clients(10)
        out = w(x, ctx(seed=t))
        direct = RDPAccountant()
        direct.history = [(1.1, 1.0, t)]
        assert out.info["dp_epsilon"] == pytest.approx(direct.get_epsilon(DELTA, alphas=list(RDP_ORDERS)), rel=1e-12)
    assert w.rounds == 7
    assert w._accountant.history == [(1.1, 1.0, 7)]
    # with Opacus' default orders the same history gives this very number here (optimum at an order both have)
    assert w.epsilon == pytest.approx(direct.get_epsilon(DELTA), rel=1e-12)


def test_a_round_the_adapter_skips_adds_nothing() -> None:
    """The adapter skips a round when check_clients refuses its replies; only aggregated rounds are accounted."""
    w = dp(Median(), noise_multiplier=1.0, clipping_norm=1.0)
    w(rows(5, 4), ctx())
    one = w.epsilon
    with pytest.raises(RuleConfigError, match="n=2"):
        w.check_clients(2)
    assert w.rounds == 1 and w.epsilon == one
    w(rows(5, 4), ctx())
    assert w.rounds == 2 and w.epsilon > one


@pytest.mark.parametrize(
    ("z", "rounds", "delta"),
    [(1.1, 7, 1e-5), (0.8, 200, 1e-5), (2.0, 1, 1e-7), (5.0, 300, 1e-5), (50.0, 1, 1e-7), (0.3, 100, 1e-3)],
)
def test_epsilon_matches_flowers_own_accountant(z: float, rounds: int, delta: float) -> None:
    """Same RDP orders, same conversion: equal up to float rounding (measured <= 2e-15 relative).

    (2.0, 1, 1e-7) has its optimum at order 11 and (50.0, 1, 1e-7) at 256: with Opacus' default orders (no 11,
    nothing above 63) the epsilon would be 2.5e-4 and 114 % larger there; both cases pin the choice of orders.
    """
    w = dp(Mean(), noise_multiplier=z, clipping_norm=1.0, delta=delta)
    w._accountant = RDPAccountant()
    w._accountant.history = [(z, 1.0, rounds)]
    w.rounds = rounds
    assert w.epsilon == pytest.approx(flower_epsilon(z, rounds, delta), rel=1e-12)


def test_zero_noise_has_no_finite_epsilon() -> None:
    w = dp(Median(), noise_multiplier=0.0, clipping_norm=1.0)
    out = w(rows(5, 4), ctx())
    assert out.info["dp_epsilon"] == math.inf and w.rounds == 1


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"clipping_norm": 0.0}, "clipping_norm"),
        ({"clipping_norm": "1"}, "clipping_norm"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"adaptive": 1}, "adaptive"),
        ({"target_quantile": 1.5}, "target_quantile"),
        ({"clip_norm_lr": 0.0}, "clip_norm_lr"),
        ({"clipped_count_stddev": -1.0}, "clipped_count_stddev"),
    ],
)
def test_bad_values_name_the_key(kw: dict[str, object], key: str) -> None:
    args: dict[str, object] = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": DELTA, **kw}
    with pytest.raises(RuleConfigError, match=rf"central_dp: {key} must"):
        CentralDP(rule=Mean(), **args)  # type: ignore[arg-type]


def test_bad_rule_is_refused() -> None:
    with pytest.raises(RuleConfigError, match="rule must be a configured rule"):
        CentralDP(rule=object(), noise_multiplier=1.0, clipping_norm=1.0, delta=DELTA)  # type: ignore[arg-type]
    once = CentralDP(Mean(), noise_multiplier=1.0, clipping_norm=1.0, delta=DELTA)  # rule may be positional
    with pytest.raises(RuleConfigError, match="already wrapped"):
        dp(once, noise_multiplier=1.0, clipping_norm=1.0)
