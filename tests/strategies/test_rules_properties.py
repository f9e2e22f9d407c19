"""Properties every rule must have: order invariance, tolerance to outliers, dtype and device."""

from __future__ import annotations

import pytest
import torch
from rule_cases import CASES, DETECTORS, Case, D, F, N, context_for, honest_updates

from strategies.rules.base import Aggregate
from strategies.rules.bulyan import bulyan
from strategies.rules.flame import flame
from strategies.rules.krum import krum, multikrum
from strategies.rules.median import median
from strategies.rules.trimmed_mean import trimmed_mean


def _same_decision(a: Aggregate, b: Aggregate, perm: torch.Tensor) -> None:
    """``b`` was computed on ``rows[perm]``: map its row indices back and compare with ``a``."""
    torch.testing.assert_close(b.vector, a.vector, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(b.weights, a.weights[perm], rtol=1e-9, atol=1e-12)
    assert sorted(perm[b.selected].tolist()) == a.selected.tolist()
    assert sorted(perm[b.flagged].tolist()) == a.flagged.tolist()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_invariant_to_the_order_of_clients(case: Case) -> None:
    plain, shuffled = case.make(), case.make()
    for rnd in range(1, 4):  # several rounds: stateful rules must stay in step
        x = honest_updates(N, D, seed=rnd)
        x[:2] += 2.0  # two clients apart, so filtering rules have something to decide
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(100 + rnd))
        ids = [10 * i + 3 for i in range(N)]  # client ids travel with their rows
        a = plain(x, context_for(x, rnd, ids=ids))
        b = shuffled(x[perm], context_for(x, rnd, ids=[ids[i] for i in perm.tolist()]))
        _same_decision(a, b, perm)


def _attacked(seed: int) -> tuple[torch.Tensor, list[int]]:
    """15 rows, f = 3 of them far away in different directions."""
    x = honest_updates(15, 20, seed)
    bad = [2, 7, 11]
    g = torch.Generator().manual_seed(seed + 1)
    x[bad] = 1e4 * torch.randn(3, 20, generator=g, dtype=x.dtype)
    return x, bad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_krum_family_and_bulyan_select_only_honest_rows(seed: int) -> None:
    x, bad = _attacked(seed)
    for result in (
        krum(x, f=3),
        multikrum(x, f=3),
        multikrum(x, f=3, m=5),
        bulyan(x, f=3),
        bulyan(x, f=3, selection="multikrum"),
    ):
        assert not set(result.selected.tolist()) & set(bad)
        assert result.flagged.tolist() == []  # selection rules leave rows out; only detectors flag
        assert float(result.weights[bad].abs().sum()) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_median_and_trimmed_mean_stay_in_the_honest_range(seed: int) -> None:
    x, bad = _attacked(seed)
    honest = x[[i for i in range(15) if i not in bad]]
    low, high = honest.min(dim=0).values, honest.max(dim=0).values
    for result in (median(x), trimmed_mean(x, beta=0.2), bulyan(x, f=3)):  # int(0.2 * 15) = 3 cut
        assert bool(((result.vector >= low) & (result.vector <= high)).all())


def test_flame_flags_updates_pointing_elsewhere() -> None:
    x, bad = _attacked(0)
    x[bad] = -x[[0, 1, 3]] * 3  # a minority pointing the other way
    result = flame(x, noise_lambda=0.0)
    assert set(bad) <= set(result.flagged.tolist())
    # HDBSCAN's single-cluster labelling keeps the tightest n // 2 + 1 = 8 or more, never an attacker
    assert len(result.selected) >= 8
    assert not set(result.selected.tolist()) & set(bad)


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_dtype_and_device_are_preserved(case: Case, dtype: torch.dtype, device: str) -> None:
    x = honest_updates(N, D, seed=5, dtype=dtype).to(device)
    ctx = context_for(x)
    result = case.make()(x, ctx)
    assert result.vector.dtype == dtype and result.vector.device == x.device
    assert result.vector.shape == (D,)
    assert result.weights.shape == (N,) and result.weights.device == x.device
    assert result.selected.dtype == torch.long and result.flagged.dtype == torch.long
    assert bool(torch.isfinite(result.vector.float()).all())
    if dtype != torch.bfloat16:  # bfloat16 rounding may legitimately flip a selection
        wide = x.to(torch.float64).cpu()
        reference = case.make()(wide, context_for(wide))
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(result.vector.double().cpu(), reference.vector, rtol=tol, atol=tol)


def test_rule_classes_declare_whether_they_need_a_server_update() -> None:
    for case in CASES:
        rule = case.make()
        assert getattr(rule, "needs_server_update", False) == (case.name == "fltrust")
        rule.check_clients(N)  # the shared cases are all satisfiable at n = N
    assert F == 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_only_detectors_flag_and_every_round_here_is_active(case: Case) -> None:
    rule = case.make()
    assert rule.detects is (case.name in DETECTORS)
    x = honest_updates(N, D, seed=7)
    x[:3] = -5.0 * x[:3]  # three rows far away and pointing elsewhere: something to leave out or flag
    result = rule(x, context_for(x))
    assert result.active is True  # pca_detect starts at round 1 and N >= min_rows here
    if not rule.detects:
        assert result.flagged.tolist() == [], case.name


def test_distances_stay_accurate_next_to_a_huge_outlier() -> None:
    # The outlier drags the mean 1e5 away: plain float32 Gram-trick distances between the honest
    # rows would drown in rounding; the rule re-centres on the medoid row and keeps them exact.
    from strategies.rules._common import pairwise_sq_dists

    x = honest_updates(10, 50, seed=3, dtype=torch.float32)
    x[9] = 1e6
    exact = torch.cdist(x[:9].double(), x[:9].double()) ** 2
    got = pairwise_sq_dists(x)[:9, :9].double()
    torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-3)
    wide = x.double()
    assert krum(x, f=1).selected.tolist() == krum(wide, f=1).selected.tolist()
    assert bulyan(x, f=1).selected.tolist() == bulyan(wide, f=1).selected.tolist()
