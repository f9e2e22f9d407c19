"""Privacy in the round loop, on the fake Grid: DP-SGD clients with whole-run accountants, budgets, central DP.

The SuperNodes run the real ClientApp handlers with one real Flower ``Context``
each, whose ``state`` carries a client's privacy ledger from one participation
to the next, as Flower's simulation and deployment keep it.
"""

from __future__ import annotations

import pytest
from fake_grid import federate
from opacus.accountants import RDPAccountant

from clients.state_store import ClientStateStore
from common.dp_training import sampling_plan
from common.privacy import NoiseSchedule

DP = ["dp=opacus", "federation.num_rounds=4", "federation.clients_per_round=2", "client.batch_size=8"]


def accountant_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RDPAccountant()
    for sigma, q, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta)


def test_each_client_reports_its_cumulative_epsilon_over_the_rounds_it_took_part_in(tmp_path, fmnist_root):
    lines, summary, grid = federate(tmp_path, *DP, "dp.schedule=linear", "dp.noise_multiplier=2.0",
                                    "dp.noise_end=1.0")  # fmt: skip
    schedule = NoiseSchedule(kind="linear", start=2.0, end=1.0, horizon=4)
    q, steps = sampling_plan(64, 8, 1)
    taken: dict[int, list[int]] = {}
    running_max = 0.0
    for line in lines[1:]:
        r = line["round"]
        assert sorted(int(c) for c in line["epsilon"]) == sorted(line["sampled"])  # participants only
        for cid in line["sampled"]:
            taken.setdefault(cid, []).append(r)
            history = [(schedule.sigma(t), q, steps) for t in taken[cid]]  # the rounds it sat out add nothing
            assert line["epsilon"][str(cid)] == pytest.approx(accountant_epsilon(history, 1e-5), abs=1e-6)
        running_max = max(running_max, *line["epsilon"].values())
        assert line["epsilon_max"] == pytest.approx(running_max)
        assert line["withheld"] == {} and line["diverged"] is False
    assert any(len(rounds) >= 2 and rounds[-1] - rounds[0] > len(rounds) - 1 for rounds in taken.values()), (
        "no client took part in non-consecutive rounds: pick another seed"
    )
    eps = [line["epsilon_max"] for line in lines[1:]]
    assert all(a <= b for a, b in zip(eps, eps[1:], strict=False)) and eps[0] > 0
    assert summary["final_epsilon_max"] == eps[-1]
    # each client's ledger in its node's state store is what it reported
    store = ClientStateStore(tmp_path / "checkpoint" / "clients")
    for cid, rounds in taken.items():
        assert len(store.load(cid, before_round=10**6)["ledger"]["sigmas"]) == len(rounds)


def test_a_client_over_its_budget_replies_without_an_update_and_the_round_goes_on(tmp_path, fmnist_root):
    # rounds of 8 steps at q = 1/8, sigma 1: epsilon 3.79 after one, 4.70 after two; a budget of 4 allows one
    lines, summary, _ = federate(tmp_path, *DP, "dp.epsilon_budget=4", "federation.clients_per_round=4",
                                 "strategy.on_failure=skip")  # fmt: skip
    assert lines[1]["withheld"] == {} and sorted(lines[1]["selected"]) == [0, 1, 2, 3]
    for line in lines[2:]:
        assert sorted(line["withheld"]) == ["0", "1", "2", "3"]
        assert all("dp.epsilon_budget=4" in reason for reason in line["withheld"].values())
        assert line["rejected"] == {} and line["selected"] == []
        assert line["skipped"] is not None and "0 valid replies" in line["skipped"]
        assert line["epsilon_max"] == lines[1]["epsilon_max"] == pytest.approx(3.793, abs=1e-3)  # nothing more spent
    assert summary["status"] == "complete"


def test_opacus_trains_the_batchnorm_cnn_as_groupnorm_on_server_and_clients(tmp_path, fmnist_root):
    lines, summary, _ = federate(tmp_path, *DP, "model=fmnist_cnn", "federation.num_rounds=1")
    assert summary["status"] == "complete" and lines[1]["rejected"] == {}
    assert lines[1]["epsilon_max"] > 0


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
def test_central_dp_reports_noise_clipping_and_a_growing_epsilon_with_any_rule(tmp_path, fmnist_root, strategy):
    lines, summary, _ = federate(tmp_path, "dp=central_fixed", f"strategy={strategy}", "dp.noise_multiplier=3",
                                 "dp.clipping_norm=0.5", "federation.num_rounds=2")  # fmt: skip
    m = 4
    for line in lines[1:]:
        info = line["aggregation"]
        assert info["dp_clip_norm"] == 0.5 and info["dp_noise_multiplier"] == 3
        assert info["dp_sensitivity"] == pytest.approx(0.5 / m if strategy == "fedavg" else 1.0)
        assert info["dp_noise_std"] == pytest.approx(3 * info["dp_sensitivity"])
        assert line["central_epsilon"] == info["dp_epsilon"]
    assert 0 < lines[1]["central_epsilon"] < lines[2]["central_epsilon"] == summary["final_central_epsilon"]
    assert lines[2]["central_epsilon"] == pytest.approx(accountant_epsilon([(3.0, 1.0, 2)], 1e-5), rel=1e-3)


def test_no_noise_means_no_finite_epsilon_and_is_written_as_null(tmp_path, fmnist_root):
    lines, summary, _ = federate(tmp_path, *DP, "dp.noise_multiplier=0", "federation.num_rounds=1")
    line = lines[1]
    assert line["epsilon_max"] is None and all(v is None for v in line["epsilon"].values())
    assert sorted(int(c) for c in line["epsilon"]) == sorted(line["sampled"])
    assert "final_epsilon_max" not in summary  # JSON has no infinity: never a fake number
    assert (tmp_path / "metrics.jsonl").read_text().count("Infinity") == 0
