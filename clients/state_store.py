"""Per-client state kept on the node's disk, by client id and round: what survives a restart.

A client's state across the rounds it takes part in (its optimizer momentum and
participation count, Tolpegin et al.'s setup with the optimizer kept; its
DP-SGD privacy ledger) is written after every round it trains in, to
``<root>/<client id>/<round>.pt``, and read back at its next participation
from the newest file of an **earlier** round. Nothing of it travels with the
server's messages, and it outlives the process that trained: a SuperNode that
restarts, or a run resumed after its ServerApp stopped (``poisonlab
resume=<run folder>``), picks it up. Reading only earlier rounds makes a
resumed round start from the same state as the first attempt at it, even when
that attempt had already saved its own. Each client keeps its two newest
files (the newest may belong to a round the server never completed).

The root is the SuperNode's node config ``state-dir`` (one sub-folder per run)
when given, else ``<run folder>/checkpoint/clients`` (the simulation and a
deployment on one machine share the run folder).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

STATE_DIR_KEY = "state-dir"


def state_root(node_config: dict[str, Any], output_dir: str) -> Path:
    """Where this node keeps its clients' state for the run whose folder is ``output_dir``."""
    if STATE_DIR_KEY in node_config:
        run_key = hashlib.sha1(str(output_dir).encode()).hexdigest()[:16]
        return Path(str(node_config[STATE_DIR_KEY])) / run_key
    return Path(output_dir) / "checkpoint" / "clients"


class ClientStateStore:
    """One file per client and round under ``root``; see the module docstring.

    Parameters
    ----------
    root : Path
        The run's client-state folder on this node (:func:`state_root`).
    keep : int
        Newest files kept per client (at least 2: the newest may be a round
        the server did not complete).
    """

    def __init__(self, root: Path, keep: int = 2) -> None:
        if keep < 2:
            raise ValueError(f"keep must be >= 2, got {keep}")
        self.root, self.keep = Path(root), keep

    def _rounds(self, cid: int) -> list[int]:
        folder = self.root / str(cid)
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.pt") if p.stem.isdigit())

    def load(self, cid: int, before_round: int) -> dict[str, Any]:
        """Client ``cid``'s state as saved after its latest round before ``before_round`` (empty if none)."""
        earlier = [r for r in self._rounds(cid) if r < before_round]
        if not earlier:
            return {}
        return torch.load(self.root / str(cid) / f"{earlier[-1]}.pt", map_location="cpu", weights_only=True)

    def save(self, cid: int, server_round: int, state: dict[str, Any]) -> None:
        """Write client ``cid``'s state after ``server_round`` (atomically), drop its older files."""
        folder = self.root / str(cid)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{server_round}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, folder / f"{server_round}.pt")
        for old in self._rounds(cid)[: -self.keep]:
            (folder / f"{old}.pt").unlink(missing_ok=True)
