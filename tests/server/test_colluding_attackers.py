"""The server-side colluding attackers: what they know, what they record, and degrading per round."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fake_grid import federate

from attacks import ALIE, IPM, FangKrum, FangTrimmedMean, MinMax, MinSum
from attacks.threat import ThreatModel
from common.streams import Stream, stream
from server.app import ColludingAttackers


def deltas(n: int, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64)


def test_an_attack_that_cannot_be_formed_sends_the_honest_updates_and_says_why():
    threat = ThreatModel(num_clients=10, malicious=[1, 2])
    attackers = ColludingAttackers(threat, FangKrum(), seed=0)
    rows = deltas(5)  # clients 0..4: 2 attackers among 5, Fang's Krum attack needs n > 2c + 2 = 6
    out = attackers(3, [0, 1, 2, 3, 4], rows)
    assert torch.equal(out, rows)
    note = attackers.notes[3]
    assert note["formed"] is False and note["knowledge"] == "omniscient" and note["attackers"] == 2
    assert "FangKrum not formed, attackers sent honest updates" in note["reason"]
    assert "n > 2c + 2" in note["reason"] or "2f + 2" in note["reason"]


def test_a_round_with_only_attackers_degrades_the_same_way():
    threat = ThreatModel(num_clients=10, malicious=[1, 2])
    attackers = ColludingAttackers(threat, ALIE(z=1.0), seed=0)
    rows = deltas(2)
    assert torch.equal(attackers(4, [1, 2], rows), rows)
    assert "no honest reply" in attackers.notes[4]["reason"]
    assert attackers.notes[4]["known_updates"] == 0 and attackers.notes[4]["formed"] is False


def test_a_formed_attack_rewrites_only_the_attackers_rows():
    threat = ThreatModel(num_clients=10, malicious=[1, 2])
    attackers = ColludingAttackers(threat, ALIE(z=1.0), seed=0)
    rows = deltas(6)
    out = attackers(5, [0, 1, 2, 3, 4, 5], rows)
    honest = rows[[0, 3, 4, 5]]
    expected = honest.mean(0) - 1.0 * honest.std(0, correction=0)  # ALIE: mean - z * population std
    assert torch.equal(out[[0, 3, 4, 5]], honest)
    assert torch.allclose(out[1], expected, atol=1e-6) and torch.allclose(out[2], expected, atol=1e-6)
    assert attackers.notes == {
        5: {"knowledge": "omniscient", "attackers": 2, "known_updates": 4, "formed": True, "reason": None}
    }


def test_rounds_without_attackers_or_outside_the_window_have_no_note():
    threat = ThreatModel(num_clients=10, malicious=[1, 2], start_round=3)
    attackers = ColludingAttackers(threat, ALIE(z=1.0, knowledge="partial"), seed=0)
    rows = deltas(4)
    assert torch.equal(attackers(2, [0, 1, 2, 3], rows), rows)  # before the window
    assert torch.equal(attackers(3, [0, 3, 4, 5], rows), rows)  # no attacker sampled
    assert attackers.notes == {}


def test_partial_alie_uses_only_the_attackers_rows_by_hand():
    threat = ThreatModel(num_clients=10, malicious=[1, 2])
    attackers = ColludingAttackers(threat, ALIE(z=2.0, knowledge="partial"), seed=0)
    rows = torch.tensor([[9.0, 9.0], [1.0, 4.0], [3.0, 2.0], [-7.0, 5.0]], dtype=torch.float64)
    out = attackers(1, [0, 1, 2, 3], rows)
    # the attackers' rows [1, 4], [3, 2]: mean [2, 3], population std [1, 1]; 2 - 2 * 1 = 0, 3 - 2 * 1 = 1
    assert out.tolist() == [[9.0, 9.0], [0.0, 1.0], [0.0, 1.0], [-7.0, 5.0]]
    assert attackers.notes[1] == {"knowledge": "partial", "attackers": 2, "known_updates": 2, "formed": True,
                                  "reason": None}  # fmt: skip


PAIRS = [
    lambda k: ALIE(z=1.0, knowledge=k),
    lambda k: IPM(knowledge=k),
    lambda k: MinMax(knowledge=k),
    lambda k: MinSum(knowledge=k),
    lambda k: FangTrimmedMean(knowledge=k),
    lambda k: FangKrum(knowledge=k),
]
NAMES = ["ALIE", "IPM", "MinMax", "MinSum", "FangTrimmedMean", "FangKrum"]


@pytest.mark.parametrize("make", PAIRS, ids=NAMES)
def test_changing_an_honest_row_moves_the_attack_only_with_omniscient_knowledge(make):
    threat = ThreatModel(num_clients=10, malicious=[1, 2])
    ids = [0, 1, 2, 3, 4, 5, 6, 7]  # n = 8 > 2c + 2: every attack can be formed
    rows = deltas(8)
    changed = rows.clone()
    changed[5] = 10.0 * rows[5] + 3.0  # an honest client's update
    out = {}
    for knowledge in ("partial", "omniscient"):
        a, b = ColludingAttackers(threat, make(knowledge), seed=0), ColludingAttackers(threat, make(knowledge), seed=0)
        out[knowledge] = (a(2, ids, rows), b(2, ids, changed))
        assert a.notes[2]["formed"] and a.notes[2]["knowledge"] == knowledge
    partial, changed_partial = out["partial"]
    assert torch.equal(partial[[1, 2]], changed_partial[[1, 2]])
    assert torch.equal(partial[[1, 2]], make("partial")(rows[[1, 2]], 2, generator=stream(Stream.COLLUDING, 0, 2)))
    omniscient, changed_omniscient = out["omniscient"]
    assert not torch.equal(omniscient[[1, 2]], changed_omniscient[[1, 2]])
    for got, src in ((partial, rows), (omniscient, rows)):  # the honest rows are never touched
        assert torch.equal(got[[0, 3, 4, 5, 6, 7]], src[[0, 3, 4, 5, 6, 7]])


@pytest.mark.parametrize("make", PAIRS, ids=NAMES)
def test_one_colluder_with_partial_knowledge(make):
    threat = ThreatModel(num_clients=10, malicious=[1])
    attackers = ColludingAttackers(threat, make("partial"), seed=0)
    rows = deltas(6)
    out = attackers(3, [0, 1, 2, 3, 4, 5], rows)
    note = attackers.notes[3]
    assert note["attackers"] == 1 and note["known_updates"] == 1 and bool(torch.isfinite(out).all())
    if isinstance(attackers.attack, IPM):  # a mean of one update: formed
        assert note["formed"] is True and torch.allclose(out[1], -0.1 * rows[1])
    else:  # a std, a distance or Krum over one update: not formed, the colluder sends its benign update
        assert note["formed"] is False and torch.equal(out, rows)
        assert "not formed, attackers sent honest updates" in note["reason"]
        assert "(partial knowledge) needs the benign updates of at least 2 colluders" in note["reason"]


def test_a_federation_with_partial_alie_runs_and_records_the_knowledge(tmp_path, fmnist_root):
    lines, summary, _ = federate(tmp_path, "attack=alie", "attack.knowledge=partial", "attack.num_malicious=2",
                                 "federation.num_clients=6", "federation.clients_per_round=6")  # fmt: skip
    assert summary["status"] == "complete" and len(summary["malicious_clients"]) == 2
    rounds = [line for line in lines if line["round"] > 0]
    assert len(rounds) == 2
    for line in rounds:
        assert line["malicious_in_round"] == 2 and math.isfinite(line["accuracy"])
        assert line["collusion"] == {"knowledge": "partial", "attackers": 2, "known_updates": 2, "formed": True,
                                     "reason": None}  # fmt: skip
    attack = json.loads((tmp_path / "config.json").read_text())["attack"]
    assert attack["knowledge"] == "partial"
    assert attack["z"] == pytest.approx(ALIE.z_max(6, 2))  # bound for the federation, carried to the ServerApp
