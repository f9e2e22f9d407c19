"""The server-side colluding attackers degrade per round instead of killing the run."""

from __future__ import annotations

import torch

from attacks import ALIE, FangKrum
from attacks.threat import ThreatModel
from server.app import ColludingAttackers


def deltas(n: int, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(n))


def test_an_attack_that_cannot_be_formed_sends_the_honest_updates_and_says_why():
    threat = ThreatModel(num_clients=10, malicious=[1, 2])
    attackers = ColludingAttackers(threat, FangKrum(), seed=0)
    rows = deltas(5)  # clients 0..4: 2 attackers among 5, Fang's Krum attack needs n > 2c + 2 = 6
    out = attackers(3, [0, 1, 2, 3, 4], rows)
    assert torch.equal(out, rows)
    assert "FangKrum not formed, attackers sent honest updates" in attackers.notes[3]
    assert "n > 2c + 2" in attackers.notes[3] or "2f + 2" in attackers.notes[3]


def test_a_round_with_only_attackers_degrades_the_same_way():
    threat = ThreatModel(num_clients=10, malicious=[1, 2])
    attackers = ColludingAttackers(threat, ALIE(z=1.0), seed=0)
    rows = deltas(2)
    assert torch.equal(attackers(4, [1, 2], rows), rows)
    assert "no honest reply" in attackers.notes[4]


def test_a_formed_attack_rewrites_only_the_attackers_rows():
    threat = ThreatModel(num_clients=10, malicious=[1, 2])
    attackers = ColludingAttackers(threat, ALIE(z=1.0), seed=0)
    rows = deltas(6)
    out = attackers(5, [0, 1, 2, 3, 4, 5], rows)
    honest = rows[[0, 3, 4, 5]]
    expected = honest.mean(0) - 1.0 * honest.std(0, correction=0)  # ALIE: mean - z * population std
    assert torch.equal(out[[0, 3, 4, 5]], honest)
    assert torch.allclose(out[1], expected, atol=1e-6) and torch.allclose(out[2], expected, atol=1e-6)
    assert attackers.notes == {}
