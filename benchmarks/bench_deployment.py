"""A real loopback deployment against the Ray simulation: round latency, and paper A's whole federation as processes.

Part 1 (latency): the same run, 5 clients all taking part, 1,200 Fashion-MNIST
samples each (paper A's CNN, batch 4, one epoch), on ``engine=simulation`` and
on ``engine=deployment`` (a SuperLink and 5 SuperNode processes, TLS and
SuperNode authentication on, every message a ClientApp process), the latter
twice: with Flower's cold ClientApp processes (``engine.warm_clientapps=false``)
and with processes forked from a warm server (the default); steady-state
seconds per round (median over rounds 2..R) and the ratios, in one sitting. The
metrics of all three must be identical (same seed).

Part 2 (load): paper A's federation (50 SuperNodes, 5 per round) as a loopback
deployment for 3 rounds: enrolment and round times, peak resident memory summed
over every process of the run and the most processes alive at once.

Run: ``python benchmarks/bench_deployment.py [--rounds 5] [--skip-load]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_federation import run_poisonlab, steady  # noqa: E402

LATENCY = ["federation.num_clients=5", "federation.clients_per_round=5", "partition.samples_per_client=1200",
           "output.plots=false"]  # fmt: skip


def metric_gap(a: Path, b: Path) -> tuple[float, float]:
    """The largest difference in accuracy and in loss over the rounds of two run folders."""

    def read(folder: Path) -> list[tuple[float, float]]:
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(x["accuracy"], x["loss"]) for x in lines]

    pairs = list(zip(read(a), read(b), strict=True))
    return max(abs(x[0] - y[0]) for x, y in pairs), max(abs(x[1] - y[1]) for x, y in pairs)


def part_one(rounds: int) -> None:
    print(f"== Part 1: one run on the simulation and as a loopback deployment, {os.cpu_count()} cores ==", flush=True)
    cases = [("simulation (Ray)", "sim", []),
             ("deployment, cold ClientApp processes (Flower's start)", "cold",
              ["engine=deployment", "engine.warm_clientapps=false"]),
             ("deployment, warm ClientApp processes (forked)", "warm", ["engine=deployment"])]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, extra in cases:
            res = run_poisonlab([*LATENCY, f"federation.num_rounds={rounds}", *extra], Path(tmp) / name)
            print(f"  {label}: {steady(res['rounds']):.2f} s/round", flush=True)
            rows.append((label, name, res))
        gaps = {name: metric_gap(Path(tmp) / "sim", Path(tmp) / name) for _, name, _ in rows[1:]}
    s = steady(rows[0][2]["rounds"])
    print("\n| engine | s/round (median, rounds 2..R) | start-up s | peak RSS MiB | ratio |\n|---|---|---|---|---|")
    for label, _, res in rows:
        d = steady(res["rounds"])
        print(f"| {label} | {d:.2f} | {res['startup']:.1f} | {res['peak_mb']:.0f} | {d / s:.2f} |")
    for name, (acc_gap, loss_gap) in gaps.items():
        print(f"largest difference from the simulation over the rounds ({name}): accuracy {acc_gap:.4g}, "
              f"loss {loss_gap:.3g}", flush=True)  # fmt: skip


def part_two() -> None:
    print("\n== Part 2: paper A (50 SuperNodes, 5 per round) as a loopback deployment, 3 rounds ==", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_poisonlab(["engine=deployment", "federation.num_rounds=3", "output.plots=false"],
                            Path(tmp) / "paper_a")  # fmt: skip
        first = json.loads((Path(tmp) / "paper_a" / "metrics.jsonl").read_text().splitlines()[0])
    print("| round 0 (enrolment + evaluation) s | s/round (rounds 1..3) | start-up s | peak RSS MiB | "
          "most processes at once | accuracy |\n|---|---|---|---|---|---|")  # fmt: skip
    rounds = " / ".join(f"{t:.1f}" for t in res["rounds"])
    print(f"| {first['seconds']:.1f} | {rounds} | {res['startup']:.1f} | {res['peak_mb']:.0f} | "
          f"{res['peak_procs']} | {res['accuracy']:.4f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    if not args.skip_latency:
        part_one(args.rounds)
    if not args.skip_load:
        part_two()


if __name__ == "__main__":
    main()
