"""The ``collusion`` entry of a round whose colluders ran on the clients (a deployment).

With ``engine=deployment`` the malicious ClientApps of a colluding attack
compute it themselves with partial knowledge (Fang et al., USENIX Security
2020; ``clients.collusion``), and the server installs no wrapper. Each colluder
reports in its reply's ``collusion`` record whether it formed the attack, from
how many benign updates, and why not. :class:`ReportedCollusion` watches the
replies (the strategy's reply observer, the harness's view: no aggregation rule
reads that record) and writes each round's entry with the same keys as the
simulation's ``server.app.ColludingAttackers.notes``: ``knowledge``,
``attackers`` (malicious participants with a valid reply), ``known_updates``,
``formed`` and ``reason``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import RecordDict
from torch import Tensor

from attacks.threat import ThreatModel
from common.runtime import COLLUSION_REPORT_KEY

log = logging.getLogger("poisonlab")

Observer = Callable[[int, int, RecordDict, Tensor | None, dict[str, Tensor]], None]


class ReportedCollusion:
    """Collects the colluders' reports per round and turns them into the round's ``collusion`` entry.

    Parameters
    ----------
    threat : ThreatModel
        Who is malicious and when the attack is active (the harness's truth).
    knowledge : str
        The attack's knowledge (``"partial"`` in a deployment).
    """

    def __init__(self, threat: ThreatModel, knowledge: str) -> None:
        self.threat, self.knowledge = threat, knowledge
        self.reports: dict[int, dict[int, dict[str, Any]]] = {}

    def observe(self, server_round: int, cid: int, content: RecordDict, delta: Tensor | None,
                global_state: dict[str, Tensor]) -> None:  # fmt: skip
        """Keep a malicious client's report of ``server_round`` (the strategy's reply observer)."""
        if COLLUSION_REPORT_KEY in content and self.threat.is_malicious(cid):
            self.reports.setdefault(server_round, {})[cid] = dict(content[COLLUSION_REPORT_KEY])

    def note(self, server_round: int, valid: list[int]) -> dict[str, Any] | None:
        """The round's entry; ``None`` without a valid malicious reply or outside the attack window.

        ``known_updates`` is the smallest count any colluder computed from (all
        equal, unless one posted after the attacker service had answered the
        round); ``formed`` is true only when every colluder with a valid reply
        formed the attack; ``reason`` joins the reasons given.
        """
        bad = [c for c in valid if self.threat.is_malicious(c)]
        reports = self.reports.pop(server_round, {})
        if not bad or not self.threat.active(server_round):
            return None
        missing = [c for c in bad if c not in reports]
        got = [reports[c] for c in bad if c in reports]
        reasons = sorted({str(r.get("reason") or "") for r in got} - {""})
        if missing:
            reasons.append(f"no collusion report from malicious client(s) {missing}")
        note: dict[str, Any] = {
            "knowledge": self.knowledge,
            "attackers": len(bad),
            "known_updates": min((int(r.get("known", 0)) for r in got), default=0),
            "formed": bool(got) and not missing and all(bool(r.get("formed")) for r in got),
            "reason": "; ".join(reasons) or None,
        }
        if not note["formed"]:
            log.warning("round %d: %s", server_round, note["reason"])
        return note


def observers(*watchers: Observer | None) -> Observer | None:
    """One reply observer that calls every given one in turn (``None`` when none is given)."""
    chosen = [w for w in watchers if w is not None]
    if not chosen:
        return None
    if len(chosen) == 1:
        return chosen[0]

    def observe(*args: Any) -> None:
        for watcher in chosen:
            watcher(*args)

    return observe
