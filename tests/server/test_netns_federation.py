"""A federation across network namespaces: the SuperLink and each SuperNode on a network stack of its own.

Each namespace the test creates gets one address on a private /24 (veth pairs
on a bridge that also gives this namespace an address, so the ``flwr`` CLI and
the run's follower reach the SuperLink). The SuperLink runs in one namespace;
three SuperNodes, one of them malicious, run in three others and reach it over
TLS with SuperNode authentication, exactly as on separate machines. The run
must give the numbers of the ServerApp's round loop run in this process on the
same seed (what the simulation engine gives, see
``tests/server/test_simulation_engine.py``). Traffic stays inside the
namespaces created here. Needs root; skipped with the reason otherwise; every
namespace, link and process is removed, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts.deploy import Endpoint, Topology, run_deployment
from scripts.flower_run import marked_processes
from tests.server.fake_grid import federate, make_run

PORT = 19091
OVERRIDES = ["model=mlp", "federation.num_clients=3", "federation.clients_per_round=3", "federation.num_rounds=3",
             "partition.samples_per_client=64", "client.batch_size=32", "device=cpu", "output.plots=false",
             "attack=label_flip", "attack.num_malicious=1", "seed=4"]  # fmt: skip


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def remove_stale_namespaces() -> None:
    """Namespaces and bridges this test left behind in a process that is gone (killed before its cleanup)."""
    listed = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in {*names, *re.findall(r"^\d+: (pl\d+br):", listed, flags=re.M)}:
        if (match := re.fullmatch(r"pl(\d+)(?:link|n\d+|br)", name)) and not Path(f"/proc/{match[1]}").exists():
            subprocess.run(["ip", "netns", "del", name] if not name.endswith("br") else ["ip", "link", "del", name],
                           capture_output=True)  # fmt: skip


def free_subnet() -> str:
    """A ``10.231.<k>`` /24 that no interface of this machine has an address in (runs side by side never meet)."""
    taken = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    for k in [os.getpid() % 250, *range(250)]:
        if f" 10.231.{k}." not in taken:
            return f"10.231.{k}"
    raise RuntimeError("every 10.231.<k>.0/24 is in use on this machine")


@pytest.fixture
def namespaces():
    """Four namespaces (SuperLink + 3 SuperNodes) on one bridge; their names and addresses."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip netns`)")
    remove_stale_namespaces()
    tag, subnet = f"pl{os.getpid()}", free_subnet()
    bridge, names = f"{tag}br", [f"{tag}link", *(f"{tag}n{i}" for i in range(3))]
    made: list[str] = []
    try:
        try:
            ip("link", "add", bridge, "type", "bridge")
            ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
            ip("link", "set", bridge, "up")
            for k, ns in enumerate(names):
                ip("netns", "add", ns)
                made.append(ns)
                ip("link", "add", f"{tag}v{k}", "type", "veth", "peer", "name", f"{tag}p{k}")
                ip("link", "set", f"{tag}p{k}", "netns", ns)
                ip("-n", ns, "link", "set", f"{tag}p{k}", "name", "eth0")
                ip("-n", ns, "addr", "add", f"{subnet}.{k + 1}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
                ip("link", "set", f"{tag}v{k}", "master", bridge)
                ip("link", "set", f"{tag}v{k}", "up")
        except subprocess.CalledProcessError as err:
            pytest.skip(f"network namespaces are not permitted here: {' '.join(err.cmd)}: {err.stderr.strip()}")
        yield {ns: f"{subnet}.{k + 1}" for k, ns in enumerate(names)}
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth end goes with it
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def lines_of(folder: Path) -> list[dict]:
    return [json.loads(row) for row in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_federation_across_namespaces_with_tls_and_authentication(namespaces, tmp_path, fmnist_root):
    (link_ns, link_ip), *nodes = namespaces.items()
    topology = Topology(
        Endpoint(link_ip, PORT, ("ip", "netns", "exec", link_ns)),
        [Endpoint("127.0.0.1", PORT + 1, ("ip", "netns", "exec", ns)) for ns, _ in nodes],
    )
    cfg = make_run(tmp_path / "netns", *OVERRIDES).cfg
    rounds: list[dict] = []
    run_deployment(cfg, topology, client_threads=1, timeout=600, on_round=rounds.append, tls=True, auth=True)

    folder = tmp_path / "netns"
    lines = lines_of(folder)
    assert [r["round"] for r in lines] == [0, 1, 2, 3] and rounds == lines
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "complete" and len(summary["malicious_clients"]) == 1
    assert all(not r["failed"] and not r["rejected"] for r in lines[1:])
    # nothing of the run is left, in any namespace
    for ns, _ in nodes:
        assert subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.strip() == ""
    assert marked_processes("FLWR_HOME", str(folder / "flower" / "home")) == []

    # the numbers of the ServerApp round loop in this process (the simulation's numbers, same seed); the
    # malicious SuperNode flipped its labels only because its node config said role="malicious"
    reference, _, _ = federate(tmp_path / "reference", *OVERRIDES)
    assert any(r["malicious_in_round"] for r in lines[1:])
    for ours, ref in zip(lines, reference, strict=True):
        assert ours.get("sampled") == ref.get("sampled")
        assert ours.get("malicious_in_round") == ref.get("malicious_in_round")
        assert ours["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-4)
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-4)
        assert ours.get("source_recall") == pytest.approx(ref.get("source_recall"), abs=1e-3)
