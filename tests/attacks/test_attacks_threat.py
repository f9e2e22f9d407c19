"""Threat model: malicious set, attack window, availability sampling (Tolpegin et al. 2020)."""

from __future__ import annotations

import math

import pytest
import torch

from attacks.threat import ThreatModel, draw_malicious, resolve_num_malicious

# ------------------------------------------------------ resolve_num_malicious


@pytest.mark.parametrize(
    ("num_clients", "fraction", "expected"),
    [(50, 0.3, 15), (50, 0.02, 1), (10, 0.25, 3), (10, 0.24, 2), (50, 0.0, 0), (50, 1.0, 50)],
)
def test_fraction_rounds_to_nearest_with_halves_up(num_clients: int, fraction: float, expected: int) -> None:
    assert resolve_num_malicious(num_clients, fraction=fraction) == expected


def test_count_is_passed_through() -> None:
    assert resolve_num_malicious(50, num_malicious=10) == 10
    assert resolve_num_malicious(50, num_malicious=0) == 0
    assert resolve_num_malicious(50, num_malicious=50) == 50


def test_count_and_fraction_both_given_is_an_error_naming_both() -> None:
    with pytest.raises(ValueError, match=r"num_malicious=10.*fraction=0\.2"):
        resolve_num_malicious(50, num_malicious=10, fraction=0.2)
    with pytest.raises(ValueError, match="exactly one"):
        resolve_num_malicious(50)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_malicious": 51}, r"num_malicious=51"),
        ({"num_malicious": -1}, r"num_malicious=-1"),
        ({"fraction": 1.5}, r"fraction=1\.5"),
        ({"fraction": -0.1}, r"fraction=-0\.1"),
    ],
)
def test_out_of_range_counts_are_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        resolve_num_malicious(50, **kwargs)


# ------------------------------------------------------------ draw_malicious


def test_malicious_set_is_sorted_distinct_and_in_range() -> None:
    chosen = draw_malicious(50, 10, seed=0)
    assert len(chosen) == 10
    assert chosen == sorted(set(chosen))
    assert all(0 <= c < 50 for c in chosen)


def test_malicious_set_is_reproducible_and_changes_with_the_seed() -> None:
    assert draw_malicious(50, 10, seed=7) == draw_malicious(50, 10, seed=7)
    sets = {tuple(draw_malicious(50, 10, seed=s)) for s in range(20)}
    assert len(sets) == 20  # 20 seeds, 20 different sets (collisions have prob ~1e-8)


def test_malicious_set_is_not_the_first_m() -> None:
    for seed in range(20):
        assert draw_malicious(50, 10, seed=seed) != list(range(10))


def test_malicious_sets_are_nested_in_the_count() -> None:
    small, large = draw_malicious(50, 5, seed=3), draw_malicious(50, 20, seed=3)
    assert set(small) <= set(large)


def test_malicious_draw_is_uniform_over_clients() -> None:
    # Each client is malicious with probability m/N = 0.2 over seeds.
    counts = torch.zeros(20)
    seeds = 400
    for seed in range(seeds):
        counts[draw_malicious(20, 4, seed=seed)] += 1
    p = 4 / 20
    tol = 4 * math.sqrt(p * (1 - p) / seeds)
    assert torch.all((counts / seeds - p).abs() < tol)


def test_draw_rejects_bad_seed_and_count() -> None:
    with pytest.raises(ValueError, match="seed=-1"):
        draw_malicious(10, 2, seed=-1)
    with pytest.raises(ValueError, match="num_malicious=11"):
        draw_malicious(10, 11, seed=0)


# --------------------------------------------------------------- ThreatModel


def test_from_seed_uses_draw_malicious_and_ranks_follow_sorted_ids() -> None:
    tm = ThreatModel.from_seed(num_clients=50, seed=5, fraction=0.2)
    assert list(tm.malicious) == draw_malicious(50, 10, seed=5)
    assert tm.num_malicious == 10
    assert set(tm.benign) == set(range(50)) - set(tm.malicious)
    assert [tm.attacker_rank(c) for c in tm.malicious] == list(range(10))
    assert all(tm.is_malicious(c) for c in tm.malicious)
    assert not any(tm.is_malicious(c) for c in tm.benign)
    with pytest.raises(ValueError, match=f"client {tm.benign[0]} is not malicious"):
        tm.attacker_rank(tm.benign[0])


def test_window_is_inclusive_and_open_ended() -> None:
    tm = ThreatModel(num_clients=10, malicious=[1, 2], start_round=3, end_round=5)
    assert [tm.active(r) for r in range(1, 8)] == [False, False, True, True, True, False, False]
    early = ThreatModel(num_clients=10, malicious=[1], end_round=74)  # "early only", E = 75
    late = ThreatModel(num_clients=10, malicious=[1], start_round=75)  # "late only"
    assert early.active(1) and early.active(74) and not early.active(75)
    assert not late.active(74) and late.active(75) and late.active(10_000)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"malicious": [1, 10]}, r"\[10\].*num_clients=10"),
        ({"malicious": [1, 1]}, "distinct"),
        ({"malicious": [1], "start_round": 5, "end_round": 4}, "start_round=5 > end_round=4"),
        ({"malicious": [1], "start_round": 0}, "start_round=0"),
        ({"malicious": [1], "availability": 1.2}, "availability=1.2"),
    ],
)
def test_threat_model_config_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ThreatModel(num_clients=10, **kwargs)


def test_round_size_is_checked_against_the_benign_group_when_windowed() -> None:
    tm = ThreatModel(num_clients=10, malicious=list(range(6)), start_round=10)
    with pytest.raises(ValueError, match=r"k=5 > 4 benign"):
        tm.check_clients_per_round(5)
    with pytest.raises(ValueError, match="k=11"):
        ThreatModel(num_clients=10, malicious=[0]).check_clients_per_round(11)
    ThreatModel(num_clients=10, malicious=list(range(6))).check_clients_per_round(10)  # no window: fine


# ------------------------------------------------------------ sample_round


def _malicious_share(tm: ThreatModel, k: int, rounds: int, server_round: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    mal = 0
    for _ in range(rounds):
        picked = tm.sample_round(server_round, k, g)
        assert len(picked) == k and len(set(picked)) == k, picked
        assert all(0 <= c < tm.num_clients for c in picked)
        mal += sum(tm.is_malicious(c) for c in picked)
    return mal / (k * rounds)


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.8])
def test_availability_fills_each_slot_with_probability_alpha(alpha: float) -> None:
    tm = ThreatModel.from_seed(num_clients=50, seed=0, num_malicious=10, availability=alpha)
    k, rounds = 5, 2000
    share = _malicious_share(tm, k, rounds, server_round=1, seed=1)
    # 10 >= k malicious, so no slot ever overflows: the count is Binomial(k * rounds, alpha).
    tol = 4 * math.sqrt(alpha * (1 - alpha) / (k * rounds))
    assert abs(share - alpha) < tol


def test_no_availability_is_uniform_sampling_of_everyone() -> None:
    tm = ThreatModel.from_seed(num_clients=50, seed=0, num_malicious=10)
    k, rounds, p = 5, 2000, 10 / 50
    share = _malicious_share(tm, k, rounds, server_round=1, seed=2)
    # Hypergeometric per round: var = k p (1 - p) (N - k) / (N - 1).
    std = math.sqrt(k * p * (1 - p) * (50 - k) / 49 / rounds) / k
    assert abs(share - p) < 4 * std


def test_outside_the_window_only_benign_clients_are_sampled() -> None:
    tm = ThreatModel.from_seed(num_clients=20, seed=0, num_malicious=10, start_round=5, availability=1.0)
    assert _malicious_share(tm, 5, 200, server_round=4, seed=3) == 0.0
    tm_uniform = ThreatModel.from_seed(num_clients=20, seed=0, num_malicious=10, end_round=3)
    assert _malicious_share(tm_uniform, 5, 200, server_round=4, seed=3) == 0.0
    assert _malicious_share(tm, 5, 50, server_round=5, seed=3) == 1.0


def test_exhausted_group_is_filled_from_the_other() -> None:
    tm = ThreatModel(num_clients=10, malicious=[3, 7], availability=1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        picked = tm.sample_round(1, 5, g)
        assert len(set(picked)) == 5
        assert {3, 7} <= set(picked)  # both malicious, then 3 benign
    tm0 = ThreatModel(num_clients=10, malicious=list(range(8)), availability=0.0)
    for _ in range(50):
        picked = tm0.sample_round(1, 4, g)
        assert {8, 9} <= set(picked) and len(set(picked)) == 4  # both benign, then 2 malicious


def test_sampling_is_reproducible_from_the_generator() -> None:
    tm = ThreatModel.from_seed(num_clients=30, seed=1, num_malicious=6, availability=0.5)
    draws = [[tm.sample_round(r, 6, torch.Generator().manual_seed(9)) for r in (1, 2)] for _ in range(2)]
    assert draws[0] == draws[1]
