"""A secured real deployment: TLS to the SuperLink and SuperNode authentication, with intruders.

The SuperLink serves HTTPS with a CA and certificate poisonlab made and only
admits SuperNodes whose public key was registered. Two registered SuperNodes
run a small federation to completion while a SuperNode with an unregistered key
is refused (Flower's connection-error exit) and a SuperNode that trusts another
CA refuses the SuperLink's certificate; neither takes part in the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from scripts.certificates import make_node_keys, make_tls
from scripts.deploy import supernode_argv
from scripts.flower_run import FlowerSession, free_port, marked_processes
from tests.server.fake_grid import make_run

HOST = "127.0.0.1"
SMALL = ["model=mlp", "federation.num_clients=2", "federation.clients_per_round=2", "federation.num_rounds=1",
         "partition.samples_per_client=64", "client.batch_size=32", "device=cpu", "output.plots=false"]  # fmt: skip


def wait_for_log(path, text: str, timeout: float) -> str:
    """The log at ``path`` once it contains ``text`` (or as it is after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in (log := path.read_text()):
            return log
        time.sleep(0.25)
    return path.read_text() if path.exists() else ""


def test_registered_supernodes_run_while_an_unregistered_one_and_a_wrong_ca_one_are_refused(tmp_path, fmnist_root):
    cfg = make_run(tmp_path, *SMALL).cfg
    certs = tmp_path / "certs"
    tls = make_tls(certs, [HOST])
    keys = [make_node_keys(certs / "nodes", i) for i in range(3)]  # key 2 is never registered
    other_ca = make_tls(tmp_path / "other-ca", [HOST]).ca
    port = free_port(HOST)
    link = f"{HOST}:{port}"
    with FlowerSession(tmp_path, host=HOST, port=port, tls=tls, auth=True) as session:
        session.start_superlink(simulation=False)
        session.register([keys[0].public, keys[1].public])
        for i in range(2):
            argv = supernode_argv(link, HOST, free_port(HOST), i, 2, "honest", ca=tls.ca, key=keys[i].private)
            session.group.start(f"supernode-{i}", argv)
        intruder = session.group.start(
            "unregistered",
            supernode_argv(link, HOST, free_port(HOST), 0, 2, "malicious", ca=tls.ca, key=keys[2].private),
        )
        session.group.start(
            "wrong-ca", supernode_argv(link, HOST, free_port(HOST), 1, 2, "malicious", ca=other_ca, key=keys[1].private)
        )
        # the SuperLink refuses the unregistered key; the other SuperNode refuses the SuperLink's certificate
        refused = wait_for_log(session.folder / "unregistered.log", "Exit Code: 305", 60)
        assert "Failed to activate SuperNode" in refused
        distrust = wait_for_log(session.folder / "wrong-ca.log", "CERTIFICATE_VERIFY_FAILED", 60)
        assert "CERTIFICATE_VERIFY_FAILED" in distrust
        rounds: list[dict] = []
        session.run(cfg, timeout=300, on_round=rounds.append)
        assert intruder.poll() not in (None, 0)
    left = marked_processes("FLWR_HOME", str(session.home))
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in left]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["sampled"] == [0, 1] and rounds[1]["failed"] == {} and rounds[1]["malicious_in_round"] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "complete"


def test_authentication_without_tls_is_a_config_error():
    from scripts.engines import LocalDeployment

    with pytest.raises(ValueError, match="engine.auth=true needs engine.tls=true"):
        LocalDeployment(tls=False, auth=True)
