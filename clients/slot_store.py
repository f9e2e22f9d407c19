"""Momentum kept across participations for very many clients: one preallocated, sparse slot file per run.

:class:`SlotStateStore` has the interface and the semantics of
:class:`clients.state_store.ClientStateStore` (``load(cid, before_round)`` returns
the state saved after the client's latest round strictly before
``before_round``; each client keeps its ``keep`` newest rounds, a round saved
again replaces itself) for states of one fixed layout only::

    {"momentum": {"<parameter index>": float32 tensor, ...}, "participations": int}

(what ``clients.app`` saves when ``client.keep_optimizer_state`` is on and DP is
off). A state with any other key (the DP ledger) is refused: such runs keep
:class:`~clients.state_store.ClientStateStore`; :func:`open_state_store` chooses.

Instead of a ``torch.save`` file per client and round it writes into one file,
``<root>/momentum.slots``, sized at creation for every client of the run and
left sparse (only the slots written take disk)::

    offset 0     8 bytes   magic b"PLSLOTS1", written last when the file is created
    offset 8     8 bytes   length of the layout header (little-endian uint64)
    offset 16    JSON      layout header: version, num_clients, keep, momentum entries
                           (key, shape), slot_header and slot_size in bytes, data_offset
    data_offset            num_clients * keep slots, client ``cid``'s slot ``k`` at
                           data_offset + (cid * keep + k) * slot_size

    slot:  int64 tag (server round + 1; 0: empty or being written)
           int64 participations
           one byte per momentum entry: 1 if present in this state
           (padded to slot_header bytes) the entries' float32 values, in layout order,
           each at its fixed offset (an absent entry's bytes are left as they were)
           (padded to a multiple of 4096 bytes)

The layout (the momentum keys and shapes) is the first saved state's unless
given to the store (``layout=``, e.g. every trainable parameter's shape, so a
parameter whose momentum appears only later fits); a later state may hold a
subset of its entries, never another key, shape or dtype
(:class:`StateLayoutError`).

**Resident memory.** Slots are read and written with ``os.preadv`` /
``os.pwritev`` straight between the file and the tensors, never mapped: the
process's resident memory does not grow with the number of clients that have
taken part (a long-lived ``numpy.memmap`` of the file would count every page it
touched in RSS, see ``benchmarks/bench_state_store.py``). The file's pages live
in the kernel's page cache, which the kernel reclaims under memory pressure.

**Crash safety.** A save first zeroes the tag of the slot it overwrites (the
client's oldest round, or the same round again on a resumed round), then writes
participations, presence and momentum, then the new tag; a reader takes a slot
only with a nonzero tag, and reads the tag again after the payload (a slot
rewritten meanwhile is read again). A process killed at any point of a save
therefore leaves the client's other slots intact and the slot being written
empty, never half-valid. The order holds through the page cache; without
``durable=True`` (an ``fdatasync`` after the payload and after the tag, slow)
a power loss or kernel crash may write pages back out of order. Unlike
``ClientStateStore``'s atomic file replace, a save of a round that crashes
loses that round's earlier attempt too: the client then restarts from its
previous round, exactly what a resumed round reads anyway.

**Concurrency.** Several processes (one Ray actor per worker) may read and write
different clients of one file at once: their slots never overlap, and
``pread``/``pwrite`` carry their own offsets. The file is created race-free: under
an exclusive ``flock`` the first saver writes the layout header, extends the
file to its full size (``ftruncate``, idempotent) and writes the magic last;
everyone else checks the header against its own layout and ``num_clients``.
One client is written by one process at a time (Flower trains a client once
per round); two simultaneous saves of the same client are not guarded.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from clients.state_store import ClientStateStore

SLOT_FILE = "momentum.slots"
MAGIC = b"PLSLOTS1"
VERSION = 1
PAGE = 4096
_TAG = struct.Struct("<q")  # server round + 1 (0: empty or being written)
_HEAD = struct.Struct("<qq")  # tag, participations
_KEYS = frozenset({"momentum", "participations"})
_IOV_MAX = max(1, min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024))
_RETRIES = 8

Layout = Sequence[tuple[str, tuple[int, ...]]]


class StateLayoutError(ValueError):
    """A state, or the slot file on disk, does not fit this store's fixed layout."""


class StateStore(Protocol):
    """What ``clients.app`` needs of a client-state store."""

    def load(self, cid: int, before_round: int) -> dict[str, Any]: ...

    def save(self, cid: int, server_round: int, state: dict[str, Any]) -> None: ...


def open_state_store(
    root: Path, *, num_clients: int, keeps_ledger: bool, layout: Layout | Mapping[str, Sequence[int]] | None = None
) -> StateStore:
    """The state store for a run's client-state folder ``root``.

    Parameters
    ----------
    root : Path
        The run's client-state folder on this node (``clients.state_store.state_root``).
    num_clients : int
        Clients in the run (client ids ``0 .. num_clients - 1``): sizes the slot file.
    keeps_ledger : bool
        Whether states carry more than momentum and participations (a DP-SGD run's
        privacy ledger): then a :class:`~clients.state_store.ClientStateStore`,
        else a :class:`SlotStateStore`.
    layout : sequence of (key, shape) or mapping key -> shape, optional
        The momentum layout for the slot store (default: the first saved state's).

    Returns
    -------
    StateStore
        A store with ``load(cid, before_round)`` and ``save(cid, server_round, state)``.
    """
    if keeps_ledger:
        return ClientStateStore(root)
    return SlotStateStore(root, num_clients=num_clients, layout=layout)


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _as_layout(layout: Layout | Mapping[str, Sequence[int]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    items = layout.items() if isinstance(layout, Mapping) else layout
    out = tuple((str(key), tuple(int(d) for d in shape)) for key, shape in items)
    if len({key for key, _ in out}) != len(out):
        raise StateLayoutError(f"momentum layout repeats a key: {[key for key, _ in out]}")
    return out


class _Geometry:
    """Offsets and sizes of one layout's slots."""

    def __init__(self, entries: tuple[tuple[str, tuple[int, ...]], ...], num_clients: int, keep: int) -> None:
        self.entries, self.num_clients, self.keep = entries, num_clients, keep
        self.index = {key: i for i, (key, _) in enumerate(entries)}
        self.numel = [math.prod(shape) for _, shape in entries]
        self.offsets: list[int] = []
        self.slot_header = _round_up(_HEAD.size + len(entries), 64)
        at = self.slot_header
        for n in self.numel:
            self.offsets.append(at)
            at += 4 * n
        self.slot_size = _round_up(at, PAGE)

    def header(self, data_offset: int) -> dict[str, Any]:
        return {
            "version": VERSION,
            "num_clients": self.num_clients,
            "keep": self.keep,
            "entries": [[key, list(shape)] for key, shape in self.entries],
            "slot_header": self.slot_header,
            "slot_size": self.slot_size,
            "data_offset": data_offset,
        }


class SlotStateStore:
    """Momentum and participation count of every client, in one sparse slot file; see the module docstring.

    Parameters
    ----------
    root : Path
        The run's client-state folder on this node; the file is ``root / SLOT_FILE``.
    num_clients : int
        Clients in the run (ids ``0 .. num_clients - 1``); every process of the run must agree.
    keep : int
        Rounds kept per client (slots per client), at least 2 as in ``ClientStateStore``.
    layout : sequence of (key, shape) or mapping key -> shape, optional
        The momentum entries (e.g. ``{str(i): p.shape for i, p in enumerate(params)}``);
        default: the first saved state's, or the file's when it exists.
    durable : bool
        ``fdatasync`` after a slot's payload and after its tag (ordered on disk even
        across a power loss; slow). Default off: ordered across a killed process only.
    """

    def __init__(
        self,
        root: Path,
        *,
        num_clients: int,
        keep: int = 2,
        layout: Layout | Mapping[str, Sequence[int]] | None = None,
        durable: bool = False,
    ) -> None:
        if keep < 2:
            raise ValueError(f"keep must be >= 2, got {keep}")
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        self.root, self.num_clients, self.keep, self.durable = Path(root), int(num_clients), keep, durable
        self.path = self.root / SLOT_FILE
        self._wanted = _as_layout(layout) if layout is not None else None
        self._geo: _Geometry | None = None
        self._data_offset = 0
        self._fd: int | None = None
        self._lock = threading.Lock()  # opening and header checks; slot I/O itself needs none

    # -- file and header ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file (a later call opens it again)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd, self._geo = None, None

    def __enter__(self) -> SlotStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _read_header(self, fd: int) -> tuple[_Geometry, int] | None:
        """The file's geometry and data offset (None while no header is complete)."""
        if os.pread(fd, len(MAGIC), 0) != MAGIC:
            return None
        (length,) = struct.unpack("<Q", os.pread(fd, 8, len(MAGIC)))
        header = json.loads(os.pread(fd, length, 16))
        if header.get("version") != VERSION:
            raise StateLayoutError(f"{self.path}: slot file version {header.get('version')}, this code reads {VERSION}")
        entries = _as_layout([(key, shape) for key, shape in header["entries"]])
        geo = _Geometry(entries, int(header["num_clients"]), int(header["keep"]))
        if (geo.slot_header, geo.slot_size) != (header["slot_header"], header["slot_size"]):
            raise StateLayoutError(f"{self.path}: slot sizes in the header do not match its entries")
        return geo, int(header["data_offset"])

    def _check(self, geo: _Geometry) -> None:
        """The file's header against this store's num_clients, keep and wanted layout."""
        problems = []
        if geo.num_clients != self.num_clients:
            problems.append(f"num_clients {geo.num_clients} on disk, {self.num_clients} here")
        if geo.keep != self.keep:
            problems.append(f"keep {geo.keep} on disk, {self.keep} here")
        if self._wanted is not None and geo.entries != self._wanted:
            problems.append(f"momentum layout {_describe(geo.entries)} on disk, {_describe(self._wanted)} here")
        if problems:
            raise StateLayoutError(f"{self.path} was made for another layout: " + "; ".join(problems))

    def _open(self, create_with: tuple[tuple[str, tuple[int, ...]], ...] | None) -> _Geometry | None:
        """The file's geometry, opening the file if needed; creating it with layout ``create_with`` if given."""
        with self._lock:
            if self._geo is not None:
                return self._geo
            if self._fd is None:
                if create_with is None and not self.path.exists():
                    return None
                self.root.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            fd = self._fd
            fcntl.flock(fd, fcntl.LOCK_SH if create_with is None else fcntl.LOCK_EX)
            try:
                found = self._read_header(fd)
                if found is None and create_with is not None:
                    found = self._create(fd, create_with)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if found is None:
                return None
            geo, self._data_offset = found
            self._check(geo)
            self._geo = geo
            return geo

    def _create(self, fd: int, entries: tuple[tuple[str, tuple[int, ...]], ...]) -> tuple[_Geometry, int]:
        """Write the header, size the file, then the magic (caller holds the exclusive flock)."""
        geo = _Geometry(entries, self.num_clients, self.keep)
        data_offset = PAGE
        while 16 + len(body := json.dumps(geo.header(data_offset)).encode()) > data_offset:
            data_offset += PAGE
        _write_all(fd, struct.pack("<Q", len(body)) + body, len(MAGIC))
        size = data_offset + self.num_clients * self.keep * geo.slot_size
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)  # sparse: only the slots written take disk
        if self.durable:
            os.fsync(fd)
        _write_all(fd, MAGIC, 0)
        return geo, data_offset

    # -- slots -------------------------------------------------------------------------------------------------------

    def _slot(self, geo: _Geometry, cid: int, k: int) -> int:
        return self._data_offset + (cid * geo.keep + k) * geo.slot_size

    def _tags(self, geo: _Geometry, cid: int) -> list[int]:
        return [_TAG.unpack(os.pread(self._fd, _TAG.size, self._slot(geo, cid, k)))[0] for k in range(geo.keep)]

    def _cid(self, cid: int) -> int:
        cid = int(cid)
        if not 0 <= cid < self.num_clients:
            raise IndexError(f"client id {cid} outside 0..{self.num_clients - 1} (num_clients={self.num_clients})")
        return cid

    def load(self, cid: int, before_round: int) -> dict[str, Any]:
        """Client ``cid``'s state as saved after its latest round before ``before_round`` (empty if none).

        Parameters
        ----------
        cid : int
            The client id.
        before_round : int
            Only rounds strictly before it are read (a resumed round starts from the
            same state as its first attempt).

        Returns
        -------
        dict
            ``{"momentum": {key: float32 tensor}, "participations": int}``, or ``{}``.
        """
        cid = self._cid(cid)
        geo = self._open(None)
        if geo is None:
            return {}
        for _ in range(_RETRIES):
            tags = self._tags(geo, cid)
            earlier = [(tag, k) for k, tag in enumerate(tags) if 0 < tag <= before_round]  # tag = round + 1
            if not earlier:
                return {}
            tag, k = max(earlier)
            state = self._read_slot(geo, self._slot(geo, cid, k), tag)
            if state is not None:
                return state
        raise RuntimeError(f"client {cid}'s slot in {self.path} kept changing while read ({_RETRIES} attempts)")

    def _read_slot(self, geo: _Geometry, at: int, tag: int) -> dict[str, Any] | None:
        """The state in the slot at ``at`` if its tag is still ``tag`` after the read, else None."""
        head = os.pread(self._fd, geo.slot_header, at)
        found, participations = _HEAD.unpack_from(head)
        if found != tag:
            return None
        present = head[_HEAD.size : _HEAD.size + len(geo.entries)]
        momentum = {}
        runs: list[list[Any]] = []
        for i, (key, shape) in enumerate(geo.entries):
            if not present[i]:
                continue
            tensor = torch.empty(shape, dtype=torch.float32)
            momentum[key] = tensor
            _add_to_runs(runs, at + geo.offsets[i], tensor)
        for offset, _, tensors in runs:
            _read_run(self._fd, offset, tensors)
        if _TAG.unpack(os.pread(self._fd, _TAG.size, at))[0] != tag:
            return None
        return {"momentum": momentum, "participations": participations}

    def save(self, cid: int, server_round: int, state: dict[str, Any]) -> None:
        """Write client ``cid``'s state after ``server_round`` into its oldest slot (or that round's own).

        Parameters
        ----------
        cid : int
            The client id.
        server_round : int
            The round just trained (>= 0).
        state : dict
            ``{"momentum": {key: float32 tensor}, "participations": int}``.

        Raises
        ------
        StateLayoutError
            ``state`` has another key (keep those states in ``ClientStateStore``), or a
            momentum entry with a key, shape or dtype the layout does not have.
        """
        cid = self._cid(cid)
        if server_round < 0:
            raise ValueError(f"server_round must be >= 0, got {server_round}")
        momentum, participations = self._validated(state)
        inferred = _as_layout([(key, tuple(t.shape)) for key, t in momentum.items()])
        geo = self._open(self._wanted if self._wanted is not None else inferred)
        assert geo is not None
        present = bytearray(len(geo.entries))
        values: dict[int, torch.Tensor] = {}
        for key, tensor in momentum.items():
            i = geo.index.get(key)
            if i is None or tuple(tensor.shape) != geo.entries[i][1]:
                got = f"{key!r} of shape {tuple(tensor.shape)}"
                raise StateLayoutError(f"momentum entry {got} is not in the layout {_describe(geo.entries)}")
            present[i] = 1
            values[i] = tensor.detach().to("cpu", torch.float32).contiguous()

        tags = self._tags(geo, cid)
        tag = server_round + 1
        if tag in tags:
            k = tags.index(tag)  # the same round again (a resumed round): replaces itself
        elif 0 in tags:
            k = tags.index(0)
        else:
            k = min(range(geo.keep), key=tags.__getitem__)
            if tags[k] > tag:  # older than every round kept: ClientStateStore would drop it at once
                return
        at = self._slot(geo, cid, k)
        _write_all(self._fd, _HEAD.pack(0, participations) + bytes(present), at)  # tag 0: invalid from here ...
        runs: list[list[Any]] = []
        for i in sorted(values):
            _add_to_runs(runs, at + geo.offsets[i], values[i])
        for offset, _, tensors in runs:
            _write_run(self._fd, offset, tensors)
        if self.durable:
            os.fdatasync(self._fd)
        _write_all(self._fd, _TAG.pack(tag), at)  # ... to here
        if self.durable:
            os.fdatasync(self._fd)

    def _validated(self, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
        other = set(state) - _KEYS
        if other:
            raise StateLayoutError(
                f"{type(self).__name__} keeps only 'momentum' and 'participations', not {sorted(other)}: "
                "keep such states in ClientStateStore (open_state_store(..., keeps_ledger=True))"
            )
        missing = _KEYS - set(state)
        if missing:
            raise StateLayoutError(
                f"state lacks {sorted(missing)}: {type(self).__name__} needs both of {sorted(_KEYS)}"
            )
        momentum = state["momentum"]
        for key, tensor in momentum.items():
            if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
                kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise StateLayoutError(f"momentum entry {key!r} is {kind}, the slot store keeps float32 tensors")
        return {str(k): v for k, v in momentum.items()}, int(state["participations"])


def _describe(entries: Sequence[tuple[str, tuple[int, ...]]]) -> str:
    return "{" + ", ".join(f"{key}: {list(shape)}" for key, shape in entries) + "}"


def _add_to_runs(runs: list[list[Any]], offset: int, tensor: torch.Tensor) -> None:
    """Add ``tensor`` at file ``offset`` to the last run ``[start, end, tensors]`` if adjacent, else start a run."""
    nbytes = 4 * tensor.numel()
    if not nbytes:
        return
    if runs and runs[-1][1] == offset and len(runs[-1][2]) < _IOV_MAX:
        runs[-1][1] += nbytes
        runs[-1][2].append(tensor)
    else:
        runs.append([offset, offset + nbytes, [tensor]])


def _byte_views(tensors: list[torch.Tensor]) -> list[memoryview]:
    return [memoryview(t.reshape(-1).numpy()).cast("B") for t in tensors]


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_run(fd: int, offset: int, tensors: list[torch.Tensor]) -> None:
    """Write the tensors' bytes back to back from ``offset`` (``pwritev``, resumed after a short write)."""
    buffers = _byte_views(tensors)
    while buffers:
        n = os.pwritev(fd, buffers, offset)
        offset += n
        _advance(buffers, n)


def _read_run(fd: int, offset: int, tensors: list[torch.Tensor]) -> None:
    """Fill the tensors with the bytes from ``offset`` on (``preadv``, straight into their storage)."""
    buffers = _byte_views(tensors)
    while buffers:
        n = os.preadv(fd, buffers, offset)
        if n == 0:
            raise OSError(f"unexpected end of the slot file at offset {offset}")
        offset += n
        _advance(buffers, n)


def _advance(buffers: list, n: int) -> None:
    """Drop the first ``n`` bytes of ``buffers`` (a short ``preadv``/``pwritev`` is resumed after them)."""
    while buffers and n >= len(buffers[0]):
        n -= len(buffers[0])
        buffers.pop(0)
    if buffers and n:
        buffers[0] = buffers[0][n:]
