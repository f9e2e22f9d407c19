"""Each rule against small examples worked out by hand (expected values in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from strategies.rules.base import RuleConfigError
from strategies.rules.bulyan import bulyan
from strategies.rules.centered_clipping import centered_clipping
from strategies.rules.flame import flame
from strategies.rules.fltrust import fltrust
from strategies.rules.geomed import geomed
from strategies.rules.krum import krum, multikrum
from strategies.rules.mean import mean
from strategies.rules.median import median
from strategies.rules.norm_bound import norm_bound
from strategies.rules.trimmed_mean import trim_count, trimmed_mean


def col(*values: float) -> torch.Tensor:
    """A one-coordinate update per value."""
    return torch.tensor(values, dtype=torch.float64)[:, None]


def idx(t: torch.Tensor) -> list[int]:
    return t.tolist()


# Krum on 0, 1, 2, 3, 100 with f = 1: n - f - 2 = 2 neighbours, squared distances.
#   scores: 0 -> 1 + 4 = 5; 1 -> 1 + 1 = 2; 2 -> 1 + 1 = 2; 3 -> 1 + 4 = 5; 100 -> 97^2 + 98^2
#   tie 1/2 (score 2): total distance of row 1 = 1+1+4+99^2 > row 2 = 4+1+1+98^2, so row 2 wins.
#   next tie 0/3 (score 5): total of row 0 = 1+4+9+100^2 > row 3 = 9+4+1+97^2, so row 3 ranks first.
KRUM_X = col(0, 1, 2, 3, 100)


def test_krum_picks_lowest_score_and_breaks_ties_by_centrality() -> None:
    out = krum(KRUM_X, f=1)
    assert out.vector.item() == 2.0
    assert idx(out.selected) == [2]
    assert idx(out.flagged) == []  # Krum selects; the rows it leaves out are not declared malicious
    assert out.weights.tolist() == [0, 0, 1, 0, 0]
    assert out.info["neighbours"] == 2


def test_multikrum_averages_the_m_best() -> None:
    three = multikrum(KRUM_X, f=1, m=3)  # rows 2, 1, 3 -> mean of 1, 2, 3
    assert three.vector.item() == pytest.approx(2.0)
    assert idx(three.selected) == [1, 2, 3]
    assert idx(three.flagged) == []
    default = multikrum(KRUM_X, f=1)  # m = n - f = 4: rows 0..3 -> 1.5
    assert default.vector.item() == pytest.approx(1.5)
    assert idx(default.selected) == [0, 1, 2, 3]
    assert idx(default.flagged) == []
    assert default.weights.tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]


def test_median_odd_and_even_n() -> None:
    odd = torch.tensor([[1.0, -4.0], [5.0, 0.0], [3.0, 9.0]])
    assert median(odd).vector.tolist() == [3.0, 0.0]
    # even n: middle values 2 and 4 -> 3 (torch.median alone would give 2); -1 and 0 -> -0.5
    even = torch.tensor([[1.0, -1.0], [2.0, 7.0], [10.0, -3.0], [4.0, 0.0]])
    out = median(even)
    assert out.vector.tolist() == [3.0, -0.5]
    assert torch.median(even, dim=0).values.tolist() == [2.0, -1.0]  # the definition we do not use
    # shares: coordinate 0 uses rows 1 and 3, coordinate 1 rows 0 and 3 (each middle value counts 1/2)
    assert out.weights.tolist() == [0.25, 0.25, 0.0, 0.5]
    assert idx(out.selected) == [0, 1, 3]
    assert idx(out.flagged) == []


def test_trimmed_mean_cuts_int_beta_n_from_each_side() -> None:
    x = col(4, 100, 2, -50, 3)
    out = trimmed_mean(x, beta=0.2)  # int(0.2 * 5) = 1 -> mean(2, 3, 4)
    assert out.vector.item() == pytest.approx(3.0)
    assert out.info["trimmed_each_side"] == 1
    assert out.weights.tolist() == pytest.approx([1 / 3, 0, 1 / 3, 0, 1 / 3])
    assert trimmed_mean(x, beta=0.0).vector.item() == pytest.approx(59 / 5)  # plain mean
    assert trimmed_mean(x, beta=0.1).vector.item() == pytest.approx(59 / 5)  # int(0.5) = 0
    # floor in floating point, as Flower/scipy: 0.29 * 100 = 28.999999999999996
    assert trim_count(0.29, 100) == 28
    assert trim_count(0.49, 10) == 4


def test_bulyan_by_hand() -> None:
    # n = 7, f = 1: theta = 5 by iterated Krum, beta = 3 values closest to the median.
    # Step r=7 (k=4): rows 2 and 3 tie at 10, row 3 (value 3) is more central -> pick 3.
    # r=6 (k=3): row 2 scores 1+1+4... = 9, lowest -> pick 2.  r=5 (k=2): rows 1 and 4 tie at 10,
    # row 4 more central -> pick 4.  r=4 (k=1): rows 0 and 1 tie at 1, row 1 more central.
    # r=3 (k=1): rows 0 and 5 tie at 25, row 5 more central. Selected values 1..5, median 3,
    # three closest 2, 3, 4 -> 3.
    x = col(0, 1, 2, 3, 4, 5, 1000)
    out = bulyan(x, f=1)
    assert out.vector.item() == pytest.approx(3.0)
    assert idx(out.selected) == [1, 2, 3, 4, 5]
    assert idx(out.flagged) == []  # rows 0 and 6 are left out, not flagged
    assert out.weights.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0])
    assert out.info == {"theta": 5.0, "beta": 3.0}


def test_geomed_is_the_median_in_one_dimension_and_honours_weights() -> None:
    x = col(0, 1, 10)
    out = geomed(x, max_iter=500, tol=0.0, nu=1e-9)
    assert out.vector.item() == pytest.approx(1.0, abs=1e-4)
    assert idx(out.flagged) == []
    assert float(out.weights.sum()) == pytest.approx(1.0)
    # weighted: weight 5 of 7 on the point 10 -> the weighted geometric median is 10
    heavy = geomed(x, weights=torch.tensor([1.0, 1.0, 5.0]), max_iter=500, tol=0.0, nu=1e-9)
    assert heavy.vector.item() == pytest.approx(10.0, abs=1e-4)
    # the default (RFA's 4 iterations) only approximates; the objective never increases
    rough = geomed(x)
    assert rough.info["iterations"] <= 4
    assert rough.info["objective"] <= (1 / 3) * (1 + 9 + 1) + 1e-12  # objective at the mean (11/3)


def test_centered_clipping_one_iteration() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5 around the centre 0
    out = centered_clipping(x, tau=1.0)  # (0.6, 0.8) and (0.3, 0.4) -> mean (0.45, 0.6)
    assert out.vector.tolist() == pytest.approx([0.45, 0.6])
    assert out.weights.tolist() == pytest.approx([0.1, 0.5])  # (1/5)/2 and 1/2
    assert out.info["center_weight"] == pytest.approx(0.4)
    assert out.info["clipped"] == 1
    # around a centre c: v = c + mean(clip(x_i - c))
    c = torch.tensor([3.0, 4.0])
    around = centered_clipping(x, tau=1.0, center=c)  # x0 - c = 0 (kept), x1 - c has norm 4.5 -> 1
    step = (x[1] - c) / 4.5
    assert around.vector.tolist() == pytest.approx((c + step / 2).tolist())


def test_norm_bound_clips_then_averages_then_adds_noise() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    out = norm_bound(x, max_norm=1.0)
    assert out.vector.tolist() == pytest.approx([0.45, 0.6])
    assert out.info["clipped"] == 1
    assert idx(out.flagged) == []
    g = torch.Generator().manual_seed(7)
    noisy = norm_bound(x, max_norm=1.0, sigma=0.5, generator=g)
    expected_noise = 0.5 * torch.randn(2, generator=torch.Generator().manual_seed(7))
    assert noisy.vector.tolist() == pytest.approx((out.vector + expected_noise).tolist())
    with pytest.raises(RuleConfigError, match="generator"):
        norm_bound(x, max_norm=1.0, sigma=0.5)


def test_fltrust_by_hand() -> None:
    g0 = torch.tensor([1.0, 0.0])
    x = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [1.0, 1.0]])
    # trust: cos = 1, 0, -1, 1/sqrt2 -> ReLU -> 1, 0, 0, 1/sqrt2; rescaled rows (1, 0) and (1, 1)/sqrt2
    out = fltrust(x, server_update=g0)
    r = 1 / math.sqrt(2)
    expected = [(1 + r * r) / (1 + r), (r * r) / (1 + r)]
    assert out.vector.tolist() == pytest.approx(expected)
    assert idx(out.flagged) == [1, 2]
    assert idx(out.selected) == [0, 3]
    # the vector is exactly weights @ updates
    assert (out.weights @ x).tolist() == pytest.approx(expected)


def test_fltrust_with_no_trusted_client_returns_zero() -> None:
    out = fltrust(torch.tensor([[-1.0, 0.0], [0.0, 2.0]]), server_update=torch.tensor([1.0, 0.0]))
    assert out.vector.tolist() == [0.0, 0.0]
    assert idx(out.flagged) == [0, 1]


def test_flame_keeps_the_majority_direction_and_clips_at_the_median_norm() -> None:
    x = torch.tensor(
        [
            [1.0, 0.1],  # honest directions, close in angle
            [2.0, -0.1],
            [4.0, 0.0],
            [0.0, 1.0],  # a second, smaller direction
            [0.1, 3.0],
        ],
        dtype=torch.float64,
    )
    out = flame(x, noise_lambda=0.0)
    assert idx(out.flagged) == [3, 4]
    norms = x.norm(dim=1)
    s = float(norms.median())  # odd n: the middle norm (2.0025)
    kept = x[:3] * torch.clamp(s / norms[:3], max=1.0)[:, None]
    assert out.vector.tolist() == pytest.approx(kept.mean(dim=0).tolist())
    assert out.info["clip_bound"] == pytest.approx(s)
    assert out.info["clipped"] == 1  # only (4, 0) is longer than the median norm
    assert out.info["cluster_size"] == 3


def test_flame_noise_is_lambda_times_the_bound_from_the_generator() -> None:
    x = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.3, 0.4]])  # same direction; norms 5, 10, 0.5
    quiet = flame(x, noise_lambda=0.0)
    noisy = flame(x, noise_lambda=0.1, generator=torch.Generator().manual_seed(3))
    z = torch.randn(2, generator=torch.Generator().manual_seed(3))
    assert noisy.info["noise_std"] == pytest.approx(0.5)  # 0.1 * median norm 5
    assert noisy.vector.tolist() == pytest.approx((quiet.vector + 0.5 * z).tolist())


def test_mean_example_rule_still_works_with_the_package() -> None:
    assert mean(col(1, 2, 6)).vector.item() == pytest.approx(3.0)
