"""Round time of poisonlab against the plain-PyTorch floor, and scaling to many clients.

Part 1 (Tolpegin et al.'s Fashion-MNIST setup: 50 clients, 5 per round, 1 local
epoch over 1,200 samples, batch 4, SGD lr 0.001 momentum 0.9, unweighted mean,
central evaluation on the 10,000 test images every round):

* the floor: a plain sequential PyTorch loop in one process (all cores as torch
  threads, NCHW, no Flower, no Ray) doing the same local work and evaluation;
* poisonlab: ``poisonlab`` with the same settings on the Ray simulation.

Both print steady-state seconds per round (median over rounds 2..R) and the ratio;
poisonlab's start-up (Ray, actors, data decode) is reported apart.

Part 2: round time and peak memory of the whole process tree (the sum of its
processes' RSS, which counts a shared page once per process, and of their PSS,
the tree's physical footprint) with a small model (MLP) at 100 and 500 clients,
all taking part every round.

Run: ``python benchmarks/bench_federation.py [--rounds 8] [--skip-scale]``. Timings
on a shared machine vary by +-15 %: compare the ratio, taken in one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.data import load_dataset, prepare_dataset, to_float  # noqa: E402
from common.models import FashionMnistCnn  # noqa: E402
from common.partition import IidEqual  # noqa: E402
from common.training import confusion_matrix, train_epochs  # noqa: E402


def floor_rounds(rounds: int, num_clients: int = 50, per_round: int = 5, seed: int = 0) -> list[float]:
    """Plain PyTorch: sequential local training of the sampled clients, mean, central evaluation."""
    torch.set_num_threads(os.cpu_count() or 1)
    data = load_dataset("fashion_mnist", str(prepare_dataset("fashion_mnist")))
    parts = IidEqual()(data.train_y.numpy(), num_clients, seed)
    torch.manual_seed(seed)
    global_model = FashionMnistCnn()
    optimizers: dict[int, dict] = {}
    times = []
    gen = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        start = time.perf_counter()
        chosen = torch.randperm(num_clients, generator=gen)[:per_round].tolist()
        states = []
        for cid in chosen:
            model = FashionMnistCnn()
            model.load_state_dict(global_model.state_dict())
            opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
            if cid in optimizers:
                opt.load_state_dict(optimizers[cid])
            idx = torch.from_numpy(parts[cid])
            train_epochs(model, opt, to_float(data.train_x[idx]), data.train_y[idx], spec=data.spec,
                         batch_size=4, epochs=1, generator=gen)  # fmt: skip
            optimizers[cid] = opt.state_dict()
            states.append(model.state_dict())
        mean = {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype) for k in states[0]}
        global_model.load_state_dict(mean)
        cm, _ = confusion_matrix(global_model, data.test_x, data.test_y, spec=data.spec, batch_size=256)
        times.append(time.perf_counter() - start)
        print(f"  floor round {len(times)}: {times[-1]:.2f}s  acc {float(cm.diag().sum()) / 10000:.4f}", flush=True)
    return times


class TreeMemory(NamedTuple):
    """Memory of a process tree at one instant (MiB) and how many processes it has.

    ``rss_mb`` sums each process's resident set: a page mapped by several
    processes (torch's shared libraries, Ray's object store in ``/dev/shm``, a
    memory-mapped dataset) counts once per process. ``pss_mb`` sums each
    process's proportional set size, which divides every shared page among the
    processes that map it: the tree's real physical footprint.
    """

    rss_mb: float
    pss_mb: float
    procs: int


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its live descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(children.get(p, []))
    return found


def process_memory(pid: int) -> dict[str, int] | None:
    """``Rss``, ``Pss``, ``Private_Clean`` and ``Private_Dirty`` of one process in KiB (``/proc/<pid>/smaps_rollup``).

    ``None`` when the process is gone or not readable; a kernel without
    ``smaps_rollup`` gives ``VmRSS`` for both ``Rss`` and ``Pss``.
    """
    wanted = ("Rss", "Pss", "Private_Clean", "Private_Dirty")
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except FileNotFoundError:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        rss = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
        return {"Rss": rss, "Pss": rss, "Private_Clean": 0, "Private_Dirty": rss}
    except OSError:
        return None
    out = dict.fromkeys(wanted, 0)
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in out:
            out[key] = int(rest.split()[0])
    return out


def tree_stats(pid: int) -> TreeMemory:
    """Resident (RSS) and proportional (PSS) memory of ``pid`` and all its descendants in MiB, and their count."""
    rss, pss, count = 0, 0, 0
    for p in tree_pids(pid):
        mem = process_memory(p)
        if mem is None:
            continue
        rss, pss, count = rss + mem["Rss"], pss + mem["Pss"], count + 1
    return TreeMemory(rss / 1024, pss / 1024, count)


class SampledRun(NamedTuple):
    """A command's output, exit code and wall time, with its process tree's memory (see :func:`run_sampled`)."""

    output: str
    returncode: int
    wall: float
    peak_mb: float
    peak_pss_mb: float
    peak_procs: int
    rss_after_round: list[float]
    pss_after_round: list[float]


def run_sampled(argv: list[str], metrics: Path, cwd: Path = ROOT) -> SampledRun:
    """Run ``argv`` to its end, sampling its process tree's memory every 0.5 s.

    ``peak_mb`` is the largest RSS sum, ``peak_pss_mb`` the largest PSS sum
    (see :class:`TreeMemory`; the two peaks may come from different samples),
    ``rss_after_round`` and ``pss_after_round`` the sums once each line of
    ``metrics`` (one per round) is written. Every timed run of a comparison is
    started through here, so the sampler's own cost (reading each process's
    ``smaps_rollup``) weighs on each run alike.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss": 0.0, "pss": 0.0, "procs": 0}
    after_round: list[TreeMemory] = []

    def sample() -> None:
        while proc.poll() is None:
            now = tree_stats(proc.pid)
            peak["rss"], peak["pss"] = max(peak["rss"], now.rss_mb), max(peak["pss"], now.pss_mb)
            peak["procs"] = max(peak["procs"], now.procs)
            rows = metrics.read_text().count("\n") if metrics.exists() else 0
            after_round.extend([now] * (rows - len(after_round)))  # the tree's memory once each round is written
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - start
    sampler.join()
    return SampledRun(output, proc.returncode, wall, peak["rss"], peak["pss"], int(peak["procs"]),
                      [m.rss_mb for m in after_round], [m.pss_mb for m in after_round])  # fmt: skip


def run_poisonlab(overrides: list[str], folder: Path) -> dict:
    """Run ``poisonlab`` in a subprocess; return round times, start-up and the tree's peak memory.

    The memory figures are :func:`run_sampled`'s; ``startup`` is the wall time
    minus every recorded round (round 0 included).
    """
    argv = [sys.executable, "-m", "scripts.run", *overrides, f"hydra.run.dir={folder}"]
    run = run_sampled(argv, folder / "metrics.jsonl")
    if run.returncode != 0:
        raise RuntimeError(f"poisonlab failed:\n{run.output[-4000:]}")
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    rounds = [x["seconds"] for x in lines if x["round"] > 0]
    return {"rounds": rounds, "wall": run.wall, "startup": run.wall - sum(x["seconds"] for x in lines),
            "peak_mb": run.peak_mb, "peak_pss_mb": run.peak_pss_mb, "peak_procs": run.peak_procs,
            "accuracy": lines[-1]["accuracy"], "rss_after_round": run.rss_after_round,
            "pss_after_round": run.pss_after_round}  # fmt: skip


def steady(times: list[float]) -> float:
    """Median over rounds 2..R (round 1 warms caches and actors)."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--only-scale", action="store_true", help="skip part 1 (floor vs poisonlab)")
    parser.add_argument("--scale-clients", type=int, nargs="*", default=[100, 500])
    args = parser.parse_args()

    if not args.only_scale:
        part_one(args.rounds)
    if not args.skip_scale:
        part_two(args.scale_clients)


def part_one(rounds: int) -> None:
    """Paper A's round: the floor, then poisonlab, then the ratio."""
    print(f"== Part 1: paper A Fashion-MNIST round, {os.cpu_count()} cores ==", flush=True)
    floor = floor_rounds(rounds)
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_poisonlab([f"federation.num_rounds={rounds}"], Path(tmp) / "paper_a")
    f, p = steady(floor), steady(ours["rounds"])
    print("\n| what | s/round (median, rounds 2..R) | ratio to floor |\n|---|---|---|")
    print(f"| plain PyTorch floor (1 process, {os.cpu_count()} threads) | {f:.2f} | 1.00 |")
    print(f"| poisonlab (Ray simulation, default config) | {p:.2f} | {p / f:.2f} |")
    print(
        f"\npoisonlab start-up (process start to first round, incl. Ray): {ours['startup']:.1f}s; "
        f"peak RSS sum {ours['peak_mb']:.0f} MiB, PSS sum {ours['peak_pss_mb']:.0f} MiB; "
        f"accuracy after {rounds} rounds {ours['accuracy']:.4f}"
    )


def part_two(scale_clients: list[int]) -> None:
    """All clients every round with a small model: round time and peak memory."""
    print("\n== Part 2: all clients every round, MLP, 120 samples each, batch 32 ==", flush=True)
    print("| clients | s/round (median) | start-up s | peak RSS sum MiB | peak PSS sum MiB |\n|---|---|---|---|---|")
    for n in scale_clients:
        with tempfile.TemporaryDirectory() as tmp:
            res = run_poisonlab(
                ["model=mlp", f"federation.num_clients={n}", f"federation.clients_per_round={n}",
                 "federation.num_rounds=3", "partition.samples_per_client=120", "client.batch_size=32",
                 "output.plots=false"],
                Path(tmp) / f"scale{n}",
            )  # fmt: skip
        print(f"| {n} | {steady(res['rounds']):.2f} | {res['startup']:.1f} | {res['peak_mb']:.0f} "
              f"| {res['peak_pss_mb']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
