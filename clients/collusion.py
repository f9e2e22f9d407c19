"""A colluding attack computed by the malicious clients themselves (a deployment, partial knowledge).

In a simulation the server-side wrapper (``server.app.ColludingAttackers``)
rewrites the malicious rows. In a real deployment there is no such oracle: each
malicious ClientApp of a colluding attack (ALIE, Baruch et al., NeurIPS 2019;
IPM; Min-Max / Min-Sum; Fang et al.'s attacks) trains honestly, posts its
benign delta to the attacker service its SuperNode was told about
(``scripts.attacker_service``; wire format :mod:`common.rendezvous`), gets the
round's posted deltas back and computes the attack itself with the **partial
knowledge** of Fang et al. (USENIX Security 2020): from the colluders' own
benign updates only. It makes exactly the call the simulation's wrapper makes
with ``knowledge="partial"``::

    attack(known, len(known), generator=stream(Stream.COLLUDING, seed, server_round))

``known`` is every delta posted for the round, sorted by client id, and the
client replies with the global model plus its own row of the result. When the
attack cannot be formed (:class:`attacks.CollusionInfeasible`, e.g. ALIE's std
over a single colluder) it replies with its benign update.

Node config of a malicious SuperNode:

* ``attacker-service="host:port"``: the attacker service (required);
* ``attacker-key-file="<path>"``: a file with the service's shared key, as seen
  by the ClientApp process (absent: a service started ``--insecure``).

Every reply of a colluder carries a ``collusion`` config record (``formed``,
``known``, ``late``, ``reason``) beside its metrics, so that the harness can
write the round's ``collusion`` entry of ``metrics.jsonl``; the metrics keep the
keys every client sends, and no aggregation rule reads that record.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ConfigRecord, Context
from torch import Tensor

from attacks import CollusionInfeasible
from common.rendezvous import RendezvousError, exchange, read_key
from common.streams import Stream, stream

SERVICE_KEY = "attacker-service"
KEY_FILE_KEY = "attacker-key-file"
WIRE_DTYPE = "float32"


def service_of(context: Context) -> tuple[str, bytes | None]:
    """This SuperNode's attacker service address and key, from its node config; a clear error when absent."""
    config = context.node_config
    if SERVICE_KEY not in config:
        raise RuntimeError(
            "this SuperNode serves a malicious client of a colluding attack in a deployment, but its node config "
            f'has no {SERVICE_KEY}: start it with --node-config \'... role="malicious" '
            f'{SERVICE_KEY}="<host:port>" {KEY_FILE_KEY}="<key file>"\' (poisonlab engine=deployment and '
            "docker/compose.supernodes.yaml do), where poisonlab-attackers listens"
        )
    key_file = config.get(KEY_FILE_KEY)
    try:
        key = None if key_file in (None, "") else read_key(str(key_file))
    except ValueError as err:
        raise RuntimeError(f"node config {KEY_FILE_KEY}: {err}") from None
    return str(config[SERVICE_KEY]), key


def collude(
    run: Any, context: Context, *, cid: int, server_round: int, global_state: dict[str, Tensor],
    state: dict[str, Tensor],
) -> tuple[dict[str, Tensor], ConfigRecord]:  # fmt: skip
    """This colluder's reply state (global + poisoned delta, its own buffers) and its ``collusion`` report.

    ``state`` is its honestly trained model, ``run`` a ``scripts.build.Run``.
    Raises ``RuntimeError`` when the attacker service cannot be reached or
    answers something unusable (the reply then fails, recorded by the server).
    """
    address, key = service_of(context)
    codec, attack = run.codec, run.attack
    start = codec.to_vector(global_state)
    benign = (codec.to_vector(state) - start).to(torch.float32).contiguous()
    try:
        answer = exchange(address, key, run=int(context.run_id), server_round=server_round, client=cid,
                          row=benign.numpy().tobytes(), dtype=WIRE_DTYPE,
                          timeout=float(run.federation.round_timeout))  # fmt: skip
    except (RendezvousError, ValueError) as err:
        raise RuntimeError(f"colluding attack, round {server_round}: {err}") from None
    known = torch.frombuffer(bytearray(answer.rows), dtype=torch.float32).view(len(answer.clients), -1)
    if known.shape[1] != benign.numel():
        raise RuntimeError(
            f"colluding attack, round {server_round}: the attacker service returned rows of {known.shape[1]} "
            f"values for a model of {benign.numel()}"
        )
    report = {"formed": True, "known": len(answer.clients), "late": answer.late, "reason": ""}
    generator = stream(Stream.COLLUDING, run.seed, server_round)
    try:
        poisoned = attack(known, len(answer.clients), generator=generator)
    except CollusionInfeasible as err:
        late = " (posted after the attacker service had answered the round)" if answer.late else ""
        report.update(formed=False, reason=f"{type(attack).__name__} not formed, attackers sent honest updates: "
                                           f"{err}{late}")  # fmt: skip
        return state, ConfigRecord(report)
    delta = poisoned[answer.clients.index(cid)].to(start.dtype)
    return dict(codec.to_state(start + delta, codec.buffers(state))), ConfigRecord(report)
