"""Leakage by round across a sweep: what ``poisonlab-summarize`` adds when runs attempted gradient inversion.

Each complete run's ``metrics.jsonl`` carries, in every round its leakage attack
was attempted, a ``leakage`` summary (images, median PSNR, median MSE, mean
SSIM, label accuracy, images reconstructed to MSE <= 1e-3). This module averages
them over the seeds of each condition, round by round, into
``leakage_by_round.csv`` / ``.md`` and ``leakage_psnr_by_round.png`` (median PSNR
against the round the attack was attempted in, one line per condition).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from common.plotting import pyplot
from scripts.sweep_runs import Run, condition_label, number
from scripts.tables import mean_std, write_csv

FIELDS = ("psnr_median", "mse_median", "ssim_mean", "label_accuracy", "reconstructed", "images")


def leakage_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (condition, attempted round): mean +- std over the complete runs of each leakage figure."""
    cells: dict[tuple[tuple[str, ...], int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run.status != "complete":
            continue
        for line in run.rounds:
            if line.get("leakage"):
                cells[(run.condition, line["round"])].append(line["leakage"])
    rows = []
    for (condition, server_round), found in sorted(cells.items()):
        row: dict[str, Any] = {"condition": condition_label(condition), "round": server_round, "n": len(found)}
        for key in FIELDS:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([v for f in found if (v := number(f, key)) is not None])
        rows.append(row)
    return rows


def write_leakage(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """``leakage_by_round.csv``, ``leakage_by_round.md`` and the PSNR figure; nothing when no run leaked."""
    if not rows:
        return []
    write_csv(out / "leakage_by_round.csv", rows, list(dict.fromkeys(key for row in rows for key in row)))
    header = ["condition", "round", "n", "PSNR (dB)", "MSE", "SSIM", "label acc", "reconstructed / images"]
    lines = [
        "Leakage by the round the attack was attempted in: mean +- std over the n complete runs of each run's",
        "median PSNR / median MSE / mean SSIM / label accuracy (reconstructed: images with MSE <= 1e-3).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        lines.append("| " + " | ".join([
            r["condition"], str(r["round"]), str(r["n"]), _pm(r, "psnr_median", ".1f"), _pm(r, "mse_median", ".1e"),
            _pm(r, "ssim_mean", ".3f"), _pm(r, "label_accuracy", ".2f"),
            f"{_num(r['reconstructed_mean'], '.1f')} / {_num(r['images_mean'], '.0f')}",
        ]) + " |")  # fmt: skip
    (out / "leakage_by_round.md").write_text("\n".join(lines) + "\n")
    return [out / "leakage_by_round.csv", out / "leakage_by_round.md", *_figure(rows, out)]


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _pm(row: dict[str, Any], key: str, fmt: str) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return "" if mean is None else f"{mean:{fmt}} +- {std:{fmt}}"


def _figure(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    by_condition: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["psnr_median_mean"] is not None:
            by_condition[r["condition"]].append(r)
    if not by_condition:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for condition, found in sorted(by_condition.items()):
        xs = [r["round"] for r in found]
        ax.errorbar(xs, [r["psnr_median_mean"] for r in found], yerr=[r["psnr_median_std"] for r in found],
                    marker="o", capsize=3, label=condition)  # fmt: skip
    ax.set(xlabel="round the attack was attempted in", ylabel="median PSNR (dB)", title="Gradient leakage by round")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "leakage_psnr_by_round.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
