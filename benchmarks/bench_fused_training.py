"""Fused against sequential local training of one round's clients (``common.fused_training``).

The setting of ``bench_federation.py``'s part 2: ``model=mlp`` (McMahan et al.'s
2NN, 784-200-200-10), every client with 120 samples, batch 32, one epoch, SGD
lr 0.001 momentum 0.9 with momentum buffers from an earlier participation.
Sequential: each client as ``clients.app.train`` runs it (a copy of the model,
the global weights loaded, ``LocalTraining.sgd``, momentum restored,
``common.training.train_epochs``, weights copied out). Fused: the whole group
in one ``common.fused_training.train_group_epochs`` call (vmap over stacked
parameters). Synthetic images: the timings do not depend on the pixel values.

Prints the median seconds of each path over the repetitions, and the ratio
sequential / fused (above 1: fused is faster).

Run: ``python benchmarks/bench_fused_training.py [--clients 64] [--samples 120]
[--batch-size 32] [--repeats 5] [--threads 1] [--device cpu] [--model mlp]``.
One torch thread by default, as each simulated client gets one CPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.data import SPECS  # noqa: E402
from common.fused_training import fusable, train_group_epochs  # noqa: E402
from common.streams import Stream, stream  # noqa: E402
from common.training import LocalTraining, train_epochs  # noqa: E402
from scripts.config import instantiate_component  # noqa: E402

SEED, ROUND = 0, 2


def build(args: argparse.Namespace):
    spec = SPECS[args.dataset]
    section = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml"))
    torch.manual_seed(0)
    template = instantiate_component(
        section, "model", num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.size
    ).to(args.device)
    if not fusable(template):
        raise SystemExit(f"model={args.model} cannot be fused")
    global_state = {k: v.detach().cpu().clone() for k, v in template.state_dict().items()}
    shapes = [p.shape for p in template.parameters()]
    momenta = [{str(i): 0.01 * torch.randn(s) for i, s in enumerate(shapes)} for _ in range(args.clients)]
    shape = (args.samples, spec.channels, spec.size, spec.size)
    xs = [torch.rand(shape, device=args.device) for _ in range(args.clients)]
    ys = [torch.randint(0, spec.num_classes, (args.samples,), device=args.device) for _ in range(args.clients)]
    return spec, template, global_state, momenta, xs, ys


def sequential(args, settings, spec, template, global_state, momenta, xs, ys) -> list[dict]:
    out = []
    for cid in range(args.clients):
        model = copy.deepcopy(template)
        model.load_state_dict(global_state)
        optimizer = settings.sgd(model.parameters(), participations=1)
        params = list(model.parameters())
        for i, buffer in momenta[cid].items():
            # a copy: SGD updates the buffer in place, and every repetition starts from the same one
            optimizer.state[params[int(i)]]["momentum_buffer"] = buffer.to(params[int(i)].device, copy=True)
        train_epochs(model, optimizer, xs[cid], ys[cid], spec=spec, batch_size=settings.batch_size,
                     epochs=settings.epochs, generator=stream(Stream.CLIENT_BATCHES, SEED, cid, ROUND))  # fmt: skip
        out.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return out


def fused(args, settings, spec, template, global_state, momenta, xs, ys) -> list[dict]:
    generators = [stream(Stream.CLIENT_BATCHES, SEED, cid, ROUND) for cid in range(args.clients)]
    results = train_group_epochs(template, [global_state] * args.clients, momenta, xs, ys,
                                 [settings.lr_at(1)] * args.clients, momentum=settings.momentum,
                                 weight_decay=settings.weight_decay, spec=spec, batch_size=settings.batch_size,
                                 epochs=settings.epochs, generators=generators)  # fmt: skip
    return [{k: v.cpu() for k, v in r.state.items()} for r in results]


def timed(fn, device: str) -> tuple[float, list[dict]]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--dataset", default="fashion_mnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = LocalTraining(lr=0.001, momentum=0.9, weight_decay=0.0, batch_size=args.batch_size, epochs=args.epochs)
    setup = build(args)
    print(f"model={args.model} dataset={args.dataset}: {args.clients} clients x {args.samples} samples, batch "
          f"{args.batch_size}, {args.epochs} epoch(s), device {args.device}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}", flush=True)  # fmt: skip
    fused(args, settings, *setup)  # warm-up: first-call costs of both paths
    sequential(args, settings, *setup)
    seq_times, fused_times, ratios, worst = [], [], [], 0.0
    for _ in range(args.repeats):
        t_seq, seq_states = timed(lambda: sequential(args, settings, *setup), args.device)
        t_fused, fused_states = timed(lambda: fused(args, settings, *setup), args.device)
        seq_times.append(t_seq)
        fused_times.append(t_fused)
        ratios.append(t_seq / t_fused)
        for a, b in zip(seq_states, fused_states, strict=True):
            worst = max(worst, max(float((a[k] - b[k]).abs().max()) for k in b))
    s, f = statistics.median(seq_times), statistics.median(fused_times)
    print(
        f"sequential: median {s:.3f} s/round ({1000 * s / args.clients:.2f} ms/client), runs "
        + ", ".join(f"{t:.3f}" for t in seq_times)
    )
    print(
        f"fused:      median {f:.3f} s/round ({1000 * f / args.clients:.2f} ms/client), runs "
        + ", ".join(f"{t:.3f}" for t in fused_times)
    )
    print(
        f"ratio sequential / fused: median {statistics.median(ratios):.2f} (of medians {s / f:.2f}); "
        f"max |fused - sequential| weight {worst:.2e}"
    )


if __name__ == "__main__":
    main()
