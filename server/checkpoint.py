"""The ServerApp's checkpoint after every completed round, and resuming a run from it.

After round ``r`` is aggregated, evaluated and its line appended to
``metrics.jsonl``, the ServerApp writes ``<run folder>/checkpoint/server.pt``
(atomically: a crash leaves the previous one): the round, the global model,
the aggregation rule's state (e.g. FoolsGold's history, the PCA defense's
stack of past updates, centered clipping's center, central DP's accountant),
the rule's random generator, the server's own per-client state (each client's
latest reported epsilon), the FLTrust root-set trainer's momentum, the
leakage attack's results and the process's global random states. The
clients' own state (momentum, privacy ledger) is on their nodes
(``clients.state_store``).

``poisonlab resume=<run folder>`` runs the folder's ``config.json`` again;
the ServerApp then loads the checkpoint, cuts ``metrics.jsonl`` back to the
rounds the checkpoint covers (a round that was recorded but not checkpointed
is run again, never counted twice) and continues with the next round. With
the same seed, the resumed run ends with the same model as an uninterrupted
one.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoint"
SERVER_CHECKPOINT = "server.pt"
#: config keys that may differ between a run and its resumption (where and how it runs, not what it computes)
NOT_COMPARED = ("resume", "output_dir", "engine", "output")


class ResumeError(RuntimeError):
    """The run folder cannot be resumed (no checkpoint, another config, already complete)."""


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / SERVER_CHECKPOINT


def fingerprint(cfg: dict[str, Any]) -> str:
    """The config as it decides the run's numbers (``NOT_COMPARED`` keys left out), canonical JSON."""
    return json.dumps({k: v for k, v in cfg.items() if k not in NOT_COMPARED}, sort_keys=True)


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see :func:`server_state`) as the run's checkpoint, replacing the previous one atomically."""
    path = checkpoint_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SERVER_CHECKPOINT}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's checkpoint, checked against ``cfg``.

    Raises
    ------
    ResumeError
        When there is none (the run completed no round: start it again) or it
        was written by a run with another config.
    """
    path = checkpoint_path(out_dir)
    if not path.exists():
        raise ResumeError(
            f"{out_dir} has no checkpoint ({CHECKPOINT_DIR}/{SERVER_CHECKPOINT}): the run completed no round; "
            "start it again instead of resuming it"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["fingerprint"] != fingerprint(cfg):
        raise ResumeError(f"{path} was written by a run with another config than {out_dir}/config.json")
    return state


def rule_state(rule: Any) -> dict[str, Any]:
    """Everything an aggregation rule (and the rules it wraps) holds, as a copy that outlives the process."""
    return dict(vars(rule))


def server_state(
    *, server_round: int, cfg: dict[str, Any], global_state: dict[str, torch.Tensor], rule: Any,
    generator: torch.Generator, extra: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The checkpoint after ``server_round``: see the module docstring (``extra``: the ServerApp's own state)."""
    return {
        "round": server_round,
        "fingerprint": fingerprint(cfg),
        "global_state": {k: v.detach().cpu() for k, v in global_state.items()},
        "rule": rule_state(rule),
        "generator": generator.get_state(),
        "random": (random.getstate(), np.random.get_state(), torch.get_rng_state()),
        "extra": extra,
    }


def restore(state: dict[str, Any], *, rule: Any, generator: torch.Generator) -> None:
    """Put the rule, its generator and the process's random states back as the checkpoint has them."""
    vars(rule).update(state["rule"])
    generator.set_state(state["generator"])
    py, np_state, torch_state = state["random"]
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)


def truncate_metrics(path: Path, last_round: int) -> None:
    """Keep the lines of rounds ``<= last_round`` in ``metrics.jsonl`` (later ones were never checkpointed)."""
    if not path.exists():
        return
    kept = [row for row in path.read_text().splitlines() if row.strip() and json.loads(row)["round"] <= last_round]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{row}\n" for row in kept))
    os.replace(tmp, path)
