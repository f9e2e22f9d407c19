"""Gradient-leakage attacks measured by round: what a curious server reconstructs from what it sees.

Wei, Liu et al. (arXiv 2409.13004) distinguish where an adversary observes
gradients: type 0 at the server (each client's shared update), type 2 inside
local training (every per-step gradient). Both run here, on the server, with
the inversion attacks of :mod:`attacks.leakage` (DLG, iDLG, Inverting
Gradients):

* ``leakage.target=update`` (type 0): in each round of ``leakage.rounds`` the
  update of each attacked participant is turned into a pseudo-gradient,
  ``-(update) / (lr * steps)`` (the exact gradient for one local SGD step without
  momentum history, the mean gradient of the round otherwise), and inverted at
  the global model the client received. A reconstruction is scored against the
  closest image (lowest MSE) of that client's training shard.
* ``leakage.target=step`` (type 2): the attacked clients copy their first
  ``leakage.num_images`` non-empty local steps (the parameters, the gradient the
  step applied: plain, or under DP-SGD clipped and noised, and the batch for
  scoring only) into their reply; each step is inverted at its own
  parameters and scored against its own batch.

The attacked participants of a round are the ``leakage.clients`` lowest client
ids sampled. Results go to ``leakage.json`` (one entry per reconstructed image:
round, client, step, MSE, PSNR, SSIM, label and whether it is right) and to
``leakage_round_<r>.png`` (originals above with their class, reconstructions
below with their PSNR and the class the attack recovered, in red when wrong);
each attempted round's metrics line gets a ``leakage`` summary.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import RecordDict
from torch import Tensor

from attacks.leakage import best_match, mse, psnr, reconstruct, ssim
from common.data import class_names, normalize, to_float
from common.plotting import pyplot
from common.runtime import CAPTURE_STEPS_KEY
from common.streams import Stream, stream


class LeakageAttack:
    """The run's gradient-leakage attack (``run.leakage``), fed by ``RobustStrategy``'s reply observer.

    Parameters
    ----------
    run : scripts.build.Run
        The run (its leakage settings, model factory, codec, dataset, partitions).
    out_dir : Path
        The run folder.
    """

    def __init__(self, run: Any, out_dir: Path) -> None:
        self.run, self.settings, self.out_dir = run, run.leakage, out_dir
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.targets: dict[int, list[int]] = {}
        self.results: list[dict[str, Any]] = []
        self.spec = run.spec

    def attacked(self, server_round: int, sampled: list[int]) -> list[int]:
        """The participants attacked in ``server_round`` (none outside ``leakage.rounds``)."""
        if server_round not in self.settings.rounds:
            return []
        return sorted(sampled)[: self.settings.clients]

    def client_config(self, server_round: int, cid: int, sampled: list[int]) -> dict[str, Any]:
        """Note the round's targets; ask an attacked client to capture its first steps (type 2)."""
        self.targets[server_round] = self.attacked(server_round, sampled)
        if self.settings.target == "step" and cid in self.targets[server_round]:
            return {CAPTURE_STEPS_KEY: self.settings.num_images}
        return {}

    def observe(
        self, server_round: int, cid: int, content: RecordDict, delta: Tensor | None, global_state: dict[str, Tensor]
    ) -> None:
        """Keep what the attack needs from an attacked client's reply (inverted after the round)."""
        if server_round not in self.settings.rounds:
            return
        if self.settings.target == "step":
            if "leakage" in content:
                self.pending.setdefault(server_round, []).append(
                    {"client": cid, "steps": content["leakage"].to_torch_state_dict()}
                )
            return
        if delta is None or cid not in self.targets.get(server_round, ()):
            return
        steps = float(content["metrics"].get("steps", 1.0)) if "metrics" in content else 1.0
        state = {k: v.clone() for k, v in global_state.items()}
        self.pending.setdefault(server_round, []).append({"client": cid, "delta": delta, "state": state,
                                                         "steps": max(steps, 1.0)})  # fmt: skip

    # --- the attack ---------------------------------------------------------------------------------

    def _model_at(self, params: list[Tensor]) -> torch.nn.Module:
        model = self.run.new_model()
        with torch.no_grad():
            for p, value in zip((p for p in model.parameters() if p.requires_grad), params, strict=True):
                p.copy_(value)
        return model

    def _preprocess(self, x: Tensor) -> Tensor:
        return normalize(x, self.spec)

    def _invert(self, model: torch.nn.Module, grads: list[Tensor], k: int, seed_ids: tuple[int, ...]) -> Any:
        """Run the configured inversion; DLG and iDLG restart from fresh starts until one converges (loss < 1e-6).

        Inverting Gradients runs its own restarts and keeps the best.
        """
        s = self.settings
        kwargs: dict[str, Any] = {
            "image_shape": (self.spec.channels, self.spec.size, self.spec.size),
            "num_images": k,
            "preprocess": self._preprocess,
            "iterations": s.iterations,
            "lr": s.lr,
            "init": s.init,
        }
        if s.method == "inverting_gradients":
            generator = stream(Stream.LEAKAGE, self.run.seed, *seed_ids)
            return reconstruct(s.method, model, grads, tv_weight=s.tv_weight, restarts=s.restarts,
                               generator=generator, **kwargs)  # fmt: skip
        if s.method == "dlg":
            kwargs["num_classes"] = self.spec.num_classes
        best = None
        for attempt in range(s.restarts):
            generator = stream(Stream.LEAKAGE, self.run.seed, *seed_ids, attempt)
            recon = reconstruct(s.method, model, grads, line_search=s.line_search, generator=generator, **kwargs)
            if best is None or recon.loss < best.loss:
                best = recon
            if best.loss < 1e-6:
                break
        return best

    def _score(self, server_round: int, cid: int, step: int, recon: Any, pool_x: Tensor, pool_y: Tensor,
               seconds: float) -> list[dict[str, Any]]:  # fmt: skip
        idx, _ = best_match(recon.images, pool_x)
        truth = pool_x[idx]
        rows = []
        for i in range(len(recon.images)):
            a, b = recon.images[i : i + 1], truth[i : i + 1]
            rows.append({
                "round": server_round, "client": cid, "step": step, "image": i, "method": self.settings.method,
                "target": self.settings.target, "mse": float(mse(a, b)[0]), "psnr": float(psnr(a, b)[0]),
                "ssim": float(ssim(a, b)[0]), "label": int(recon.labels[i]), "true_label": int(pool_y[idx[i]]),
                "label_correct": bool(int(recon.labels[i]) == int(pool_y[idx[i]])),
                "seconds": seconds / len(recon.images),
                "_pair": (truth[i].clone(), recon.images[i].clone()),
            })  # fmt: skip
        return rows

    def run_round(self, server_round: int) -> dict[str, Any] | None:
        """Invert what was kept this round, write ``leakage.json`` and the PNG; return the round's summary."""
        jobs = self.pending.pop(server_round, [])
        if not jobs:
            return None
        rows: list[dict[str, Any]] = []
        invert = self._steps if self.settings.target == "step" else self._update
        for job in jobs:
            rows += invert(server_round, job)
        self._write(server_round, rows)
        return summarize(rows)

    def _steps(self, server_round: int, job: dict[str, Any]) -> list[dict[str, Any]]:
        captured, cid, rows = job["steps"], job["client"], []
        k = 0
        while f"s{k}.x" in captured:
            params = [captured[f"s{k}.p{i}"] for i in range(_count(captured, f"s{k}.p"))]
            grads = [captured[f"s{k}.g{i}"] for i in range(len(params))]
            x, y, step = captured[f"s{k}.x"], captured[f"s{k}.y"], int(captured[f"s{k}.step"][0])
            start = time.perf_counter()
            recon = self._invert(self._model_at(params), grads, len(y), (cid, server_round, k))
            rows += self._score(server_round, cid, step, recon, x, y, time.perf_counter() - start)
            k += 1
        return rows

    def _update(self, server_round: int, job: dict[str, Any]) -> list[dict[str, Any]]:
        run, cid = self.run, job["client"]
        model = run.new_model()
        model.load_state_dict(job["state"])
        state = run.codec.to_state(-job["delta"] / (run.client.lr * job["steps"]), run.codec.buffers(job["state"]))
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        grads = [state[name].to(torch.float32) for name in names]
        idx = torch.from_numpy(run.partitions[cid])
        pool_x, pool_y = to_float(run.dataset.train_x[idx]), run.dataset.train_y[idx]
        start = time.perf_counter()
        recon = self._invert(model, grads, self.settings.num_images, (cid, server_round))
        return self._score(server_round, cid, -1, recon, pool_x, pool_y, time.perf_counter() - start)

    def _write(self, server_round: int, rows: list[dict[str, Any]]) -> None:
        pairs = [row.pop("_pair") for row in rows]
        self.results += rows
        (self.out_dir / "leakage.json").write_text(json.dumps(self.results, indent=1) + "\n")
        names = class_names(self.run.cfg["dataset"]["name"])
        write_grid(self.out_dir / f"leakage_round_{server_round}.png", pairs, rows, names)


def _count(record: dict[str, Tensor], prefix: str) -> int:
    n = 0
    while f"{prefix}{n}" in record:
        n += 1
    return n


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A round's leakage in one dict: image count, mean / median PSNR, median MSE, mean SSIM, label accuracy."""
    finite = [r["psnr"] for r in rows if math.isfinite(r["psnr"])]
    return {
        "images": len(rows),
        "psnr_mean": sum(finite) / len(finite) if finite else None,
        "psnr_median": statistics.median(finite) if finite else None,
        "mse_median": statistics.median(r["mse"] for r in rows),
        "ssim_mean": sum(r["ssim"] for r in rows) / len(rows),
        "label_accuracy": sum(r["label_correct"] for r in rows) / len(rows),
        "reconstructed": sum(r["mse"] <= 1e-3 for r in rows),
    }


def write_grid(
    path: Path, pairs: list[tuple[Tensor, Tensor]], rows: list[dict[str, Any]], names: Sequence[str] | None = None
) -> None:
    """Originals (top row, with their class) above their reconstructions (bottom row, with PSNR and recovered class).

    ``names`` are the dataset's class names (class ids when omitted); a recovered class that is wrong is red.
    """

    def name(c: int) -> str:
        return names[c] if names is not None and 0 <= c < len(names) else str(c)

    plt = pyplot()
    n = len(pairs)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n + 0.4, 3.2), squeeze=False)
    for j, ((truth, recon), row) in enumerate(zip(pairs, rows, strict=True)):
        for i, image in enumerate((truth, recon)):
            ax = axes[i][j]
            img = image.permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        color = "black" if row["label_correct"] else "tab:red"
        axes[1][j].set_xlabel(f"{row['psnr']:.1f} dB\n{name(row['label'])}", fontsize=7, color=color)
        axes[0][j].set_title(f"c{row['client']} s{row['step']}\n{name(row['true_label'])}", fontsize=7)
    axes[0][0].set_ylabel("original", fontsize=8)
    axes[1][0].set_ylabel("reconstructed", fontsize=8)
    fig.suptitle(f"{rows[0]['method']} ({rows[0]['target']}), round {rows[0]['round']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
