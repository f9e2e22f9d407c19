"""iDLG on the same per-example gradients, plain and after DP-SGD's clipping and noise.

Zhao et al.'s iDLG (2020) on an untrained sigmoid LeNet (Zhu et al.'s DLG
setting: 28x28 MNIST, batch 1, weights U(-0.5, 0.5)): for each of the first
``--images`` training images, the gradient of its loss, then the same gradient
as one DP-SGD step sees it with batch 1 (clipped to L2 norm ``C``, plus Gaussian
noise of std ``sigma * C`` on every coordinate; Abadi et al. 2016). Prints each
image's MSE, PSNR and label for both, and how many reconstructions reach MSE
<= 1e-3 (plain) or stay at MSE >= 0.05 (DP): Wei, Liu et al.'s point that
per-example noise at every local step stops type-2 leakage.

Run: ``python benchmarks/idlg_under_dp.py [--images 10] [--sigma 1.0] [--clip 1.0]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attacks.leakage import gradients_of, idlg, mse, psnr  # noqa: E402
from common.data import load_dataset, normalize, prepare_dataset, spec_of, to_float  # noqa: E402
from common.models import SigmoidLeNet  # noqa: E402


def privatize(grads: list[torch.Tensor], clip: float, sigma: float, generator: torch.Generator) -> list[torch.Tensor]:
    """One example's gradient as a batch-1 DP-SGD step applies it: clipped to ``clip``, noise ``sigma * clip``."""
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    scale = min(1.0, clip / (norm + 1e-12))
    return [g * scale + sigma * clip * torch.randn(g.shape, generator=generator) for g in grads]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, spec = load_dataset("mnist", str(prepare_dataset("mnist"))), spec_of("mnist")

    def prep(t):
        return normalize(t, spec)

    torch.manual_seed(args.seed)
    model = SigmoidLeNet(num_classes=10, in_channels=1, image_size=28)
    noise = torch.Generator().manual_seed(args.seed + 1)
    plain_ok = dp_failed = 0
    side = f"{'MSE':>9} {'PSNR':>6} {'label':>5}"
    print(f"{'image':>5} {'label':>5} | plain {side} | DP {side}")
    for i in range(args.images):
        x, y = to_float(data.train_x[i : i + 1]), data.train_y[i : i + 1]
        grads = gradients_of(model, x, y, preprocess=prep)
        row = []
        for target in (grads, privatize(grads, args.clip, args.sigma, noise)):
            start = time.perf_counter()
            recon = idlg(model, target, image_shape=(1, 28, 28), preprocess=prep, init="rand", iterations=100,
                         generator=torch.Generator().manual_seed(args.seed + i))  # fmt: skip
            row.append((float(mse(recon.images, x)[0]), float(psnr(recon.images, x)[0]), int(recon.labels[0]),
                        time.perf_counter() - start))  # fmt: skip
        (pm, pp, pl, _), (dm, dpp, dl, _) = row
        plain_ok += pm <= 1e-3
        dp_failed += dm >= 0.05
        print(f"{i:>5} {int(y):>5} |       {pm:9.2e} {pp:6.1f} {pl:>5} |    {dm:9.2e} {dpp:6.1f} {dl:>5}")
    print(f"plain: {plain_ok}/{args.images} reconstructed (MSE <= 1e-3); "
          f"DP-SGD (sigma {args.sigma}, C {args.clip}): {dp_failed}/{args.images} failed (MSE >= 0.05)")  # fmt: skip


if __name__ == "__main__":
    main()
