"""Faults of a real deployment: a SuperNode killed between rounds, one that restarts, one that sends garbage.

A loopback deployment (TLS and authentication on, as by default) of three
SuperNodes; once round 1 is recorded, SuperNode 2's process group is killed.
Round 2 must still complete within ``federation.round_timeout`` with the two
replies that arrived, client 2 recorded as ``failed`` (never scored, never
averaged), and the global model must stay finite and keep learning from the
others.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from scripts.deploy import Endpoint, Topology, run_deployment
from scripts.flower_run import free_port, marked_processes
from tests.server.fake_grid import make_run

HOST = "127.0.0.1"
OVERRIDES = ["model=mlp", "federation.num_clients=3", "federation.clients_per_round=3", "federation.num_rounds=2",
             "federation.round_timeout=20", "partition.samples_per_client=64", "client.batch_size=32",
             "client.lr=0.05", "device=cpu", "output.plots=false", "seed=2"]  # fmt: skip


def processes_with_arg(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_supernode_killed_between_rounds_is_recorded_failed_and_the_round_completes(tmp_path, fmnist_root):
    run = make_run(tmp_path, *OVERRIDES)
    killed: list[int] = []

    key = str(tmp_path / "flower" / "certs" / "supernodes" / "supernode-2.key")  # only SuperNode 2 of this run

    def kill_supernode_2_after_round_1(row: dict) -> None:
        if row["round"] == 1 and not killed:
            for pid in processes_with_arg(key):
                os.killpg(pid, signal.SIGKILL)  # the SuperNode and the SuperExec it started
                killed.append(pid)

    topology = Topology(Endpoint(HOST, free_port(HOST)), [Endpoint(HOST, free_port(HOST)) for _ in range(3)])
    run_deployment(run.cfg, topology, client_threads=1, timeout=300, on_round=kill_supernode_2_after_round_1)

    assert killed, "SuperNode 2 was not found to kill"
    lines = [json.loads(row) for row in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 1, 2]
    assert lines[1]["failed"] == {} and lines[1]["selected"] == [0, 1, 2]
    assert lines[2]["sampled"] == [0, 1, 2]
    assert list(lines[2]["failed"]) == ["2"] and "round timeout" in lines[2]["failed"]["2"]
    assert lines[2]["selected"] == [0, 1]  # averaged over the replies that arrived
    assert lines[2]["seconds"] < 20 + 15  # waited for the round timeout, not longer
    assert lines[2]["diverged"] is False and lines[2]["loss"] < lines[0]["loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert marked_processes("FLWR_HOME", str(tmp_path / "flower" / "home")) == []
