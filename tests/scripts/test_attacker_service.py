"""The attacker service (``poisonlab-attackers``): the colluders' rendezvous, as a real process on loopback.

Colluders post their rows and get every row of their round back, sorted by
client id, as soon as every colluder posted or once the window has passed;
a wrong key, an unknown colluder or a row that does not fit the round is
refused with a reason; answered rounds are forgotten.
"""

from __future__ import annotations

import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.rendezvous import Rendezvous, RendezvousError, exchange
from scripts.attacker_service import Board, PostRefused, attacker_service_argv, make_key, service_bin
from scripts.flower_run import free_port, wait_for_port

HOST = "127.0.0.1"


def row(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


class Service:
    """A running ``poisonlab-attackers`` process."""

    def __init__(self, tmp: Path, *, colluders: list[int], window: float, insecure: bool = False) -> None:
        self.key_file = None if insecure else make_key(tmp / f"attackers-{time.monotonic_ns()}.key")
        self.port = free_port(HOST)
        self.address = f"{HOST}:{self.port}"
        argv = attacker_service_argv(HOST, self.port, key_file=self.key_file, colluders=colluders, window=window,
                                     program=service_bin())  # fmt: skip
        self.log = tmp / f"attackers-{self.port}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(HOST, self.port, 30, self.proc)

    @property
    def key(self) -> bytes | None:
        return None if self.key_file is None else self.key_file.read_bytes()

    def post(self, client: int, data: bytes, *, server_round: int = 1, run: int = 7, key: bytes | None = b"",
             timeout: float = 30) -> Rendezvous:  # fmt: skip
        return exchange(self.address, self.key if key == b"" else key, run=run, server_round=server_round,
                        client=client, row=data, dtype="float32", timeout=timeout)  # fmt: skip

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        return self.log.read_text()


@pytest.fixture
def service(tmp_path) -> Iterator[Service]:
    running = Service(tmp_path, colluders=[2, 5], window=60)
    yield running
    running.stop()


def test_two_colluders_get_both_rows_sorted_by_client_id_as_soon_as_both_posted(service):
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        five = pool.submit(service.post, 5, row(5.0, 50.0))  # the higher id posts first
        time.sleep(0.3)
        two = pool.submit(service.post, 2, row(2.0, 20.0))
        answers = [five.result(), two.result()]
    assert time.monotonic() - start < 30  # answered when both posted, not after the 60 s window
    for answer in answers:
        assert answer.clients == [2, 5] and answer.late is False
        assert answer.rows == row(2.0, 20.0) + row(5.0, 50.0)
    # the next round is a new rendezvous: the same two, again both rows
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda c: service.post(c, row(float(c), 1.0), server_round=2), [2, 5]))
    assert [a.rows for a in both] == [row(2.0, 1.0) + row(5.0, 1.0)] * 2


def test_the_window_answers_a_lone_colluder_and_a_late_one_gets_its_own_row(tmp_path):
    service = Service(tmp_path, colluders=[2, 5], window=1.5)
    try:
        start = time.monotonic()
        alone = service.post(5, row(1.0, 2.0, 3.0), server_round=4)
        waited = time.monotonic() - start
        assert alone.clients == [5] and alone.rows == row(1.0, 2.0, 3.0) and alone.late is False
        assert 1.4 <= waited < 15, waited  # the other colluder was not sampled: answered when the window passed
        start = time.monotonic()
        late = service.post(2, row(4.0, 5.0, 6.0), server_round=4)  # round 4 was answered already
        assert late.clients == [2] and late.rows == row(4.0, 5.0, 6.0) and late.late is True
        assert time.monotonic() - start < 1.4  # at once, not another window
    finally:
        log = service.stop()
    assert "run 7 round 4: answered clients [5] (window of 1.5s passed)" in log
    assert "client 2 posted after the round was answered" in log


def test_a_wrong_key_is_refused_and_the_service_keeps_serving(service):
    with pytest.raises(RendezvousError, match="refused this client's key"):
        service.post(2, row(1.0), key=b"not-the-key-0123456789")
    with pytest.raises(RendezvousError, match="asks for a key"):
        service.post(2, row(1.0), key=None)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda c: service.post(c, row(float(c))), [5, 2]))
    assert [a.clients for a in answers] == [[2, 5], [2, 5]]
    log = service.stop()
    assert log.count("refused a client") == 1 and "digest received was wrong (wrong key)" in log


def test_unknown_colluders_and_misfit_rows_are_refused_with_the_reason(service):
    with pytest.raises(RendezvousError, match=r"client 9 is not one of the colluders \[2, 5\]"):
        service.post(9, row(1.0, 2.0))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(service.post, 2, row(1.0, 2.0), server_round=3)
        time.sleep(0.3)
        with pytest.raises(RendezvousError, match="posted 12 bytes of float32 .* but the round's rows are 8 bytes"):
            service.post(5, row(1.0, 2.0, 3.0), server_round=3)
        service.post(5, row(3.0, 4.0), server_round=3)
        assert first.result().clients == [2, 5]


def test_an_insecure_service_and_a_client_with_a_key_tell_each_other_apart(tmp_path):
    service = Service(tmp_path, colluders=[1], window=5, insecure=True)
    try:
        assert service.post(1, row(1.0), key=None).clients == [1]
        with pytest.raises(RendezvousError, match="runs --insecure"):
            service.post(1, row(1.0), server_round=2, key=b"0123456789abcdef0123")
    finally:
        service.stop()


def test_an_unreachable_service_is_named():
    port = free_port(HOST)
    with pytest.raises(RendezvousError, match=f"cannot reach the attacker service at {HOST}:{port}"):
        exchange(f"{HOST}:{port}", None, run=1, server_round=1, client=0, row=row(1.0), dtype="float32", timeout=5)


def test_the_board_forgets_answered_rounds_and_keeps_runs_apart():
    board = Board(colluders=[0, 1], window=30)
    results: dict[tuple[int, int], list[int]] = {}

    def post(run: int, client: int) -> None:
        results[(run, client)] = board.post(run, 1, client, "float32", row(float(run), float(client))).clients

    threads = [threading.Thread(target=post, args=(run, c)) for run in (1, 2) for c in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {(1, 0): [0, 1], (1, 1): [0, 1], (2, 0): [0, 1], (2, 1): [0, 1]}
    assert board.open_rounds() == 0  # every waiting colluder has its answer: nothing kept
    with pytest.raises(PostRefused, match="not one of the colluders"):
        board.post(1, 2, 3, "float32", row(1.0))
    with pytest.raises(ValueError, match="window must be > 0"):
        Board(colluders=None, window=0)


def test_the_cli_refuses_a_missing_or_short_key(tmp_path):
    cmd = [service_bin(), "--port", str(free_port(HOST))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "one of the arguments --key-file --insecure is required" in out.stderr
    short = tmp_path / "short.key"
    short.write_text("abc")
    out = subprocess.run([*cmd, "--key-file", str(short)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"the attacker service key file {short} holds 3 bytes" in out.stderr
