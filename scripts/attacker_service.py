"""The attacker service: where the malicious clients of a colluding attack meet (``poisonlab-attackers``).

In a real deployment (``engine=deployment``, ``docker/``) a colluding attack
(ALIE, Baruch et al., NeurIPS 2019; IPM; Min-Max / Min-Sum; Fang et al.'s
attacks) is computed by the malicious clients themselves, with the **partial
knowledge** of Fang et al. (USENIX Security 2020): each colluder knows its own
benign update and those of the other colluders of the round, nothing of the
honest clients. This service is the only thing they share: a bulletin board
that only the malicious SuperNodes' ClientApps reach (a key, and in ``docker/``
a network of their own).

Per round it collects the benign delta each colluder posts and answers every
waiting colluder with all deltas posted for that round, sorted by client id,
once every known colluder (``--colluders``) has posted or ``--window`` seconds
have passed since the round's first post. Colluders are not told who else was
sampled: with the window, the ones not sampled simply do not post. A colluder
that posts after its round was answered gets its own row only (``late``). A
round is forgotten once every waiting colluder has its answer, so memory
holds the open rounds only (and the ids of the last few thousand answered
ones). Rounds are keyed by Flower's run id as well, so one long-lived service
serves consecutive runs. The wire format is :mod:`common.rendezvous`'s; the
service never decodes the rows (no torch, no numpy), it only checks that a
round's rows agree in dtype and length.

    poisonlab-attackers --host 0.0.0.0 --port 19093 --key-file attackers.secret --colluders 3,4 --window 30
"""

from __future__ import annotations

import argparse
import logging
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import AuthenticationError, Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path

from common.rendezvous import (
    HELLO_TIMEOUT,
    MAX_ROW,
    SERVICE,
    RendezvousError,
    parse_address,
    read_key,
    recv_json,
    send_json,
)

log = logging.getLogger("poisonlab.attackers")

#: how many answered rounds are remembered (to answer a late post at once instead of opening the round again)
CLOSED_MEMORY = 4096


class PostRefused(ValueError):
    """A post the service will not take (unknown colluder, a row that does not fit the round); says why."""


@dataclass
class _Round:
    first: float
    dtype: str
    width: int
    rows: dict[int, bytes] = field(default_factory=dict)
    answer: tuple[list[int], bytes] | None = None
    waiting: int = 0


@dataclass(frozen=True)
class Answer:
    """One colluder's answer: the round's client ids (ascending), their rows concatenated, whether it was late."""

    clients: list[int]
    rows: bytes
    late: bool


class Board:
    """The rendezvous of the colluders, one round at a time (thread-safe; :meth:`post` blocks).

    Parameters
    ----------
    colluders : collection of int, optional
        The malicious client ids. A round is answered as soon as all of them
        have posted; a post from another id is refused. ``None``: any id may
        post, and every round waits for the window.
    window : float
        Seconds after a round's first post after which it is answered with what was posted.
    clock : callable
        Monotonic seconds (tests may pass their own).
    """

    def __init__(self, *, colluders: Sequence[int] | None, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if not window > 0:
            raise ValueError(f"the attacker service's window must be > 0 seconds, got {window}")
        self.colluders = None if colluders is None else frozenset(int(c) for c in colluders)
        self.window, self.clock = float(window), clock
        self._cond = threading.Condition()
        self._open: dict[tuple[int, int], _Round] = {}
        self._closed: deque[tuple[int, int]] = deque(maxlen=CLOSED_MEMORY)
        self._closed_set: set[tuple[int, int]] = set()

    def open_rounds(self) -> int:
        """How many rounds are held (posted, not yet handed to every waiting colluder)."""
        with self._cond:
            return len(self._open)

    def post(self, run: int, server_round: int, client: int, dtype: str, row: bytes) -> Answer:
        """Post ``client``'s row for ``(run, server_round)`` and wait for the round's answer."""
        if self.colluders is not None and client not in self.colluders:
            raise PostRefused(
                f"client {client} is not one of the colluders {sorted(self.colluders)} this service was started "
                "with (--colluders)"
            )
        key = (int(run), int(server_round))
        with self._cond:
            if key in self._closed_set:
                log.warning("run %d round %d: client %d posted after the round was answered; it gets its own row",
                            *key, client)  # fmt: skip
                return Answer([client], row, late=True)
            rnd = self._open.get(key)
            if rnd is None:
                rnd = self._open[key] = _Round(first=self.clock(), dtype=dtype, width=len(row))
            if (dtype, len(row)) != (rnd.dtype, rnd.width):
                raise PostRefused(
                    f"client {client} posted {len(row)} bytes of {dtype} for run {run} round {server_round}, "
                    f"but the round's rows are {rnd.width} bytes of {rnd.dtype}: every colluder must train the "
                    "same model"
                )
            rnd.rows[client] = row
            rnd.waiting += 1
            try:
                while rnd.answer is None:
                    if self.colluders is not None and self.colluders <= rnd.rows.keys():
                        self._close(key, rnd, "every colluder posted")
                        break
                    left = rnd.first + self.window - self.clock()
                    if left <= 0:
                        self._close(key, rnd, f"window of {self.window:g}s passed")
                        break
                    self._cond.wait(left)
            finally:
                rnd.waiting -= 1
                if rnd.waiting == 0 and rnd.answer is not None:
                    del self._open[key]
            clients, rows = rnd.answer
            return Answer(list(clients), rows, late=False)

    def _close(self, key: tuple[int, int], rnd: _Round, why: str) -> None:
        ids = sorted(rnd.rows)
        rnd.answer = (ids, b"".join(rnd.rows[c] for c in ids))
        rnd.rows = {}
        if len(self._closed) == self._closed.maxlen:
            self._closed_set.discard(self._closed[0])
        self._closed.append(key)
        self._closed_set.add(key)
        self._cond.notify_all()
        log.info("run %d round %d: answered clients %s (%s)", *key, ids, why)


class AttackerService:
    """The board behind a listening socket: one thread per connection (one exchange each).

    Parameters
    ----------
    host, port : str, int
        Where to listen (port 0: any free port; see :attr:`address`).
    key : bytes, optional
        The shared key every client must prove (``None``: no authentication, ``--insecure``).
    board : Board
        The rendezvous.
    """

    def __init__(self, host: str, port: int, *, key: bytes | None, board: Board) -> None:
        self.key, self.board = key, board
        self.listener = Listener((host, port), family="AF_INET", backlog=64)
        self.address: tuple[str, int] = self.listener.address
        self._closing = False

    def serve_forever(self) -> None:
        """Accept connections until :meth:`close`."""
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                if self._closing:
                    return
                raise
            if self._closing:
                conn.close()
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        """Stop accepting (a blocked ``accept`` is woken by one last connection of our own)."""
        if self._closing:
            return
        self._closing = True
        try:
            socket.create_connection(self.address, timeout=1.0).close()
        except OSError:
            pass
        self.listener.close()

    def _serve(self, conn: Connection) -> None:
        with conn:
            try:
                if self.key is None:
                    send_json(conn, {"service": SERVICE, "auth": False})
                else:
                    deliver_challenge(conn, self.key)
                    answer_challenge(conn, self.key)
            except AuthenticationError as err:
                log.warning("refused a client: %s (wrong key)", err)
                return
            except (EOFError, OSError):  # e.g. a port probe that connects and closes
                log.debug("a connection closed before authenticating")
                return
            try:
                header = recv_json(conn, HELLO_TIMEOUT, "post header")
                if header.get("op") != "post":
                    raise PostRefused(f"unknown operation {header.get('op')!r} (only 'post')")
                length = int(header["length"])
                if not 0 < length <= MAX_ROW:
                    raise PostRefused(f"a row of {length} bytes (1..{MAX_ROW} allowed)")
                if not conn.poll(HELLO_TIMEOUT):
                    raise PostRefused(f"no row within {HELLO_TIMEOUT:.0f}s of its header")
                row = conn.recv_bytes(MAX_ROW)
                if len(row) != length:
                    raise PostRefused(f"the header announced {length} bytes, the row has {len(row)}")
                answer = self.board.post(int(header["run"]), int(header["round"]), int(header["client"]),
                                         str(header["dtype"]), row)  # fmt: skip
            except (PostRefused, RendezvousError, KeyError, TypeError, ValueError) as err:
                log.warning("refused a post: %s", err)
                try:
                    send_json(conn, {"ok": False, "error": str(err)})
                except OSError:
                    pass
                return
            except (EOFError, OSError) as err:
                log.warning("a colluder's connection failed: %r", err)
                return
            try:
                send_json(conn, {"ok": True, "clients": answer.clients, "dtype": header["dtype"],
                                 "row_bytes": length, "late": answer.late})  # fmt: skip
                conn.send_bytes(answer.rows)
            except OSError as err:
                log.warning("could not answer client %s: %r", header.get("client"), err)


def make_key(path: Path) -> Path:
    """Write a fresh random key (64 hex characters) to ``path``, readable by its owner only; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=False)
    path.write_text(secrets.token_hex(32))
    return path


def service_bin() -> str:
    """The ``poisonlab-attackers`` console script beside this Python (the project's environment)."""
    path = Path(sys.executable).parent / "poisonlab-attackers"
    if not path.exists():
        raise FileNotFoundError(
            f"poisonlab-attackers not found beside {sys.executable}; reinstall poisonlab (pip install -e .)"
        )
    return str(path)


def attacker_service_argv(
    host: str, port: int, *, key_file: Path | str | None, colluders: Sequence[int], window: float,
    program: str = "poisonlab-attackers",
) -> list[str]:  # fmt: skip
    """The service's command line (``key_file=None``: ``--insecure``); the launcher and ``docker/`` both use it."""
    security = ["--insecure"] if key_file is None else ["--key-file", str(key_file)]
    ids = ",".join(str(int(c)) for c in sorted(colluders))
    return [program, "--host", host, "--port", str(port), "--colluders", ids, "--window", f"{window:g}", *security]


def _colluder_ids(text: str) -> list[int]:
    try:
        return sorted({int(t) for t in text.replace(",", " ").split()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--colluders takes client ids separated by commas, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="poisonlab-attackers", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (IPv4 or a host name)")
    p.add_argument("--port", type=int, required=True, help="port to listen on")
    p.add_argument("--colluders", type=_colluder_ids, default=None,
                   help="the malicious client ids, e.g. 3,4 (a round is answered once all posted; others are "
                        "refused); empty or absent: any id, every round waits for the window")  # fmt: skip
    p.add_argument("--window", type=float, default=30.0,
                   help="seconds after a round's first post after which it is answered with what was posted "
                        "(default 30)")  # fmt: skip
    auth = p.add_mutually_exclusive_group(required=True)
    auth.add_argument("--key-file", type=Path, help="file holding the key every colluder must prove (HMAC)")
    auth.add_argument("--insecure", action="store_true", help="no authentication (one-machine experiments only)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        key = None if args.insecure else read_key(args.key_file)
        parse_address(f"{args.host}:{args.port}")
        board = Board(colluders=args.colluders or None, window=args.window)
        service = AttackerService(args.host, args.port, key=key, board=board)
    except (ValueError, OSError) as err:
        print(f"poisonlab-attackers: {err}", file=sys.stderr)
        return 2
    who = "any client id" if board.colluders is None else f"colluders {sorted(board.colluders)}"
    log.info("listening on %s:%d for %s, window %gs, %s", *service.address, who, board.window,
             "no authentication (--insecure)" if key is None else f"key from {args.key_file}")  # fmt: skip
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
