"""Time and peak memory of every aggregation rule next to Flower 1.41's built-ins.

Each (rule, n, d) case runs in a fresh subprocess, so its peak memory can be
measured: on CPU as the process's peak resident memory during the timed runs
above what it held before them (the inputs, and for Flower the replies), with
the kernel's high-water mark reset after the warm-up (``ru_maxrss`` growth
where that reset is unavailable); on a GPU as ``torch.cuda.max_memory_allocated``
above what the inputs hold. Flower's ``Bulyan`` converts replies with
``keep_input=False``, which runs ``gc.collect()`` per array: that is part of
its measured time, as it is in a real ServerApp.
Flower's strategies (``Krum``, ``MultiKrum``, ``FedMedian``,
``FedTrimmedAvg``, ``Bulyan`` from ``flwr.serverapp.strategy``) are timed on
the same numbers, as reply Messages carrying ``--arrays`` arrays each; the
replies are rebuilt before every repeat, untimed (FedMedian, FedTrimmedAvg and
Bulyan consume them). Flower always runs on CPU with numpy.

Prints a Markdown table: median time over ``--repeats``, peak memory, and the
ratio to Flower's Bulyan and Flower's Krum on the same case (below 1 = faster).

Examples::

    python benchmarks/bench_rules.py                       # the full grid (long!)
    python benchmarks/bench_rules.py --n 10 --d 1000 --repeats 2  # smoke test
    python benchmarks/bench_rules.py --n 1000 --d 551466 --flower-repeats 1 --flower-warmup 0 --timeout 900
    python benchmarks/bench_rules.py --device cuda --rules krum bulyan flwr_krum flwr_bulyan
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Rough peak memory of a case as a multiple of the (n, d) float32 input, for skipping.
OURS_FACTOR = 2.0
HEAVY_FACTOR = 3.5  # rules that hold a second (n, d) matrix (bucket means, FoolsGold history)
FLOWER_FACTOR = 4.5  # replies + flattened copies + stacked arrays
HEAVY = {"foolsgold", "bucketing+median"}

OURS = [
    "mean",
    "krum",
    "multikrum",
    "median",
    "trimmed_mean",
    "bulyan",
    "bulyan_multikrum",
    "geomed",
    "centered_clipping",
    "norm_bound",
    "fltrust",
    "flame",
    "foolsgold",
    "pca_detect",
    "nnm+krum",
    "bucketing+median",
]
FLOWER = ["flwr_krum", "flwr_multikrum", "flwr_fedmedian", "flwr_fedtrimmedavg", "flwr_bulyan"]


def default_f(n: int, fraction: float) -> int:
    """Assumed Byzantine count: ``fraction * n``, capped so Bulyan (n >= 4f + 3) can run."""
    return max(0, min(int(fraction * n), (n - 3) // 4))


# --------------------------------------------------------------------------- worker side


def _our_rule(name: str, n: int, d: int, f: int) -> tuple[Callable[..., Any], Callable[[Any], Any]]:
    """``(rule, context_factory)`` for one of our rules."""
    import torch

    from strategies.rules.base import Layout, RoundContext
    from strategies.rules.bulyan import Bulyan
    from strategies.rules.centered_clipping import CenteredClipping
    from strategies.rules.flame import Flame
    from strategies.rules.fltrust import FLTrust
    from strategies.rules.foolsgold import FoolsGold
    from strategies.rules.geomed import GeoMed
    from strategies.rules.krum import Krum, MultiKrum
    from strategies.rules.mean import Mean
    from strategies.rules.median import Median
    from strategies.rules.norm_bound import NormBound
    from strategies.rules.pca_detect import PCADetect
    from strategies.rules.preaggregators import Bucketing, Composed, NearestNeighborMixing
    from strategies.rules.trimmed_mean import TrimmedMean

    makers: dict[str, Callable[[], Any]] = {
        "mean": lambda: Mean(),
        "krum": lambda: Krum(f=f),
        "multikrum": lambda: MultiKrum(f=f),
        "median": lambda: Median(),
        "trimmed_mean": lambda: TrimmedMean(beta=0.2),
        "bulyan": lambda: Bulyan(f=f),
        "bulyan_multikrum": lambda: Bulyan(f=f, selection="multikrum"),
        "geomed": lambda: GeoMed(),
        "centered_clipping": lambda: CenteredClipping(tau=1.0),
        "norm_bound": lambda: NormBound(max_norm=1.0, sigma=0.001),
        "fltrust": lambda: FLTrust(),
        "flame": lambda: Flame(),
        "foolsgold": lambda: FoolsGold(),
        "pca_detect": lambda: PCADetect(source=1, start_round=1),
        "nnm+krum": lambda: Composed(Krum(f=f), [NearestNeighborMixing(f=f)]),
        "bucketing+median": lambda: Composed(Median(), [Bucketing(s=2)]),
    }
    features = max(1, min(1568, (d - 10) // 10))
    body = d - 10 * features - 10
    layout = Layout(
        names=("body", "fc.weight", "fc.bias"),
        shapes=(torch.Size([body]), torch.Size([10, features]), torch.Size([10])),
        offsets=(0, body, body + 10 * features),
    )

    def context(x: Any) -> Any:
        g = torch.Generator().manual_seed(0)
        return RoundContext(
            server_round=20,
            layout=layout,
            server_update=x[0].clone(),
            generator=g,
            client_ids=list(range(x.shape[0])),
        )

    return makers[name](), context


def _flower_rule(name: str, f: int, n: int) -> Any:
    from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    return {
        "flwr_krum": lambda: Krum(num_malicious_nodes=f),
        "flwr_multikrum": lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f),
        "flwr_fedmedian": lambda: FedMedian(),
        "flwr_fedtrimmedavg": lambda: FedTrimmedAvg(beta=0.2),
        "flwr_bulyan": lambda: Bulyan(num_malicious_nodes=f),
    }[name]()


def _replies(x: Any, arrays: int) -> list[Any]:
    """One reply Message per row, its vector split into ``arrays`` arrays."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.app.metadata import Metadata

    cuts = np.array_split(np.arange(x.shape[1]), arrays)
    out = []
    for i, row in enumerate(x):
        record = ArrayRecord({f"layer{k}": Array(row[c[0] : c[-1] + 1].copy()) for k, c in enumerate(cuts) if len(c)})
        content = RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 1})})
        meta = Metadata(
            run_id=1,
            message_id=f"m{i}",
            src_node_id=i + 1,
            dst_node_id=0,
            reply_to_message_id="",
            group_id="1",
            created_at=0.0,
            ttl=3600.0,
            message_type="train",
        )
        out.append(Message(content=content, metadata=meta))
    return out


class PeakRSS:
    """Peak resident memory of this process above a baseline, in MB.

    On Linux the kernel's high-water mark (``VmHWM``) is reset by writing 5 to
    ``/proc/self/clear_refs``, so warm-up allocations (lazy kernel loading) are
    not counted; elsewhere this falls back to the growth of ``ru_maxrss``.
    """

    def __init__(self) -> None:
        self.base = 0.0
        self.resettable = False

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return float(line.split()[1]) / 1024.0  # kB
        except OSError:
            return None
        return None

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = self._status("VmHWM") is not None
        except OSError:
            self.resettable = False
        if self.resettable:
            self.base = self._status("VmRSS") or 0.0
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB

    def peak(self) -> float:
        if self.resettable:
            return (self._status("VmHWM") or 0.0) - self.base
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 - self.base


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in this (fresh) process and return its measurements."""
    import logging

    import numpy as np
    import torch

    logging.getLogger("flwr").setLevel(logging.WARNING)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    n, d, f, name = spec["n"], spec["d"], spec["f"], spec["rule"]
    rng = np.random.default_rng(spec["seed"])
    x = (0.01 * rng.standard_normal((n, d), dtype=np.float32) + 0.001).astype(np.float32)
    times: list[float] = []
    meter = PeakRSS()
    flower = name.startswith("flwr_")
    cuda = spec["device"].startswith("cuda") and not flower

    if flower:
        strategy = _flower_rule(name, f, n)
        for i in range(spec["warmup"] + spec["repeats"]):
            replies = _replies(x, spec["arrays"])
            if i == spec["warmup"]:
                meter.start()  # the replies of this repeat are part of the baseline
            start = time.perf_counter()
            strategy.aggregate_train(1, replies)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - start)
            del replies
        peak = meter.peak()
    else:
        updates = torch.from_numpy(x).to(spec["device"])
        rule, context = _our_rule(name, n, d, f)
        held = 0
        for i in range(spec["warmup"] + spec["repeats"]):
            ctx = context(updates)
            if i == spec["warmup"]:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    held = torch.cuda.memory_allocated()
                meter.start()
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            rule(updates, ctx)
            if cuda:
                torch.cuda.synchronize()
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - start)
        peak = (torch.cuda.max_memory_allocated() - held) / 2**20 if cuda else meter.peak()
    return {"time_s": statistics.median(times), "times": times, "peak_mb": max(0.0, peak)}


# --------------------------------------------------------------------------- driver side


def run_case(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``worker(spec)`` in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt_ratio(t: float | None, ref: float | None) -> str:
    return "n/a" if not t or not ref else f"{t / ref:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000], help="clients per round")
    parser.add_argument("--d", type=int, nargs="+", default=[29034, 551466, 11_000_000], help="update sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--flower-repeats", type=int, help="timed runs of Flower's strategies (default --repeats)")
    parser.add_argument("--flower-warmup", type=int, help="untimed runs of Flower's strategies (default --warmup)")
    parser.add_argument("--device", default="cpu", help="device for our rules (Flower is numpy on CPU)")
    parser.add_argument("--rules", nargs="+", default=OURS + FLOWER, choices=OURS + FLOWER, metavar="RULE")
    parser.add_argument("--f-fraction", type=float, default=0.1, help="f = fraction * n, capped at (n-3)//4")
    parser.add_argument("--arrays", type=int, default=10, help="arrays per Flower reply (model layers)")
    parser.add_argument("--max-gb", type=float, default=8.0, help="skip cases estimated to need more")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: default)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    print(f"# Aggregation rules vs Flower 1.41 (device for ours: {args.device}, median of {args.repeats})\n")
    print("| n | d | f | rule | time (s) | peak MB | x Flower Bulyan | x Flower Krum |")
    print("|---|---|---|---|---|---|---|---|")
    notes: list[str] = []
    for n in args.n:
        for d in args.d:
            f = default_f(n, args.f_fraction)
            input_gb = n * d * 4 / 1e9
            results: dict[str, dict[str, Any]] = {}
            for rule in args.rules:
                factor = FLOWER_FACTOR if rule.startswith("flwr_") else HEAVY_FACTOR if rule in HEAVY else OURS_FACTOR
                if input_gb * factor > args.max_gb:
                    notes.append(
                        f"skipped {rule} at n={n}, d={d}: needs about {input_gb * factor:.1f} GB "
                        f"(input {input_gb:.2f} GB x {factor}) > --max-gb {args.max_gb}"
                    )
                    continue
                flower = rule.startswith("flwr_")
                spec = {
                    "rule": rule,
                    "n": n,
                    "d": d,
                    "f": f,
                    "repeats": args.flower_repeats if flower and args.flower_repeats else args.repeats,
                    "warmup": args.flower_warmup if flower and args.flower_warmup is not None else args.warmup,
                    "device": args.device,
                    "arrays": args.arrays,
                    "threads": args.threads,
                    "seed": 0,
                }
                results[rule] = run_case(spec, args.timeout)
            ref_b = results.get("flwr_bulyan", {}).get("time_s")
            ref_k = results.get("flwr_krum", {}).get("time_s")
            for rule, res in results.items():
                if "error" in res:
                    print(f"| {n} | {d} | {f} | {rule} | error | | | |")
                    notes.append(f"{rule} at n={n}, d={d}: {res['error']}")
                    continue
                t = res["time_s"]
                print(
                    f"| {n} | {d} | {f} | {rule} | {t:.4g} | {res['peak_mb']:.0f} | "
                    f"{_fmt_ratio(t, ref_b)} | {_fmt_ratio(t, ref_k)} |",
                    flush=True,
                )
    if notes:
        print("\nNotes:")
        for note in notes:
            print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
