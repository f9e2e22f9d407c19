"""Hundreds to thousands of clients per round: poisonlab against the sequential plain-PyTorch floor.

The work (McMahan et al.'s 2NN, MLP 784-200-200-10; 120 Fashion-MNIST samples
per client, 60 at 1,000 and 6 at 10,000 clients (the 60,000 training images
shared out); batch 32, one local epoch, SGD lr 0.001 momentum 0.9 with each client's momentum kept
across its participations, unweighted mean):

* the floor: one process, the round's clients trained one after another by a
  plain PyTorch loop (all cores as torch threads), their momentum kept in a
  dict, the mean of their models; no evaluation, no Flower, no Ray;
* poisonlab: ``poisonlab`` with the same settings on the Ray simulation (its
  default ``engine.clients_per_node=auto`` groups clients per message), central
  evaluation on the 10,000 test images included.

For each size, floor and poisonlab run back to back in one sitting; the table
gives steady-state seconds per round (median over rounds 2..R), their ratio,
poisonlab's start-up and the peak memory of its whole process tree, twice: the
sum of its processes' resident sets (RSS, which counts a page shared by several
processes, such as torch's libraries or Ray's object store, once per process)
and of their proportional sets (PSS, which divides each shared page among the
processes that map it: the tree's physical footprint). The last row (10,000
clients, 100 per round) also prints the tree's memory after each round: it
must not grow with the number of clients that have taken part (their momentum
lives in the state store on disk).

Run: ``python benchmarks/bench_scale.py [--rounds 4] [--sizes 100 500 1000] [--skip-sparse]``.
Timings on a shared machine vary by +-15 %: compare the ratios, taken in one sitting.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_federation import run_poisonlab, steady  # noqa: E402

from common.data import load_dataset, prepare_dataset, to_float  # noqa: E402
from common.models import Mlp  # noqa: E402
from common.partition import IidEqual  # noqa: E402
from common.training import train_epochs  # noqa: E402

SAMPLES, BATCH, TRAIN_SET = 120, 32, 60_000


def samples_per_client(num_clients: int) -> int:
    """120 each, or an equal share of the 60,000 training images when that many clients cannot have 120."""
    return min(SAMPLES, TRAIN_SET // num_clients)


def floor_rounds(num_clients: int, per_round: int, rounds: int, seed: int = 0) -> list[float]:
    """The plain sequential loop: seconds of each round."""
    torch.set_num_threads(os.cpu_count() or 1)
    data = load_dataset("fashion_mnist", str(prepare_dataset("fashion_mnist")))
    parts = IidEqual(samples_per_client=samples_per_client(num_clients))(data.train_y.numpy(), num_clients, seed)
    x_all = to_float(data.train_x)
    torch.manual_seed(seed)
    global_model = Mlp()
    momentum: dict[int, dict] = {}
    gen = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        chosen = torch.randperm(num_clients, generator=gen)[:per_round].tolist()
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_model.state_dict().items()}
        for cid in chosen:
            model = Mlp()
            model.load_state_dict(global_model.state_dict())
            opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
            if cid in momentum:
                opt.load_state_dict(momentum[cid])
            idx = torch.from_numpy(parts[cid])
            train_epochs(model, opt, x_all[idx], data.train_y[idx], spec=data.spec, batch_size=BATCH, epochs=1,
                         generator=gen)  # fmt: skip
            momentum[cid] = opt.state_dict()
            for k, v in model.state_dict().items():
                total[k] += v
        global_model.load_state_dict({k: (v / len(chosen)).float() for k, v in total.items()})
        times.append(time.perf_counter() - start)
    return times


def poisonlab_overrides(num_clients: int, per_round: int, rounds: int) -> list[str]:
    return ["model=mlp", f"federation.num_clients={num_clients}", f"federation.clients_per_round={per_round}",
            f"federation.num_rounds={rounds}", f"partition.samples_per_client={samples_per_client(num_clients)}",
            f"client.batch_size={BATCH}", "output.plots=false", "output.checkpoint=false"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 500, 1000])
    parser.add_argument("--sparse-rounds", type=int, default=12)
    parser.add_argument("--skip-sparse", action="store_true", help="skip 10,000 clients with 100 per round")
    parser.add_argument("--extra", nargs="*", default=[], help="more poisonlab overrides for every run")
    args = parser.parse_args()
    cases = [(n, n, args.rounds) for n in args.sizes]
    if not args.skip_sparse:
        cases.append((10_000, 100, args.sparse_rounds))
    print(f"== clients per round: poisonlab vs the sequential floor, {os.cpu_count()} cores ==", flush=True)
    rows = []
    for n, per_round, rounds in cases:
        floor = steady(floor_rounds(n, per_round, rounds))
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_poisonlab([*poisonlab_overrides(n, per_round, rounds), *args.extra], Path(tmp) / "run")
        p = steady(ours["rounds"])
        rows.append((n, per_round, floor, p, ours))
        print(f"  {n} clients, {per_round} per round: floor {floor:.2f} s, poisonlab {p:.2f} s "
              f"(x{p / floor:.2f}), peak RSS sum {ours['peak_mb']:.0f} MiB, PSS sum {ours['peak_pss_mb']:.0f} MiB",
              flush=True)  # fmt: skip
        if n == 10_000:
            print("  memory of the process tree after each round, RSS sum / PSS sum (MiB): "
                  + ", ".join(f"{r:.0f}/{s:.0f}" for r, s in zip(ours["rss_after_round"], ours["pss_after_round"],
                                                                  strict=True)), flush=True)  # fmt: skip
    print("\n| clients | per round | floor s/round | poisonlab s/round | ratio | start-up s | peak RSS sum MiB "
          "| peak PSS sum MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for n, per_round, floor, p, ours in rows:
        print(f"| {n} | {per_round} | {floor:.2f} | {p:.2f} | {p / floor:.2f} | {ours['startup']:.1f} "
              f"| {ours['peak_mb']:.0f} | {ours['peak_pss_mb']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
