"""Faults of a real deployment: a SuperNode killed between rounds, one that restarts, one that sends garbage.

A loopback deployment (TLS and authentication on, as by default) of three
SuperNodes, SuperNode 0 started with node config ``fault="shape"`` (its
replies carry a tensor of the wrong shape): every round its reply must be
``rejected``, never averaged. Once round 1 is recorded, SuperNode 2 is killed
(SIGKILL). Flower's SuperLink holds a killed authenticated SuperNode online
until two heartbeat intervals (2 x 30 s) after its last heartbeat, then
answers the messages to it with "Node Unavailable": round 2 must end then, with
client 2 ``failed`` for that reason (matched to the message it answers, though
the SuperLink sent it) and the others aggregated. Until that moment the
SuperLink also refuses the SuperNode's key (a restart exits with code 305), so
SuperNode 2 is restarted, with its own command line and environment, once
round 2 is recorded. Meanwhile the ServerApp process is held (SIGSTOP, as a
slow server would be; well inside Flower's 2 x 30 s task heartbeat patience)
until the SuperLink has activated the restarted SuperNode, so that round 4 does
not depend on how fast a SuperNode starts on a loaded machine: round 3's
message to client 2 either found it still away or was served by the restarted
SuperNode, and in round 4 it serves client 2 again, with its state from round
1. The global model stays finite and keeps learning throughout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from scripts.deploy import Endpoint, Topology, run_deployment
from scripts.flower_run import free_port, marked_processes
from tests.server.fake_grid import make_run

HOST = "127.0.0.1"
OVERRIDES = ["model=mlp", "federation.num_clients=3", "federation.clients_per_round=3", "federation.num_rounds=4",
             "federation.round_timeout=90", "partition.samples_per_client=64", "client.batch_size=32",
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


def cmdline_of(pid: int) -> bytes:
    """Process ``pid``'s command line, NUL-separated (empty once it has exited)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def command_of(pid: int) -> tuple[list[str], dict[str, str], str]:
    """The command line, environment and working folder process ``pid`` was started with (Linux ``/proc``)."""
    proc = Path("/proc") / str(pid)
    argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
    env = dict(e.decode().split("=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
    return argv, env, os.readlink(proc / "cwd")


def test_faults_a_killed_supernode_fails_a_restarted_one_serves_again_a_garbage_one_is_rejected(tmp_path, fmnist_root):
    run = make_run(tmp_path, *OVERRIDES)
    killed: list[tuple[list[str], dict[str, str], str]] = []
    restarted: list[subprocess.Popen] = []
    key = str(tmp_path / "flower" / "certs" / "supernodes" / "supernode-2.key")  # only SuperNode 2 of this run
    home = str(tmp_path / "flower" / "home")

    def kill_after_round_1_restart_after_round_2(row: dict) -> None:
        if row["round"] == 1 and not killed:
            for pid in processes_with_arg(key):
                if Path(f"/proc/{pid}").exists() and os.getpgid(pid) == pid:  # the SuperNode's own group
                    killed.append(command_of(pid))
                    os.killpg(pid, signal.SIGKILL)  # the SuperNode and the SuperExec it started
        if row["round"] == 2 and killed and not restarted:
            held = [pid for pid in marked_processes("FLWR_HOME", home) if b"flwr-serverapp" in cmdline_of(pid)]
            for pid in held:
                os.kill(pid, signal.SIGSTOP)
            try:
                restarter.start()
                deadline = time.monotonic() + 40
                while activations_of_supernode_2() < 2 and time.monotonic() < deadline:
                    time.sleep(0.5)
            finally:
                for pid in held:
                    os.kill(pid, signal.SIGCONT)

    def activations_of_supernode_2() -> int:
        """How many times the SuperLink activated SuperNode 2 (its id is in its own log)."""
        found = re.search(r"SuperNode ID: (\d+)", (tmp_path / "flower" / "supernode-2.log").read_text())
        if found is None:
            return 0
        return (tmp_path / "flower" / "superlink.log").read_text().count(f"Activated node_id={found.group(1)}")

    def restart_until_admitted() -> None:
        argv, env, cwd = killed[0]
        deadline = time.monotonic() + 120
        with (tmp_path / "flower" / "supernode-2-restarted.log").open("a") as log:
            while time.monotonic() < deadline:
                proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
                restarted.append(proc)
                try:
                    proc.wait(timeout=10)  # refused: exits at once (code 305); admitted: keeps running
                except subprocess.TimeoutExpired:
                    return
                time.sleep(3)

    restarter = threading.Thread(target=restart_until_admitted, daemon=True)

    topology = Topology(
        Endpoint(HOST, free_port(HOST)),
        [Endpoint(HOST, free_port(HOST), node_config={"fault": "shape"} if i == 0 else {}) for i in range(3)],
    )
    try:
        run_deployment(run.cfg, topology, client_threads=1, timeout=400,
                       on_round=kill_after_round_1_restart_after_round_2)  # fmt: skip
    finally:
        restarter.join(timeout=0 if not restarter.is_alive() else 15)
        for proc in restarted:  # the launcher stops what carries its mark; make sure of it here too
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

    assert len(killed) == 1, "SuperNode 2 was not found to kill"
    assert restarted, "SuperNode 2 was not restarted"
    lines = [json.loads(row) for row in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 1, 2, 3, 4]
    for row in lines[1:]:
        assert row["sampled"] == [0, 1, 2]
        assert list(row["rejected"]) == ["0"] and "shape" in row["rejected"]["0"]  # never averaged
        assert row["diverged"] is False and row["loss"] < lines[0]["loss"]
    assert lines[1]["failed"] == {} and lines[1]["selected"] == [1, 2]
    assert list(lines[2]["failed"]) == ["2"] and "Node Unavailable" in lines[2]["failed"]["2"]
    assert lines[2]["selected"] == [1]  # averaged over the sound replies that arrived
    if lines[3]["failed"]:  # still away when round 3 asked
        assert list(lines[3]["failed"]) == ["2"] and "Node Unavailable" in lines[3]["failed"]["2"]
        assert lines[3]["selected"] == [1]
    else:
        assert lines[3]["selected"] == [1, 2]
    assert lines[2]["seconds"] < 2 * 30 + 20  # ended when the SuperLink gave up on the node, not at the timeout
    assert lines[4]["failed"] == {} and lines[4]["selected"] == [1, 2]  # the restarted SuperNode serves client 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert marked_processes("FLWR_HOME", home) == []
