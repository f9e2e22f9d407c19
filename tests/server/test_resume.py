"""Checkpoint and resume: a run whose ServerApp dies mid-round goes on from its last completed round.

The ServerApp is stopped in round 3 after the clients trained (and saved their
own state for round 3), the worst moment; the resumed run (a new grid: new
SuperNodes, state only on disk) must end with exactly the model and the
metrics of an uninterrupted run with the same seed, each round once.
"""

from __future__ import annotations

import json

import pytest
import torch
from fake_grid import FakeGrid, final_model, lines_of, make_run, summary_of

from server.app import run_federation
from server.checkpoint import checkpoint_path

ROUNDS = ["federation.num_rounds=4"]

#: rules and settings whose state crosses rounds: the rule's (FoolsGold's history, centered clipping's center,
#: the PCA stack, central DP's accountant and clip norm), the server's (FLTrust's momentum), the clients' (DP ledger)
STATEFUL = {
    "fedavg": [],
    "foolsgold": ["strategy=foolsgold"],
    "centered_clipping": ["strategy=centered_clipping"],
    "pca_detect": ["strategy=pca_detect", "attack=label_flip", "attack.num_malicious=2", "strategy.start_round=2",
                   "federation.num_clients=6", "federation.clients_per_round=6"],  # fmt: skip
    "fltrust": ["strategy=fltrust", "strategy.root_size=32"],
    "central_dp": ["dp=central_adaptive", "dp.noise_multiplier=0.1"],
    "opacus": ["dp=opacus", "dp.noise_multiplier=1.0", "client.batch_size=16"],
}


class ServerAppKilled(BaseException):
    """The ServerApp process dying (not an error the round loop may catch)."""


def killed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    raise ServerAppKilled


def comparable(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def nodes(run) -> int:
    return run.federation.num_clients


@pytest.mark.parametrize("name", list(STATEFUL))
def test_a_resumed_run_ends_with_the_model_and_metrics_of_an_uninterrupted_one(tmp_path, fmnist_root, name):
    overrides = [*ROUNDS, *STATEFUL[name]]
    whole = make_run(tmp_path / "whole", *overrides)
    run_federation(FakeGrid(nodes(whole)), whole)

    first = make_run(tmp_path / "cut", *overrides)
    with pytest.raises(ServerAppKilled):
        run_federation(FakeGrid(nodes(first), plan={(3, None): killed}), first)
    cut = tmp_path / "cut"
    assert [line["round"] for line in lines_of(cut)] == [0, 1, 2]
    assert summary_of(cut)["status"] == "failed"
    assert torch.load(checkpoint_path(cut), weights_only=False)["round"] == 2

    again = make_run(cut, *overrides, f"resume={cut}")
    run_federation(FakeGrid(nodes(again)), again)  # new SuperNodes: their state comes from disk
    assert [line["round"] for line in lines_of(cut)] == [0, 1, 2, 3, 4]
    assert comparable(lines_of(cut)) == comparable(lines_of(tmp_path / "whole"))
    resumed, reference = final_model(cut), final_model(tmp_path / "whole")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert summary_of(cut)["status"] == "complete" and summary_of(cut)["rounds_completed"] == 4
    # the config the run was started with stays its record
    assert json.loads((cut / "config.json").read_text())["resume"] is None


def test_a_round_recorded_but_not_checkpointed_is_run_again_not_counted_twice(tmp_path, fmnist_root):
    out = tmp_path / "run"
    run = make_run(out, *ROUNDS)
    run_federation(FakeGrid(nodes(run)), run)
    reference = comparable(lines_of(out))
    # back to the state after round 2, with round 3's line already written (a crash between the two)
    rounds_1_2 = make_run(tmp_path / "two", *ROUNDS)
    with pytest.raises(ServerAppKilled):
        run_federation(FakeGrid(nodes(rounds_1_2), plan={(3, None): killed}), rounds_1_2)
    two = tmp_path / "two"
    with (two / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"round": 3, "seconds": 1.0, "accuracy": 0.0}) + "\n")
    again = make_run(two, *ROUNDS, f"resume={two}")
    run_federation(FakeGrid(nodes(again)), again)
    assert comparable(lines_of(two)) == reference


def test_without_a_completed_round_there_is_nothing_to_resume(tmp_path, fmnist_root):
    from server.checkpoint import ResumeError

    first = make_run(tmp_path, *ROUNDS)
    with pytest.raises(ServerAppKilled):
        run_federation(FakeGrid(nodes(first), plan={(1, None): killed}), first)
    again = make_run(tmp_path, *ROUNDS, f"resume={tmp_path}")
    with pytest.raises(ResumeError, match="completed no round"):
        run_federation(FakeGrid(nodes(again)), again)


def test_a_checkpoint_of_another_config_is_refused(tmp_path, fmnist_root):
    from server.checkpoint import ResumeError

    first = make_run(tmp_path, *ROUNDS)
    with pytest.raises(ServerAppKilled):
        run_federation(FakeGrid(nodes(first), plan={(3, None): killed}), first)
    other = make_run(tmp_path, *ROUNDS, "client.lr=0.5", f"resume={tmp_path}")
    with pytest.raises(ResumeError, match="another config"):
        run_federation(FakeGrid(nodes(other)), other)
