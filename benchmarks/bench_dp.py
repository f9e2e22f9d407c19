"""What DP-SGD costs per local round, which Opacus grad-sample mode is fastest here, and one iDLG inversion.

Part 1: one client's local round of Tolpegin et al.'s Fashion-MNIST setup
(paper A's CNN with GroupNorm, as ``dp=opacus`` builds it; 1,200 real samples,
one epoch, SGD lr 0.001 momentum 0.9) at the same batch size with and without
DP-SGD (``common.dp_training.train_private``: Poisson batches, per-example
clipping, noise), one torch thread as every simulated client runs. The plain
round is the floor; the ratio is what privacy costs in time.

Part 2: the same local work on fixed-size batches (no empty Poisson batches,
which only ``hooks`` supports) in each of Opacus' grad-sample modes ``hooks``,
``functorch`` and ``ew``, to name the fastest here.

Part 3: one iDLG reconstruction (Zhao et al. 2020) of a real MNIST image from
its gradient on an untrained sigmoid LeNet, batch 1, 100 L-BFGS iterations from a
U(0, 1) start (``conf/leakage/idlg.yaml``).

Run: ``python benchmarks/bench_dp.py [--repeats 3] [--batch-size 4]``. Timings on
a shared machine vary: compare the ratios, taken in one sitting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attacks.leakage import gradients_of, idlg, mse  # noqa: E402
from common.data import load_dataset, normalize, prepare_dataset, spec_of, to_float  # noqa: E402
from common.dp_training import DpSgd, dp_compatible, train_private  # noqa: E402
from common.models import FashionMnistCnn, SigmoidLeNet  # noqa: E402
from common.privacy import NoiseSchedule  # noqa: E402
from common.training import epoch_batches, train_on_batches  # noqa: E402


def fmnist_shard(n: int = 1200) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("fashion_mnist", str(prepare_dataset("fashion_mnist")))
    return to_float(data.train_x[:n]), data.train_y[:n]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_round(x, y, batch_size: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = dp_compatible(FashionMnistCnn())
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    batches = epoch_batches(len(y), batch_size, 1, gen)
    return timed(lambda: train_on_batches(model, opt, x, y, batches, spec=spec_of("fashion_mnist"), generator=gen))


def dp_round(x, y, batch_size: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = dp_compatible(FashionMnistCnn())
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    dp = DpSgd(schedule=NoiseSchedule(start=1.0))
    gen, noise = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    kwargs = {"dp": dp, "sigma": 1.0, "spec": spec_of("fashion_mnist"), "batch_size": batch_size, "epochs": 1,
              "generator": gen, "noise_generator": noise}  # fmt: skip
    return timed(lambda: train_private(model, opt, x, y, **kwargs))


def mode_round(x, y, batch_size: int, mode: str, seed: int) -> float:
    """DP-SGD on fixed-size batches in one grad-sample mode (the mode comparison only)."""
    torch.manual_seed(seed)
    model = dp_compatible(FashionMnistCnn())
    wrapped = wrap_model(model, mode, batch_first=True, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9), noise_multiplier=1.0,
                      max_grad_norm=1.0, expected_batch_size=batch_size)  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    batches = epoch_batches(len(y), batch_size, 1, gen)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        return timed(lambda: train_on_batches(wrapped, opt, x, y, batches, spec=spec_of("fashion_mnist"),
                                              generator=gen))  # fmt: skip


def idlg_once(seed: int) -> tuple[float, float, bool]:
    data = load_dataset("mnist", str(prepare_dataset("mnist")))
    spec = spec_of("mnist")
    torch.manual_seed(seed)
    model = SigmoidLeNet(num_classes=10, in_channels=1, image_size=28)
    image, label = to_float(data.train_x[seed : seed + 1]), data.train_y[seed : seed + 1]
    grads = gradients_of(model, image, label, preprocess=lambda t: normalize(t, spec))
    start = time.perf_counter()
    recon = idlg(model, grads, image_shape=(1, 28, 28), preprocess=lambda t: normalize(t, spec), init="rand",
                 iterations=100, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    seconds = time.perf_counter() - start
    return seconds, float(mse(recon.images, image)[0]), bool(int(recon.labels[0]) == int(label[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--skip-modes", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = fmnist_shard()
    b = args.batch_size
    print(f"# one client's local round: 1,200 Fashion-MNIST samples, batch {b}, paper A's CNN with GroupNorm, 1 thread")
    plain, private = [], []
    for r in range(args.repeats):  # interleaved, pair by pair
        plain.append(plain_round(x, y, b, r))
        private.append(dp_round(x, y, b, r))
    ratios = [p / q for p, q in zip(private, plain, strict=True)]
    print(f"plain SGD round   median {statistics.median(plain):.3f} s  ({[round(t, 3) for t in plain]})")
    print(f"DP-SGD round      median {statistics.median(private):.3f} s  ({[round(t, 3) for t in private]})")
    pairs = [round(v, 2) for v in ratios]
    print(f"DP / plain        median ratio {statistics.median(ratios):.2f}  (pair by pair {pairs})")
    if not args.skip_modes:
        print("# grad-sample modes on fixed-size batches (same work; Poisson's empty batches need hooks)")
        times = {mode: [] for mode in ("hooks", "functorch", "ew")}
        for r in range(args.repeats):
            for mode in times:
                times[mode].append(mode_round(x, y, b, mode, r))
        for mode, values in times.items():
            print(f"{mode:10s} median {statistics.median(values):.3f} s  ratio to plain "
                  f"{statistics.median(values) / statistics.median(plain):.2f}")  # fmt: skip
        best = min(times, key=lambda m: statistics.median(times[m]))
        print(f"fastest here: {best}")
    print(
        "# one iDLG reconstruction: untrained sigmoid LeNet, batch 1, real MNIST, 100 L-BFGS iterations, U(0, 1) start"
    )
    runs = [idlg_once(seed) for seed in range(args.repeats)]
    print(
        f"iDLG seconds median {statistics.median(s for s, _, _ in runs):.2f}; "
        f"MSE {[f'{m:.1e}' for _, m, _ in runs]}; labels right {sum(ok for _, _, ok in runs)}/{len(runs)}"
    )


if __name__ == "__main__":
    main()
