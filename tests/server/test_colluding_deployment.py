"""A colluding attack in a real deployment: the malicious SuperNodes compute it through the attacker service.

A loopback deployment (TLS and authentication off for speed; the attacker
service keeps its key) of four SuperNodes, all sampled, two of them malicious
colluders running ALIE (Baruch et al., NeurIPS 2019) with partial knowledge
(Fang et al., USENIX Security 2020), against the in-process round loop of the
same run where the simulation's server-side wrapper computes the same attack
from the same two benign updates. Only the malicious SuperNodes are told where
the attacker service is; every round's ``collusion`` entry comes from the
colluders' own reports; the final model matches the simulation's up to float
rounding (the server subtracts the global model from global + poisoned delta).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from scripts.deploy import Endpoint, Topology, run_deployment
from scripts.flower_run import free_port, marked_processes
from tests.server.fake_grid import federate, final_model, lines_of, make_run, summary_of

HOST = "127.0.0.1"
OVERRIDES = ["federation.round_timeout=60", "client.lr=0.05", "seed=3", "attack=alie", "attack.knowledge=partial",
             "attack.num_malicious=2"]  # fmt: skip
DEPLOYMENT = ["engine=deployment", "engine.tls=false", "engine.auth=false", "engine.attacker_window=20"]


def supernodes_told_of(key_file: Path) -> set[int]:
    """Partition ids of the live SuperNode processes whose command line names ``key_file``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            line = " ".join(argv)
            if str(key_file) in line and any(a.endswith("flower-supernode") for a in argv):
                found.add(int(re.search(r"partition-id=(\d+)", line)[1]))
    return found


def test_colluders_in_a_deployment_attack_as_the_simulations_partial_knowledge_wrapper(tmp_path, fmnist_root):
    run = make_run(tmp_path / "deployment", *OVERRIDES, *DEPLOYMENT)
    malicious = sorted(run.threat.malicious)
    assert len(malicious) == 2 and run.colluders_on_clients
    key_file = tmp_path / "deployment" / "flower" / "certs" / "attackers.key"
    told: list[set[int]] = []

    def on_round(row: dict) -> None:
        if row["round"] == 1:
            told.append(supernodes_told_of(key_file))

    topology = Topology(Endpoint(HOST, free_port(HOST)), [Endpoint(HOST, free_port(HOST)) for _ in range(4)],
                        attackers=Endpoint(HOST, free_port(HOST)))  # fmt: skip
    run_deployment(run.cfg, topology, client_threads=1, timeout=300, on_round=on_round, tls=False, auth=False,
                   attacker_window=20)  # fmt: skip

    assert told == [set(malicious)]  # only the malicious SuperNodes know the attacker service and its key
    deployed = lines_of(tmp_path / "deployment")
    assert summary_of(tmp_path / "deployment")["status"] == "complete"
    expected = {"knowledge": "partial", "attackers": 2, "known_updates": 2, "formed": True, "reason": None}
    assert [line["collusion"] for line in deployed[1:]] == [expected, expected]
    service_log = (tmp_path / "deployment" / "flower" / "attackers.log").read_text()
    for r in (1, 2):
        assert f"round {r}: answered clients {malicious} (every colluder posted)" in service_log

    simulated = federate(tmp_path / "simulation", *OVERRIDES)[0]  # the server-side wrapper, same seed
    assert [line["collusion"] for line in simulated[1:]] == [expected, expected]
    # the models differ by float rounding only (measured: 1.5e-8 at most), so every round's accuracy is equal
    assert [line["accuracy"] for line in deployed] == [line["accuracy"] for line in simulated]
    deployed_model, simulated_model = final_model(tmp_path / "deployment"), final_model(tmp_path / "simulation")
    for name, value in simulated_model.items():
        assert torch.allclose(deployed_model[name], value, rtol=0, atol=1e-6), name
    assert marked_processes("FLWR_HOME", str(tmp_path / "deployment" / "flower" / "home")) == []
