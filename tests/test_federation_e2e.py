"""Real small federations end to end: Flower's simulation runtime on Ray and a real deployment.

Both engines start their own SuperLink and submit the run with ``flwr run``.

The deployment starts a SuperLink and three SuperNodes as separate processes on
loopback, one of them malicious (its role comes from its own node config). With
the same seed, both engines must produce the same global models (one torch
thread per client, deterministic sampling and aggregation).
"""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.flower_run import marked_processes

SMALL = [
    "federation.num_clients=3",
    "federation.clients_per_round=2",
    "federation.num_rounds=2",
    "partition.samples_per_client=400",
    "client.batch_size=10",
    "seed=3",
]


def run_cli(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "scripts.run", *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def read_lines(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def free_port_block(size: int) -> int:
    for base in range(21000, 40000, 97):
        ok = True
        for port in range(base, base + size):
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.skip("no free loopback ports")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, fmnist_root):
    folder = tmp_path_factory.mktemp("sim")
    out = run_cli(*SMALL, f"hydra.run.dir={folder}")
    return folder, out


def test_simulation_writes_the_run_folder(simulated):
    folder, out = simulated
    lines = read_lines(folder)
    assert [line["round"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert {"round", "accuracy", "loss", "per_class_recall", "per_class_precision", "seconds"} <= set(line)
        assert len(line["per_class_recall"]) == 10 and line["seconds"] > 0
    assert lines[0]["accuracy"] < 0.3 < 0.6 < lines[2]["accuracy"], [line["accuracy"] for line in lines]
    assert lines[2]["loss"] < lines[0]["loss"]
    for line in lines[1:]:
        assert len(line["sampled"]) == 2 and line["selected"] == line["sampled"] and line["flagged"] == []
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["final_accuracy"] == lines[2]["accuracy"]
    assert summary["best_accuracy"] == max(line["accuracy"] for line in lines[1:])
    assert json.loads((folder / "partition.json").read_text())["sizes"] == [400, 400, 400]
    assert json.loads((folder / "config.json").read_text())["seed"] == 3
    for png in ("accuracy_loss.png", "per_class_recall.png"):
        assert (folder / png).stat().st_size > 10_000
    assert (folder / ".hydra" / "config.yaml").exists()
    assert "round    2/2" in out.stdout and "ETA" in out.stdout


def test_the_console_shows_poisonlabs_lines_and_run_log_holds_flowers(simulated):
    folder, out = simulated
    shown = out.stdout.splitlines() + out.stderr.splitlines()
    assert len(shown) <= 6, shown  # run folder, 2 rounds, summary (and a warning or two at most)
    assert all(line.startswith("[poisonlab]") for line in out.stdout.splitlines()), out.stdout
    assert "deprecat" not in (out.stdout + out.stderr).lower()
    assert "complete  final acc" in out.stdout
    log = (folder / "run.log").read_text()
    assert "Starting Flower Simulation" in log and "(3 simulated SuperNodes)" in log  # Flower's lines went here
    assert "ray/_private" in log  # and Ray's warnings
    assert "SuperLink listening" in log and "stopped every process of the run" in log


ATTACK = ["attack=label_flip", "attack.num_malicious=1"]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, fmnist_root):
    folder = tmp_path_factory.mktemp("attacked")
    run_cli(*SMALL, *ATTACK, f"hydra.run.dir={folder}")
    return folder


def test_label_flip_hurts_the_source_class_only(simulated, attacked):
    clean, poisoned = read_lines(simulated[0]), read_lines(attacked)
    malicious = json.loads((attacked / "summary.json").read_text())["malicious_clients"]
    assert len(malicious) == 1
    for line in poisoned[1:]:
        assert line["malicious_in_round"] == len(set(line["sampled"]) & set(malicious))
        assert {"source_recall", "target_recall", "other_recall"} <= set(line)
    hit = [r for r in range(1, 3) if poisoned[r]["malicious_in_round"]]
    assert hit, "the malicious client was never sampled"
    r = hit[-1]
    assert poisoned[r]["source_recall"] < clean[r]["per_class_recall"][6] - 0.15
    assert poisoned[r]["target_recall"] >= clean[r]["per_class_recall"][0] - 0.02
    assert abs(poisoned[r]["other_recall"] - clean[r]["accuracy"]) < 0.15


def test_deployment_with_a_malicious_supernode_matches_the_simulation(attacked, tmp_path):
    base = free_port_block(4)
    run_cli(*SMALL, *ATTACK, "engine=deployment", f"engine.base_port={base}", f"hydra.run.dir={tmp_path}")
    deployed, simulated_lines = read_lines(tmp_path), read_lines(attacked)
    assert [line["round"] for line in deployed] == [0, 1, 2]
    assert [line["sampled"] for line in deployed[1:]] == [line["sampled"] for line in simulated_lines[1:]]
    for a, b in zip(deployed, simulated_lines, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=2e-3)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-2)
        assert a.get("source_recall") == pytest.approx(b.get("source_recall"), abs=5e-3)
    malicious = json.loads((tmp_path / "summary.json").read_text())["malicious_clients"]
    assert malicious == json.loads((attacked / "summary.json").read_text())["malicious_clients"]
    logs = sorted(p.name for p in (tmp_path / "flower").glob("*.log"))
    assert logs == ["clientapps-0.log", "stream.log", "superlink.log", "supernode-0.log", "supernode-1.log",
                    "supernode-2.log"]  # fmt: skip
    # every message's ClientApp process was forked by the warm server: one per node to enrol, one per sampled client
    forked = (tmp_path / "flower" / "clientapps-0.log").read_text().count("started ClientApp process")
    assert forked == 3 + sum(len(line["sampled"]) for line in deployed[1:])
    assert (tmp_path / "summary.json").exists()
    # everything was shut down: nothing listens on the deployment's ports any more
    for port in range(base, base + 4):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served"


def test_a_dp_sgd_federation_on_ray_reports_each_clients_cumulative_epsilon(tmp_path, fmnist_root):
    run_cli(*SMALL, "dp=opacus", "dp.schedule=linear", "dp.noise_multiplier=2", "dp.noise_end=1", "model=mlp",
            f"hydra.run.dir={tmp_path}")  # fmt: skip
    lines = read_lines(tmp_path)
    assert [line["round"] for line in lines] == [0, 1, 2]
    seen: dict[str, float] = {}
    for line in lines[1:]:
        assert sorted(int(c) for c in line["epsilon"]) == sorted(line["sampled"])
        for cid, eps in line["epsilon"].items():
            assert eps > seen.get(cid, 0.0)  # cumulative across the rounds a client took part in
            seen[cid] = eps
        assert line["epsilon_max"] == max(seen.values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["final_epsilon_max"] == lines[2]["epsilon_max"]
    # a client that took part twice (its ledger kept in its node's state store) has more than one round's epsilon
    assert any(sum(c in map(str, line["sampled"]) for line in lines[1:]) == 2 for c in seen)


def test_sigterm_stops_every_process_of_the_run_and_marks_it_failed(tmp_path, fmnist_root):
    argv = [sys.executable, "-m", "scripts.run", "model=mlp", "federation.num_clients=4",
            "federation.clients_per_round=2", "federation.num_rounds=500", "partition.samples_per_client=64",
            f"hydra.run.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # round 1 is done
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped: interrupted" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("interrupted")
    assert 1 <= summary["rounds_completed"] < 500
    left = marked_processes("FLWR_HOME", str(tmp_path / "flower" / "home"))
    assert left == [], [
        Path(f"/proc/{pid}/cmdline").read_bytes()[:300] for pid in left if Path(f"/proc/{pid}").exists()
    ]
