"""A deployment's colluders, in process: the real ClientApp code and a real attacker service, on the fake Grid.

The fake Grid delivers the round's messages one after another, so the first
colluder waits for the second in vain: the attacker service answers it alone
when its window passes. ALIE over one colluder's update cannot be formed
(Baruch et al.'s std needs two), so both send their benign updates, the
``collusion`` entries say why, and the run is exactly the run without an
attack; IPM (Xie et al.) forms from one update. A colluder whose service is
unreachable fails its reply with a reason that names the address.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from attacks.threat import ThreatModel
from scripts.attacker_service import AttackerService, Board, make_key
from scripts.flower_run import free_port
from server.app import run_federation
from server.collusion import ReportedCollusion
from tests.server.fake_grid import FakeGrid, federate, final_model, lines_of, make_run

HOST = "127.0.0.1"
DEPLOYED = ["engine=deployment", "engine.tls=false", "engine.auth=false", "engine.attacker_window=5", "seed=4",
            "attack.knowledge=partial", "attack.num_malicious=2"]  # fmt: skip


@pytest.fixture
def service(tmp_path) -> Iterator[tuple[str, Path]]:
    key_file = make_key(tmp_path / "attackers.key")
    running = AttackerService(HOST, 0, key=key_file.read_bytes(), board=Board(colluders=None, window=1.0))
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield f"{HOST}:{running.address[1]}", key_file
    running.close()
    thread.join(10)


def colluding_grid(run, address: str, key_file: Path | None) -> FakeGrid:
    """The fake Grid with the malicious SuperNodes' node config of a deployment (role, attacker service, key)."""
    grid = FakeGrid(run.federation.num_clients)
    for context in grid.contexts.values():
        cid = int(context.node_config["partition-id"])
        malicious = run.threat.is_malicious(cid)
        context.node_config["role"] = "malicious" if malicious else "honest"
        if malicious:
            context.node_config["attacker-service"] = address
            if key_file is not None:
                context.node_config["attacker-key-file"] = str(key_file)
    return grid


def test_a_lone_colluder_sends_its_benign_update_and_the_entry_says_why(tmp_path, service, fmnist_root):
    address, key_file = service
    run = make_run(tmp_path / "alie", "attack=alie", *DEPLOYED)
    run_federation(colluding_grid(run, address, key_file), run)
    lines = lines_of(tmp_path / "alie")
    for line in lines[1:]:
        note = line["collusion"]
        assert (note["knowledge"], note["attackers"], note["known_updates"], note["formed"]) == ("partial", 2, 1, False)
        assert note["reason"].startswith("ALIE not formed, attackers sent honest updates: ALIE (partial knowledge) "
                                         "needs the benign updates of at least 2 colluders")  # fmt: skip
        assert "posted after the attacker service had answered the round" in note["reason"]  # the second one
    federate(tmp_path / "clean", "attack=none", "seed=4")
    clean, attacked = final_model(tmp_path / "clean"), final_model(tmp_path / "alie")
    assert all(torch.equal(clean[name], attacked[name]) for name in clean)  # benign updates, bit for bit


def test_ipm_forms_from_a_single_colluders_update(tmp_path, service, fmnist_root):
    address, key_file = service
    run = make_run(tmp_path / "ipm", "attack=ipm", *DEPLOYED)
    run_federation(colluding_grid(run, address, key_file), run)
    expected = {"knowledge": "partial", "attackers": 2, "known_updates": 1, "formed": True, "reason": None}
    assert [line["collusion"] for line in lines_of(tmp_path / "ipm")[1:]] == [expected, expected]


def test_an_unreachable_attacker_service_fails_the_colluders_reply_naming_it(tmp_path, fmnist_root):
    address = f"{HOST}:{free_port(HOST)}"
    run = make_run(tmp_path / "down", "attack=ipm", "federation.num_rounds=1", *DEPLOYED)
    run_federation(colluding_grid(run, address, None), run)
    (line,) = lines_of(tmp_path / "down")[1:]
    assert sorted(int(c) for c in line["failed"]) == sorted(run.threat.malicious)
    assert all(f"cannot reach the attacker service at {address}" in r for r in line["failed"].values())
    assert line["collusion"] is None  # no valid malicious reply: nothing was attempted on the model


def test_the_entry_reports_missing_and_failed_colluders():
    threat = ThreatModel(num_clients=6, malicious=[1, 4], start_round=2)
    notes = ReportedCollusion(threat, "partial")
    report = RecordDict({"collusion": ConfigRecord({"formed": True, "known": 2, "late": False, "reason": ""})})
    notes.observe(3, 1, report, None, {})
    notes.observe(3, 0, report, None, {})  # an honest client's record is never read
    assert notes.note(3, [0, 1, 4]) == {"knowledge": "partial", "attackers": 2, "known_updates": 2, "formed": False,
                                         "reason": "no collusion report from malicious client(s) [4]"}  # fmt: skip
    notes.observe(1, 1, report, None, {})
    assert notes.note(1, [0, 1]) is None  # before the attack window
    assert notes.note(4, [0, 2]) is None  # no malicious participant
    assert notes.reports == {}  # a round's reports are dropped once its entry is written
