"""Checkpoint and resume: a run whose ServerApp dies mid-round goes on from its last completed round.

The ServerApp is stopped in round 3 after the clients trained (and saved their
own state for round 3), the worst moment; the resumed run (a new grid: new
SuperNodes, state only on disk) must end with exactly the model and the
metrics of an uninterrupted run with the same seed, each round once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from fake_grid import FakeGrid, final_model, lines_of, make_run, summary_of

from server.app import run_federation
from server.checkpoint import checkpoint_path
from tests.test_federation_e2e import free_port_block, read_lines, run_cli

ROUNDS = ["federation.num_rounds=4"]

#: rules and settings whose state crosses rounds: the rule's (FoolsGold's history, centered clipping's center,
#: the PCA stack, central DP's accountant and clip norm), the server's (FLTrust's momentum), the clients' (DP ledger)
STATEFUL = {
    "fedavg": [],
    "foolsgold": ["strategy=foolsgold"],
    "centered_clipping": ["strategy=centered_clipping"],
    "pca_detect": [
        "strategy=pca_detect",
        "attack=label_flip",
        "attack.num_malicious=2",
        "strategy.start_round=2",
        "federation.num_clients=6",
        "federation.clients_per_round=6",
    ],  # fmt: skip
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


def test_a_deployment_stopped_after_round_2_resumes_to_the_uninterrupted_runs_model(tmp_path, fmnist_root):
    """SuperLink, ServerApp and SuperNodes all stop; ``poisonlab resume=`` starts new ones and finishes the run."""
    small = ["model=mlp", "federation.num_clients=3", "federation.clients_per_round=3", "federation.num_rounds=4",
             "partition.samples_per_client=64", "client.batch_size=32", "output.plots=false", "seed=5"]  # fmt: skip
    engine = ["engine=deployment", "engine.tls=false", "engine.auth=false", f"engine.base_port={free_port_block(4)}"]
    folder = tmp_path / "run"
    argv = [sys.executable, "-m", "scripts.run", *small, *engine, f"hydra.run.dir={folder}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = folder / "checkpoint" / "server.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=False)["round"] >= 2:
            break
        time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    stopped = json.loads((folder / "summary.json").read_text())
    assert stopped["status"] == "failed" and 2 <= stopped["rounds_completed"] < 4

    out = run_cli(f"resume={folder}", *engine)
    assert "complete" in out.stdout
    lines = read_lines(folder)
    assert [line["round"] for line in lines] == [0, 1, 2, 3, 4]
    assert json.loads((folder / "summary.json").read_text())["status"] == "complete"

    reference = make_run(tmp_path / "reference", *small)
    run_federation(FakeGrid(3), reference)
    expected = [json.loads(row) for row in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    assert [line["accuracy"] for line in lines] == [line["accuracy"] for line in expected]
    got = torch.load(folder / "final_model.pt", weights_only=True)
    want = torch.load(tmp_path / "reference" / "final_model.pt", weights_only=True)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_resume_refuses_what_it_cannot_continue_before_anything_starts(tmp_path, fmnist_root):
    from scripts.config import ConfigError
    from scripts.run import prepare_resume

    with pytest.raises(ConfigError, match="no config.json there"):
        prepare_resume(tmp_path)
    done = make_run(tmp_path / "done", *ROUNDS)
    run_federation(FakeGrid(nodes(done)), done)
    with pytest.raises(ConfigError, match="the run is complete"):
        prepare_resume(tmp_path / "done")
    cut = make_run(tmp_path / "cut", *ROUNDS)
    with pytest.raises(ServerAppKilled):
        run_federation(FakeGrid(nodes(cut), plan={(2, None): killed}), cut)
    with pytest.raises(ConfigError, match=r"\['strategy=krum'\] would change what it computes"):
        prepare_resume(tmp_path / "cut", ["resume=x", "strategy=krum"])
    (tmp_path / "cut" / "checkpoint" / "server.pt").unlink()
    with pytest.raises(ConfigError, match="completed no round"):
        prepare_resume(tmp_path / "cut")


def test_the_command_line_names_a_bad_resume_and_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "scripts.run", f"resume={tmp_path}", "federation.num_rounds=9"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "no config.json there" in out.stderr or "would change what it computes" in out.stderr
