"""``poisonlab-summarize``: turn a multirun folder into one table and comparison figures.

Every job folder under the given folder(s) that has a ``metrics.jsonl`` is one
run. Runs are grouped by their Hydra overrides less ``seed``; each run is
reduced to its last-``k``-round averages (default 10: per-round attack metrics
swing by +-0.3, Tolpegin et al.), then each group to the mean and standard
deviation over its seeds. Outputs, in the first folder:

* ``sweep_summary.csv`` and ``sweep_summary.md``: one row per condition;
* ``dose_response.png``: source recall and accuracy against the malicious share
  (when ``attack.num_malicious`` or ``attack.fraction`` varies);
* ``per_round_<metric>.png``: the per-round mean over seeds of each condition
  (e.g. early- vs late-only poisoning);
* ``heatmap_<metric>.png``: attack x strategy (when both vary).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

METRICS = ("accuracy", "source_recall", "target_recall", "other_recall", "asr", "tpr", "fpr", "precision")


def load_runs(folders: list[Path]) -> list[dict[str, Any]]:
    """Each run: its condition (overrides less seed), seed, config and per-round lines."""
    runs = []
    for folder in folders:
        for metrics in sorted(folder.rglob("metrics.jsonl")):
            job = metrics.parent
            overrides_file = job / ".hydra" / "overrides.yaml"
            overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
            condition = tuple(sorted(o for o in overrides if not o.startswith(("seed=", "hydra."))))
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            config_file = job / "config.json"
            config = json.loads(config_file.read_text()) if config_file.exists() else {}
            hydra_file = job / ".hydra" / "hydra.yaml"
            hydra = yaml.safe_load(hydra_file.read_text()) if hydra_file.exists() else None
            choices = ((hydra or {}).get("hydra", {}).get("runtime", {}) or {}).get("choices", {}) or {}
            if len(lines) < 2:
                continue
            runs.append(
                {
                    "job": job,
                    "condition": condition,
                    "seed": config.get("seed"),
                    "config": config,
                    "choices": choices,
                    "lines": lines,
                }
            )
    return runs


def last_k_average(lines: list[dict[str, Any]], key: str, k: int) -> float | None:
    """Mean of ``key`` over the last ``k`` rounds that have a value."""
    values = [x[key] for x in lines if x["round"] > 0 and x.get(key) is not None][-k:]
    return sum(values) / len(values) if values else None


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(runs: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """One row per condition: mean and std over seeds of the last-k averages."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[run["condition"]].append(run)
    rows = []
    for condition, members in groups.items():
        row: dict[str, Any] = {"condition": " ".join(condition) or "(defaults)", "seeds": len(members)}
        cfg = members[0]["config"]
        if cfg:
            fed = cfg["federation"]
            row["malicious_share"] = len(cfg["attack"].get("malicious_clients", [])) / fed["num_clients"]
            row["attack"] = cfg["attack"].get("name", "none")
            # the option name (fedavg, fedavg_weighted, krum, ...), else the rule's class
            row["strategy"] = members[0]["choices"].get("strategy") or cfg["strategy"]["_target_"].rsplit(".", 1)[-1]
            row["rounds"] = min(len(m["lines"]) - 1 for m in members)
        for metric in METRICS:
            values = [v for m in members if (v := last_k_average(m["lines"], metric, k)) is not None]
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(values)
        rows.append(row)
    rows.sort(key=lambda r: (r.get("attack", ""), r.get("strategy", ""), r.get("malicious_share", 0), r["condition"]))
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path, k: int) -> None:
    """``sweep_summary.csv`` (every column) and ``sweep_summary.md`` (mean +- std)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (out / "sweep_summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    present = [m for m in METRICS if any(r.get(f"{m}_mean") is not None for r in rows)]
    header = ["condition", "seeds", *present]
    lines = [
        f"Mean +- std over seeds of each run's last-{k}-round average.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [row["condition"], str(row["seeds"])]
        for m in present:
            mean, std = row.get(f"{m}_mean"), row.get(f"{m}_std")
            cells.append("" if mean is None else f"{mean:.3f} +- {std:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    (out / "sweep_summary.md").write_text("\n".join(lines) + "\n")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dose_response(rows: list[dict[str, Any]], out: Path, k: int = 10) -> Path | None:
    """Source recall and accuracy against the malicious share, one line per other condition."""
    rows = [r for r in rows if r.get("malicious_share") is not None and r.get("source_recall_mean") is not None]
    shares = {r["malicious_share"] for r in rows}
    if len(shares) < 3:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "source_recall", "source-class recall"), (axes[1], "accuracy", "accuracy")):
        pts = sorted((r["malicious_share"], r[f"{metric}_mean"], r[f"{metric}_std"] or 0.0) for r in rows)
        ax.errorbar([p[0] * 100 for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3)
        ax.set(xlabel="malicious clients (%)", ylabel=label, ylim=(0, 1))
        ax.grid(alpha=0.3)
    fig.suptitle(f"Dose-response (mean +- std over seeds of last-{k}-round averages)")
    fig.tight_layout()
    path = out / "dose_response.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_round(runs: list[dict[str, Any]], out: Path, metric: str) -> Path | None:
    """Per-round mean over seeds of ``metric``, one line per condition."""
    groups: dict[tuple, list[list[dict[str, Any]]]] = defaultdict(list)
    for run in runs:
        if any(x.get(metric) is not None for x in run["lines"]):
            groups[run["condition"]].append(run["lines"])
    if not groups or len(groups) > 12:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for condition, members in sorted(groups.items()):
        rounds = sorted({x["round"] for lines in members for x in lines if x.get(metric) is not None})
        means = []
        for r in rounds:
            vals = [x[metric] for lines in members for x in lines if x["round"] == r and x.get(metric) is not None]
            means.append(sum(vals) / len(vals))
        ax.plot(rounds, means, label=" ".join(condition) or "(defaults)")
    ax.set(xlabel="round", ylabel=metric, title=f"{metric} per round (mean over seeds)", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"per_round_{metric}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmaps(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Attack x strategy heatmaps of accuracy and of each attack metric."""
    attacks = sorted({r.get("attack") for r in rows if r.get("attack")})
    strategies = sorted({r.get("strategy") for r in rows if r.get("strategy")})
    if len(attacks) < 2 or len(strategies) < 2:
        return []
    plt = _plt()
    paths = []
    for metric in ("accuracy", "source_recall", "asr", "tpr", "fpr"):
        grid = [[math.nan] * len(strategies) for _ in attacks]
        for r in rows:
            if r.get(f"{metric}_mean") is not None and r.get("attack") in attacks:
                grid[attacks.index(r["attack"])][strategies.index(r["strategy"])] = r[f"{metric}_mean"]
        if all(math.isnan(v) for row in grid for v in row):
            continue
        fig, ax = plt.subplots(figsize=(1.1 * len(strategies) + 2, 0.6 * len(attacks) + 1.8))
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(strategies)), strategies, rotation=45, ha="right")
        ax.set_yticks(range(len(attacks)), attacks)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
        fig.colorbar(image, ax=ax)
        ax.set_title(f"{metric} (attack x defense)")
        fig.tight_layout()
        paths.append(out / f"heatmap_{metric}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarise poisonlab multirun folders into a table and figures.")
    parser.add_argument("folders", nargs="+", type=Path, help="multirun folder(s), e.g. multirun/2026-11-22/10-00-00")
    parser.add_argument("--last", type=int, default=10, help="rounds averaged at the end of each run (default 10)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)}")
    runs = load_runs(args.folders)
    if not runs:
        parser.error(f"no run with a metrics.jsonl under {', '.join(map(str, args.folders))}")
    out = args.folders[0]
    rows = summarize(runs, args.last)
    write_tables(rows, out, args.last)
    made = [out / "sweep_summary.csv", out / "sweep_summary.md"]
    made += [p for p in (dose_response(rows, out, args.last),) if p]
    made += [p for m in ("source_recall", "asr", "accuracy") if (p := per_round(runs, out, m))]
    made += heatmaps(rows, out)
    print((out / "sweep_summary.md").read_text())
    print("wrote:\n  " + "\n  ".join(str(p) for p in made))


if __name__ == "__main__":
    main()
