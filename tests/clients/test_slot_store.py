"""The slot file that keeps many clients' momentum (``clients.slot_store``): ClientStateStore's semantics."""

from __future__ import annotations

import multiprocessing
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

import clients.slot_store as slot_store
from clients.slot_store import SLOT_FILE, SlotStateStore, StateLayoutError, open_state_store
from clients.state_store import ClientStateStore

SHAPES = {"0": (6, 1, 3, 3), "1": (6,), "2": (10, 24), "3": ()}


def momentum(seed: int, keys: tuple[str, ...] = tuple(SHAPES)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(SHAPES[k], generator=gen) for k in keys}


def state(seed: int, participations: int, keys: tuple[str, ...] = tuple(SHAPES)) -> dict[str, Any]:
    return {"momentum": momentum(seed, keys), "participations": participations}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal states: the same participations, momentum keys, shapes, dtypes and values."""
    if set(a) != set(b):
        return False
    if not a:
        return True
    ma, mb = a["momentum"], b["momentum"]
    return (
        a["participations"] == b["participations"]
        and list(ma) == list(mb)
        and all(
            x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
            for x, y in zip(ma.values(), mb.values(), strict=True)
        )
    )


def test_a_saved_state_comes_back_equal_with_only_its_entries(tmp_path):
    store = SlotStateStore(tmp_path, num_clients=50)
    assert store.load(7, 10) == {}  # no file yet: nothing saved, and a load creates nothing
    assert not (tmp_path / SLOT_FILE).exists()
    full, part = state(1, 3), state(2, 4, ("0", "2"))
    store.save(7, 1, full)
    store.save(49, 1, part)  # another client, with a subset of the layout's entries
    assert same(store.load(7, 2), full)
    got = store.load(49, 2)
    assert same(got, part) and list(got["momentum"]) == ["0", "2"]
    assert got["momentum"]["0"].is_contiguous() and got["momentum"]["0"].data_ptr() != part["momentum"]["0"].data_ptr()
    again = SlotStateStore(tmp_path, num_clients=50)  # another process's store: the layout comes from the file
    assert same(again.load(7, 2), full) and same(again.load(49, 5), part) and again.load(8, 5) == {}


def test_only_strictly_earlier_rounds_are_read_and_two_are_kept(tmp_path):
    store = SlotStateStore(tmp_path, num_clients=4)
    for r in (1, 2, 3):
        store.save(2, r, state(r, r))
    assert same(store.load(2, 4), state(3, 3))
    assert same(store.load(2, 3), state(2, 2))  # round 3's own state is not read for round 3
    assert store.load(2, 2) == {}  # round 1 gave its slot to round 3
    store.save(2, 3, state(30, 3))  # round 3 again (a resumed round): replaces its first attempt
    assert same(store.load(2, 4), state(30, 3)) and same(store.load(2, 3), state(2, 2))
    store.save(2, 1, state(10, 1))  # older than both kept rounds: dropped, as ClientStateStore drops it
    assert same(store.load(2, 3), state(2, 2)) and store.load(2, 2) == {}


def test_every_sequence_of_saves_and_loads_reads_what_client_state_store_reads(tmp_path):
    rng = random.Random(0)
    ours, reference = SlotStateStore(tmp_path / "slots", num_clients=3, layout=SHAPES), ClientStateStore(tmp_path / "f")
    for step in range(300):
        cid, r = rng.randrange(3), rng.randrange(0, 9)
        if rng.random() < 0.5:
            saved = state(step, rng.randrange(100), tuple(k for k in SHAPES if rng.random() < 0.8) or ("1",))
            ours.save(cid, r, saved)
            reference.save(cid, r, saved)
        else:
            assert same(ours.load(cid, r), reference.load(cid, r)), (step, cid, r)


@pytest.mark.parametrize("stop_after", ["header", "payload"])
def test_a_slot_whose_save_stopped_before_its_round_tag_is_never_read(tmp_path, monkeypatch, stop_after):
    store = SlotStateStore(tmp_path, num_clients=4)
    store.save(1, 1, state(1, 1))
    store.save(1, 2, state(2, 2))

    class Crash(Exception):
        pass

    real = slot_store._write_run

    def write_then_crash(fd: int, offset: int, tensors: list[torch.Tensor]) -> None:
        if stop_after == "payload":
            real(fd, offset, tensors)
        raise Crash

    monkeypatch.setattr(slot_store, "_write_run", write_then_crash)
    with pytest.raises(Crash):
        store.save(1, 3, state(3, 3))  # into round 1's slot: killed before its tag
    monkeypatch.undo()
    geo = store._geo
    raw = store._slot(geo, 1, 0)  # round 1's slot, the one being overwritten
    tag, participations = struct.unpack("<qq", os.pread(store._fd, 16, raw))
    assert (tag, participations) == (0, 3)  # the new header is there, the tag still says "being written"
    if stop_after == "payload":  # the payload is there too: only the tag keeps it from being read
        nbytes = 4 * SHAPES["2"][0] * SHAPES["2"][1]
        on_disk = torch.frombuffer(bytearray(os.pread(store._fd, nbytes, raw + geo.offsets[2])), dtype=torch.float32)
        assert torch.equal(on_disk, state(3, 3)["momentum"]["2"].reshape(-1))
    fresh = SlotStateStore(tmp_path, num_clients=4)  # the restarted process
    assert same(fresh.load(1, 4), state(2, 2)) and same(fresh.load(1, 3), state(2, 2)) and fresh.load(1, 2) == {}
    fresh.save(1, 3, state(33, 3))  # the resumed round writes the slot again
    assert same(fresh.load(1, 4), state(33, 3)) and same(fresh.load(1, 3), state(2, 2))


def _worker(root: str, first: int, barrier: Any) -> None:
    store = SlotStateStore(Path(root), num_clients=40)
    barrier.wait()  # both processes create the file at the same moment
    for r in range(1, 6):
        for cid in range(first, 40, 2):
            store.save(cid, r, state(1000 * r + cid, r))


def test_two_processes_writing_different_clients_at_once_read_back_exactly(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_worker, args=(str(tmp_path), first, barrier)) for first in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    store = SlotStateStore(tmp_path, num_clients=40)
    for cid in range(40):
        assert same(store.load(cid, 6), state(5000 + cid, 5)) and same(store.load(cid, 5), state(4000 + cid, 4))
    assert (tmp_path / SLOT_FILE).stat().st_size == store._slot(store._geo, 40, 0)  # sized once, for 40 clients


def test_states_and_files_of_another_layout_are_refused(tmp_path):
    store = SlotStateStore(tmp_path, num_clients=5)
    store.save(0, 1, state(1, 1))
    bad = {"0": torch.zeros(6, 1, 3, 4)}
    with pytest.raises(StateLayoutError, match="'0' of shape"):
        store.save(0, 2, {"momentum": bad, "participations": 2})
    with pytest.raises(StateLayoutError, match="'9' of shape"):
        store.save(0, 2, {"momentum": {"9": torch.zeros(1)}, "participations": 2})
    with pytest.raises(StateLayoutError, match="float32"):
        store.save(0, 2, {"momentum": {"1": torch.zeros(6, dtype=torch.float64)}, "participations": 2})
    with pytest.raises(StateLayoutError, match="ClientStateStore"):
        store.save(0, 2, {**state(2, 2), "ledger": [[1.0, 0.1, 5]]})
    with pytest.raises(StateLayoutError, match="lacks"):
        store.save(0, 2, {"momentum": {}})
    with pytest.raises(IndexError, match="outside 0..4"):
        store.save(5, 2, state(2, 2))
    assert same(store.load(0, 3), state(1, 1))  # none of the refused saves touched the slots
    with pytest.raises(StateLayoutError, match="num_clients 5 on disk, 6 here"):
        SlotStateStore(tmp_path, num_clients=6).load(0, 3)
    other = {k: (2, *s) for k, s in SHAPES.items()}
    with pytest.raises(StateLayoutError, match="momentum layout"):
        SlotStateStore(tmp_path, num_clients=5, layout=other).load(0, 3)


def test_a_given_layout_takes_entries_the_first_state_lacks(tmp_path):
    store = SlotStateStore(tmp_path, num_clients=3, layout=SHAPES)
    first, later = state(1, 1, ("1",)), state(2, 2)
    store.save(0, 1, first)
    store.save(0, 2, later)  # "0", "2", "3" appear only now
    assert same(store.load(0, 2), first) and same(store.load(0, 3), later)


def test_the_file_is_sparse_and_the_factory_picks_the_store(tmp_path):
    store = open_state_store(tmp_path, num_clients=10_000, keeps_ledger=False)
    assert isinstance(store, SlotStateStore)
    big = {"momentum": {"0": torch.ones(200_000)}, "participations": 1}
    for cid in (0, 5_000, 9_999):
        store.save(cid, 1, big)
    stat = (tmp_path / SLOT_FILE).stat()
    assert stat.st_size > 2 * 10_000 * 800_000  # room for every client's two slots ...
    assert stat.st_blocks * 512 < 8 * 800_000  # ... of which only the three written take disk
    assert torch.equal(store.load(9_999, 2)["momentum"]["0"], big["momentum"]["0"])
    assert isinstance(open_state_store(tmp_path, num_clients=10_000, keeps_ledger=True), ClientStateStore)


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_resident_memory_does_not_grow_with_the_clients_that_took_part(tmp_path):
    n, floats = 2_000, 50_000  # 400 MB of momentum: a long-lived memmap would keep all of it resident
    store = SlotStateStore(tmp_path, num_clients=n)
    buffers = {"0": torch.ones(floats), "1": torch.ones(10)}
    for cid in range(20):  # warm-up: allocator, first file pages
        store.save(cid, 1, {"momentum": buffers, "participations": 1})
        store.load(cid, 2)
    before = _rss_mib()
    for cid in range(n):
        store.save(cid, 1, {"momentum": buffers, "participations": 1})
        got = store.load(cid, 2)
        assert got["participations"] == 1 and got["momentum"]["0"].shape == (floats,)
    grown = _rss_mib() - before
    assert grown < 40, (
        f"resident memory grew by {grown:.0f} MiB over {n} clients ({4 * floats * n / 2**20:.0f} MiB saved)"
    )
    assert torch.equal(store.load(n - 1, 2)["momentum"]["0"], buffers["0"])


def test_a_durable_store_writes_the_same_file(tmp_path):
    with SlotStateStore(tmp_path, num_clients=3, durable=True) as store:
        store.save(2, 4, state(4, 1))
    assert same(SlotStateStore(tmp_path, num_clients=3).load(2, 5), state(4, 1))
