"""Client momentum kept on the node: a torch.save file per client and round against one sparse slot file.

Part 1 (speed): ``--clients`` clients (default 200) each save and load a
``--floats``-float momentum (default 200,000 float32, in a small CNN's shapes)
for ``--speed-rounds`` rounds, through :class:`clients.state_store.ClientStateStore`
(``torch.save`` / ``torch.load``, one file per client and round) and through
:class:`clients.slot_store.SlotStateStore` (``pwritev`` / ``preadv`` into
one preallocated sparse file); median milliseconds per save and per load
(page cache warm, as on a node that just wrote them), the ratio, and what
1,000 clients a round would spend on it (``--durable`` adds the slot store
with an ``fdatasync`` after each slot's payload and after its tag).

Part 2 (memory): ``--num-clients`` clients (default 10,000), ``--per-round``
a round (default 100), for ``--rounds`` rounds (default 120: every client
takes part once in rounds 1..100, then rounds 101..120 bring back 2,000 of
them, whose loads read their first momentum): each client loads its state,
"trains" (adds to its momentum) and saves, through the slot store. Prints the
process's resident memory (VmRSS, and of it the file-backed RssFile) every
10 rounds against the number of clients that have taken part, and the disk
the file takes (sparse: only the written slots). Then, for comparison, the
first ``--memmap-rounds`` rounds (default 20) of the same writes through one
long-lived ``numpy.memmap`` of such a file: every page it touched stays in its
RSS. Both files are deleted at the end.

Run: ``python benchmarks/bench_state_store.py [--skip-speed] [--skip-memory] [--durable] [--dir /big/disk]``
(about a minute; part 2 writes ~9 GiB into a sparse 15 GiB file under ``--dir``).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.slot_store import SLOT_FILE, SlotStateStore  # noqa: E402
from clients.state_store import ClientStateStore  # noqa: E402


def cnn_shapes(floats: int) -> dict[str, tuple[int, ...]]:
    """Momentum shapes of a small CNN (two convolutions, two linear layers) with ``floats`` values in all."""
    shapes = {"0": (32, 1, 5, 5), "1": (32,), "2": (64, 32, 5, 5), "3": (64,)}
    rest = floats - sum(math.prod(s) for s in shapes.values()) - 10
    if rest < 128:
        raise SystemExit(f"--floats {floats} is too small for the CNN's shapes")
    shapes["4"], shapes["5"] = (rest // 128, 128), (10 + rest % 128,)
    return shapes


def momentum(shapes: dict[str, tuple[int, ...]], value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full(s, float(value)) for k, s in shapes.items()}


def rss_mb() -> dict[str, float]:
    """This process's VmRSS, RssAnon and RssFile in MiB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) / 2**20


def speed(args: argparse.Namespace, tmp: Path) -> None:
    shapes = cnn_shapes(args.floats)
    print(f"== Part 1: save + load per client, {args.floats:,} float32 momentum ({len(shapes)} tensors), "
          f"{args.clients} clients x {args.speed_rounds} rounds ==", flush=True)  # fmt: skip
    stores = {
        "ClientStateStore (torch.save file per client and round)": ClientStateStore(tmp / "speed" / "files"),
        "SlotStateStore (one sparse slot file, pwritev/preadv)": SlotStateStore(
            tmp / "speed" / "slots", num_clients=args.clients
        ),
    }
    if args.durable:
        durable = SlotStateStore(tmp / "speed" / "durable", num_clients=args.clients, durable=True)
        stores["SlotStateStore, durable=True (fdatasync after payload and after tag)"] = durable
    medians = {}
    for name, store in stores.items():
        saves, loads = [], []
        for r in range(1, args.speed_rounds + 1):
            for cid in range(args.clients):
                new = {"momentum": momentum(shapes, cid + r), "participations": r}  # "training", untimed
                t0 = time.perf_counter()
                got = store.load(cid, r)
                t1 = time.perf_counter()
                store.save(cid, r, new)
                t2 = time.perf_counter()
                if r > 1:  # round 1 has nothing to load
                    assert float(got["momentum"]["4"][0, 0]) == cid + r - 1
                    loads.append(t1 - t0)
                saves.append(t2 - t1)
        medians[name] = (1e3 * statistics.median(saves), 1e3 * statistics.median(loads))
    for store in stores.values():
        if isinstance(store, SlotStateStore):
            store.close()
    shutil.rmtree(tmp / "speed")
    base = sum(next(iter(medians.values())))
    print("\n| store | save ms (median) | load ms (median) | save + load ms | ratio | 1,000 clients: s/round |")
    print("|---|---|---|---|---|---|")
    for name, (save, load) in medians.items():
        print(f"| {name} | {save:.2f} | {load:.2f} | {save + load:.2f} | {(save + load) / base:.3f} "
              f"| {(save + load):.2f} |")  # fmt: skip


def schedule(num_clients: int, per_round: int, rounds: int, seed: int = 0) -> list[np.ndarray]:
    """The clients of each round: a fresh permutation every ``num_clients / per_round`` rounds (all take part)."""
    rng, out, order = np.random.default_rng(seed), [], np.empty(0, dtype=np.int64)
    for _ in range(rounds):
        if len(order) < per_round:
            order = np.concatenate([order, rng.permutation(num_clients)])
        out.append(order[:per_round])
        order = order[per_round:]
    return out


def memory(args: argparse.Namespace, tmp: Path) -> None:
    shapes = cnn_shapes(args.floats)
    n, k = args.num_clients, args.per_round
    print(f"\n== Part 2: {n:,} clients, {k} a round, {args.rounds} rounds, {args.floats:,}-float momentum: "
          "the process's resident memory ==", flush=True)  # fmt: skip
    store = SlotStateStore(tmp / "slots", num_clients=n)
    seen: set[int] = set()
    last: dict[int, float] = {}
    count: dict[int, int] = {}
    start = time.perf_counter()
    print("\n| round | clients taken part | VmRSS MiB | of it RssFile MiB | slot file on disk MiB | s since start |")
    print("|---|---|---|---|---|---|")
    for r, clients in enumerate(schedule(n, k, args.rounds), start=1):
        for cid in clients.tolist():
            state = store.load(cid, r)
            if state:
                assert float(state["momentum"]["0"][0, 0, 0, 0]) == last[cid] and state["participations"] == count[cid]
                buffers = {key: t.mul_(0.9).add_(1.0) for key, t in state["momentum"].items()}  # "training"
            else:
                buffers = momentum(shapes, float(r))
            store.save(cid, r, {"momentum": buffers, "participations": state.get("participations", 0) + 1})
            last[cid], count[cid] = float(buffers["0"][0, 0, 0, 0]), count.get(cid, 0) + 1
            seen.add(cid)
        if r == 1 or r % 10 == 0 or r == args.rounds:
            m = rss_mb()
            print(f"| {r} | {len(seen):,} | {m['VmRSS']:.0f} | {m['RssFile']:.0f} | {disk_mb(tmp / 'slots'):,.0f} "
                  f"| {time.perf_counter() - start:.1f} |", flush=True)  # fmt: skip
    logical = (tmp / "slots" / SLOT_FILE).stat().st_size / 2**30
    print(f"slot file: {logical:.1f} GiB logical, {disk_mb(tmp / 'slots') / 1024:.1f} GiB on disk", flush=True)
    store.close()
    (tmp / "slots" / SLOT_FILE).unlink()

    if args.memmap_rounds <= 0:
        return
    print(f"\n== For comparison: the first {args.memmap_rounds} rounds' saves through one long-lived numpy.memmap "
          "of a slot file ==", flush=True)  # fmt: skip
    floats = sum(math.prod(s) for s in shapes.values())
    slot = -(-(4 * floats + 4096) // 4096) * 1024  # in float32s: a page of header, then the momentum
    path = tmp / "memmap.slots"
    mapped = np.memmap(path, dtype=np.float32, mode="w+", shape=(n * 2 * slot,))
    seen.clear()
    print("\n| round | clients taken part | VmRSS MiB | of it RssFile MiB |\n|---|---|---|---|")
    for r, clients in enumerate(schedule(n, k, args.memmap_rounds), start=1):
        for cid in clients.tolist():
            at = cid * 2 * slot
            mapped[at + 1024 : at + 1024 + floats] = r  # the momentum, then its tag
            mapped[at] = r
            seen.add(cid)
        if r == 1 or r % 5 == 0 or r == args.memmap_rounds:
            m = rss_mb()
            print(f"| {r} | {len(seen):,} | {m['VmRSS']:.0f} | {m['RssFile']:.0f} |", flush=True)
    del mapped
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--floats", type=int, default=200_000, help="momentum values per client")
    parser.add_argument("--clients", type=int, default=200, help="part 1: clients")
    parser.add_argument("--speed-rounds", type=int, default=5, help="part 1: rounds")
    parser.add_argument("--durable", action="store_true", help="part 1: also the slot store with fdatasync")
    parser.add_argument("--num-clients", type=int, default=10_000, help="part 2: clients in the run")
    parser.add_argument("--per-round", type=int, default=100, help="part 2: clients a round")
    parser.add_argument("--rounds", type=int, default=120, help="part 2: rounds")
    parser.add_argument("--memmap-rounds", type=int, default=20, help="part 2's memmap comparison: rounds (0: skip)")
    parser.add_argument("--dir", default=None, help="where the files go (default: the system's temp folder)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_state_store.") as tmp:
        print(f"files under {tmp} ({os.cpu_count()} cores)", flush=True)
        if not args.skip_speed:
            speed(args, Path(tmp))
        if not args.skip_memory:
            memory(args, Path(tmp))


if __name__ == "__main__":
    main()
