"""The colluders' rendezvous: the wire format between malicious clients and the attacker service (stdlib only).

In a real deployment the malicious clients of a colluding attack share their
benign updates through an attacker service (``scripts.attacker_service``, the
``poisonlab-attackers`` command) that only they reach: the partial knowledge of
Fang et al. (USENIX Security 2020), where the colluders know their own benign
updates and nothing else. Each malicious client of round ``r`` posts its flat
benign delta and gets back every delta posted for round ``r`` (its own
included), sorted by client id, once every colluder has posted or the service's
window has passed.

One exchange is one connection (:mod:`multiprocessing.connection`, no pickle):

1. with a key, the mutual HMAC challenge of :mod:`multiprocessing.connection`
   (the service challenges first, then answers the client's challenge); a
   service started ``--insecure`` sends the hello ``{"service":
   "poisonlab-attackers", "auth": false}`` instead, so either side tells a key
   mismatch from a network fault;
2. the client sends a JSON header ``{"op": "post", "run", "round", "client",
   "dtype", "length"}`` and then the raw row (``length`` bytes);
3. the service answers a JSON header ``{"ok": true, "clients": [...],
   "dtype", "row_bytes", "late"}`` and then the rows of those clients
   concatenated in that order, or ``{"ok": false, "error": "..."}``.

``run`` (Flower's run id) keeps the rounds of consecutive runs on one long-lived
service apart. ``late`` is true when the client posted after its round had been
answered: it gets its own row only.

This module is the ground floor's part (both the service and the ClientApp use
it); it imports nothing of poisonlab and no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from multiprocessing.connection import AuthenticationError, Client, Connection
from pathlib import Path
from typing import Any

#: the largest header either side accepts, in bytes
MAX_HEADER = 4096
#: the largest row a client may post (1 GiB: ResNet-18's float32 delta is 45 MB)
MAX_ROW = 1 << 30
#: the name in an ``--insecure`` service's hello
SERVICE = "poisonlab-attackers"
#: seconds either side waits for the other's first message (a hello, a header)
HELLO_TIMEOUT = 30.0
#: what the challenge message of :mod:`multiprocessing.connection` starts with (a service that wants a key)
_CHALLENGE = b"#CHALLENGE#"


class RendezvousError(RuntimeError):
    """The attacker service could not be reached, refused the client, or answered something invalid."""


@dataclass(frozen=True)
class Rendezvous:
    """What the attacker service answered for one round.

    Attributes
    ----------
    clients : list of int
        The client ids whose rows were posted for the round, ascending (the poster's own id among them).
    rows : bytes
        Their rows, concatenated in that order (``len(clients) * row_bytes`` bytes).
    late : bool
        The round had already been answered when this client posted: ``clients`` is the poster alone.
    """

    clients: list[int]
    rows: bytes
    late: bool


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` as ``(host, port)``; ``ValueError`` naming the value otherwise (IPv4 or a name only)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or ":" in host:
        raise ValueError(
            f"attacker service address {text!r} is not host:port with an IPv4 address or a host name "
            '(e.g. attacker-service="127.0.0.1:19097")'
        )
    return host, int(port)


def read_key(path: str | Path) -> bytes:
    """The shared key in ``path`` (surrounding whitespace stripped); ``ValueError`` naming the file otherwise."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as err:
        raise ValueError(f"cannot read the attacker service key file {path}: {err.strerror or err}") from None
    if len(key) < 16:
        raise ValueError(
            f"the attacker service key file {path} holds {len(key)} bytes; it needs a random secret of at least "
            "16 bytes (e.g. `openssl rand -hex 32 > attackers.secret`)"
        )
    return key


def send_json(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message, separators=(",", ":")).encode())


def recv_json(conn: Connection, timeout: float, what: str) -> dict[str, Any]:
    """One JSON header within ``timeout`` seconds; :class:`RendezvousError` saying ``what`` was awaited otherwise."""
    if not conn.poll(timeout):
        raise RendezvousError(f"no {what} within {timeout:.0f}s")
    data = conn.recv_bytes(MAX_HEADER)
    if data.startswith(_CHALLENGE):
        raise RendezvousError(
            "the attacker service asks for a key: give this SuperNode node-config attacker-key-file=<file> "
            "holding the service's --key-file secret"
        )
    try:
        message = json.loads(data)
    except ValueError:
        raise RendezvousError(f"the {what} is not JSON ({len(data)} bytes)") from None
    if not isinstance(message, dict):
        raise RendezvousError(f"the {what} is not a JSON object")
    return message


def exchange(
    address: str, key: bytes | None, *, run: int, server_round: int, client: int, row: bytes, dtype: str,
    timeout: float,
) -> Rendezvous:  # fmt: skip
    """Post client ``client``'s ``row`` for ``(run, server_round)``; wait for the round's rows.

    Parameters
    ----------
    address : str
        The attacker service, ``host:port``.
    key : bytes, optional
        The shared key (``None``: a service started with ``--insecure``).
    row : bytes
        The client's flat benign delta in ``dtype`` (e.g. ``"float32"``).
    timeout : float
        Seconds to wait for the answer (the service answers within its window).

    Raises
    ------
    RendezvousError
        Unreachable service, wrong key, a refusal (the service's reason), no answer in time, a malformed answer.
    """
    host, port = parse_address(address)
    try:
        conn = Client((host, port), authkey=key)
    except AuthenticationError as err:
        raise RendezvousError(
            f"the attacker service at {address} refused this client's key ({err}): attacker-key-file must hold "
            "the secret the service was started with (--key-file)"
        ) from None
    except (AssertionError, EOFError):  # multiprocessing asserts that the service's first message is a challenge
        raise RendezvousError(
            f"the attacker service at {address} sent no key challenge: it runs --insecure, so drop "
            "attacker-key-file from this SuperNode's node config (or start the service with --key-file)"
        ) from None
    except OSError as err:
        raise RendezvousError(
            f"cannot reach the attacker service at {address} ({err}): is poisonlab-attackers running there, "
            "and reachable from this SuperNode's ClientApp?"
        ) from None
    with conn:
        try:
            if key is None:
                hello = recv_json(conn, HELLO_TIMEOUT, f"hello from the attacker service at {address}")
                if hello.get("service") != SERVICE:
                    raise RendezvousError(f"{address} is not a poisonlab attacker service (it sent {hello})")
            send_json(conn, {"op": "post", "run": int(run), "round": int(server_round), "client": int(client),
                             "dtype": dtype, "length": len(row)})  # fmt: skip
            conn.send_bytes(row)
            answer = recv_json(conn, timeout, f"answer from the attacker service at {address} for round {server_round}")
            if not answer.get("ok"):
                raise RendezvousError(f"the attacker service at {address} refused the post: {answer.get('error')}")
            clients = [int(c) for c in answer["clients"]]
            width = int(answer["row_bytes"])
            if not conn.poll(timeout):
                raise RendezvousError(f"the attacker service at {address} sent a header but no rows")
            rows = conn.recv_bytes(MAX_ROW * max(1, len(clients)))
        except (EOFError, OSError) as err:
            raise RendezvousError(f"the attacker service at {address} closed the connection: {err!r}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise RendezvousError(f"the attacker service at {address} answered a malformed header: {err}") from None
    if clients != sorted(set(clients)) or client not in clients or len(rows) != width * len(clients):
        raise RendezvousError(
            f"the attacker service at {address} answered an inconsistent round: clients {clients}, "
            f"{len(rows)} bytes of rows of {width} bytes, poster {client}"
        )
    return Rendezvous(clients=clients, rows=rows, late=bool(answer.get("late", False)))
