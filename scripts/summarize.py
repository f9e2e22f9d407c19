"""``poisonlab-summarize``: turn a multirun folder into one table and comparison figures.

The runs themselves (which job folders are runs, which runs are complete, and
the numbers of one complete run over its last ``--last`` rounds) come from
:mod:`scripts.sweep_runs`; this module holds the command line, the grouping into
conditions, the tables and the figures.

Conditions
----------
Runs are grouped into conditions by their Hydra overrides less ``seed`` (and
``hydra.*``); strategies are named by their Hydra option (``fedavg``,
``fedavg_weighted``, ...), else by their rule's class.

Each condition is the mean and sample standard deviation, over its complete
runs (``n`` of them; ``excluded`` counts the rest), of their last-``k``-round
numbers (``--last``, default 10). A condition whose runs were all excluded still
has a row, with ``n`` = 0 and empty values. Every excluded run is listed with its
condition, seed, job folder, status and one-line reason.

Outputs
-------
In the first folder:

* ``sweep_summary.csv`` and ``sweep_summary.md``: one row per condition; the
  Markdown adds an "Excluded runs" section ("none" when none). The attack's
  classes are named after the dataset's classes (``config.json``'s dataset):
  the CSV's ``source_class`` / ``source_name`` and ``target_class`` /
  ``target_name`` columns, the Markdown's "attack classes" column
  (``Shirt -> T-shirt/top``), and the figures' titles or legends;
* ``sweep_excluded.csv``: the excluded runs (condition, seed, job, status, reason);
* ``dose_response.png``: source recall and accuracy against the malicious share
  (when ``attack.num_malicious`` or ``attack.fraction`` varies);
* ``per_round_<metric>.png``: the per-round mean over the complete runs of each
  condition (e.g. early- vs late-only poisoning), skipping null values;
* ``heatmap_<metric>.png``: attack x strategy (when both vary); a cell without a
  value (e.g. the TPR of a rule that does not detect) is grey and reads "n/a";
* with DP, the table's ``epsilon_max`` (client DP-SGD) or ``central_epsilon``
  column: each run's final cumulative epsilon, then mean +- std;
* with a leakage attack, ``leakage_by_round.csv/.md`` and
  ``leakage_psnr_by_round.png`` (:mod:`scripts.summarize_leakage`).

The excluded runs are printed to stderr; with ``--strict`` the command then exits
with status 1 when there is any.

See Also
--------
scripts.sweep_runs : the run model, which runs are complete, and the numbers of one run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.plotting import pyplot
from scripts.summarize_leakage import leakage_rows, write_leakage
from scripts.sweep_runs import (
    METRICS,
    Run,
    classes_label,
    condition_label,
    configured_rounds,
    load_runs,
    number,
    run_metrics,
)
from scripts.tables import mean_std, write_csv

EXCLUDED_COLUMNS = ("condition", "seed", "job", "status", "reason")


def describe(members: list[Run]) -> dict[str, Any]:
    """Malicious share, attack (and its classes), strategy and configured rounds of a condition.

    Taken from a member with a config. The attack's source / target classes
    come as ``<role>_class`` (the id) and ``<role>_name`` (the dataset's name for it).
    """
    ref = next((m for m in members if m.config), None)
    if ref is None:
        return {}
    cfg = ref.config
    fed = cfg["federation"]
    row = {
        "malicious_share": len(cfg["attack"].get("malicious_clients", [])) / fed["num_clients"],
        "attack": cfg["attack"].get("name", "none"),
        # the option name (fedavg, fedavg_weighted, krum, ...), else the rule's class
        "strategy": ref.choices.get("strategy") or cfg["strategy"]["_target_"].rsplit(".", 1)[-1],
        "rounds": configured_rounds(ref),
    }
    if dataset := (cfg.get("dataset") or {}).get("name"):
        row["dataset"] = dataset
    names = ref.attack_class_names
    for role, c in ref.attack_classes.items():
        row[f"{role}_class"], row[f"{role}_name"] = c, names[role]
    return row


def row_classes(row: dict[str, Any]) -> str:
    """A condition row's attack classes in a few words (``Shirt -> T-shirt/top``), ``""`` for none."""
    return classes_label({role: row[f"{role}_name"] for role in ("source", "target") if row.get(f"{role}_name")})


def the_one(labels: set[str]) -> str:
    """The label every item shares, ``""`` when they differ or have none."""
    return next(iter(labels)) if len(labels) == 1 else ""


def condition_row(condition: tuple[str, ...], members: list[Run], k: int) -> dict[str, Any]:
    """Mean and std over the complete runs of a condition (empty when it has none)."""
    reduced = [run_metrics(m, k) for m in members if m.status == "complete"]
    row: dict[str, Any] = {
        "condition": condition_label(condition),
        "n": len(reduced),
        "excluded": len(members) - len(reduced),
    }
    row.update(describe(members))
    for metric in METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([v for r in reduced if (v := r[metric]) is not None])
    row["active_rounds"] = mean_std([v for r in reduced if (v := r["active_rounds"]) is not None])[0]
    return row


def summarize(runs: list[Run], k: int) -> list[dict[str, Any]]:
    """One row per condition, sorted by attack, strategy, malicious share and condition."""
    groups: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.condition].append(run)
    rows = [condition_row(condition, members, k) for condition, members in groups.items()]
    rows.sort(key=lambda r: (r.get("attack", ""), r.get("strategy", ""), r.get("malicious_share", 0), r["condition"]))
    return rows


def excluded_runs(runs: list[Run]) -> list[dict[str, Any]]:
    """The runs that are not averaged, one record each (:data:`EXCLUDED_COLUMNS`)."""
    return [
        {"condition": r.label, "seed": r.seed, "job": str(r.job), "status": r.status, "reason": r.reason}
        for r in runs
        if r.status != "complete"
    ]


def _cell(value: Any) -> str:
    """A value as a Markdown table cell (pipes escaped)."""
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]], k: int) -> list[str]:
    """The condition table: ``n``, ``excluded``, mean +- std of each metric present, ``active_rounds``."""
    present = [m for m in METRICS if any(r.get(f"{m}_mean") is not None for r in rows)]
    active = any(r.get("active_rounds") is not None for r in rows)
    classes = any(row_classes(r) for r in rows)
    header = ["condition", *(["attack classes"] if classes else []), "n", "excluded", *present,
              *(["active_rounds"] if active else [])]  # fmt: skip
    lines = [
        f"Mean +- std over the n complete runs (seeds) of each condition of their last-{k}-round averages;",
        "tpr / fpr / precision are micro-averaged over the scored rounds of that window (active_rounds: their",
        "mean number). Excluded runs are not averaged: see below.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [_cell(row["condition"]), *([_cell(row_classes(row))] if classes else [])]
        cells += [str(row["n"]), str(row["excluded"])]
        for m in present:
            mean, std = row.get(f"{m}_mean"), row.get(f"{m}_std")
            cells.append("" if mean is None else f"{mean:.3f} +- {std:.3f}")
        if active:
            cells.append("" if row["active_rounds"] is None else f"{row['active_rounds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_excluded(excluded: list[dict[str, Any]]) -> list[str]:
    """The "Excluded runs" section: one table row per excluded run, or "none"."""
    lines = ["## Excluded runs", ""]
    if not excluded:
        return [*lines, "none"]
    lines += ["| " + " | ".join(EXCLUDED_COLUMNS) + " |", "|" + "---|" * len(EXCLUDED_COLUMNS)]
    lines += ["| " + " | ".join(_cell(e[c]) for c in EXCLUDED_COLUMNS) + " |" for e in excluded]
    return lines


def write_tables(rows: list[dict[str, Any]], excluded: list[dict[str, Any]], out: Path, k: int) -> list[Path]:
    """``sweep_summary.csv`` (every column), ``sweep_summary.md`` and ``sweep_excluded.csv``."""
    write_csv(out / "sweep_summary.csv", rows, list(dict.fromkeys(key for row in rows for key in row)))
    write_csv(out / "sweep_excluded.csv", excluded, list(EXCLUDED_COLUMNS))
    (out / "sweep_summary.md").write_text(
        "\n".join([*markdown_table(rows, k), "", *markdown_excluded(excluded)]) + "\n"
    )
    return [out / "sweep_summary.csv", out / "sweep_summary.md", out / "sweep_excluded.csv"]


def dose_response(rows: list[dict[str, Any]], out: Path, k: int = 10) -> Path | None:
    """Source recall and accuracy against the malicious share, one line per other condition."""
    rows = [r for r in rows if r.get("malicious_share") is not None and r.get("source_recall_mean") is not None]
    shares = {r["malicious_share"] for r in rows}
    if len(shares) < 3:
        return None
    source = the_one({r.get("source_name") or "" for r in rows})
    recall_label = f"source-class recall ({source})" if source else "source-class recall"
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "source_recall", recall_label), (axes[1], "accuracy", "accuracy")):
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


def per_round(runs: list[Run], out: Path, metric: str) -> Path | None:
    """Per-round mean over the complete runs of ``metric``, one line per condition; null values skipped.

    For an attack metric, the attack's classes (``Shirt -> T-shirt/top``) go into
    the title when every condition shares them, else into each condition's legend entry.
    """
    groups: dict[tuple[str, ...], list[list[dict[str, Any]]]] = defaultdict(list)
    classes: dict[tuple[str, ...], str] = {}
    for run in runs:
        if run.status == "complete" and any(number(x, metric) is not None for x in run.lines):
            groups[run.condition].append(run.lines)
            named = metric in ("source_recall", "target_recall", "other_recall", "asr")
            classes.setdefault(run.condition, classes_label(run.attack_class_names) if named else "")
    if not groups or len(groups) > 12:
        return None
    shared = the_one(set(classes.values()))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for condition, members in sorted(groups.items()):
        by_round: dict[int, list[float]] = defaultdict(list)
        for lines in members:
            for x in lines:
                if (v := number(x, metric)) is not None:
                    by_round[x["round"]].append(v)
        rounds = sorted(by_round)
        label = condition_label(condition)
        if classes[condition] and not shared:
            label += f" [{classes[condition]}]"
        ax.plot(rounds, [sum(by_round[r]) / len(by_round[r]) for r in rounds], label=label)
    title = f"{metric} per round (mean over seeds)" + (f", {shared}" if shared else "")
    ax.set(xlabel="round", ylabel=metric, title=title, ylim=(0, 1.02))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"per_round_{metric}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap_grid(
    rows: list[dict[str, Any]], metric: str, attacks: list[str], strategies: list[str]
) -> list[list[float]]:
    """Attack x strategy means of ``metric``; NaN where a cell has no value (e.g. TPR of a non-detector)."""
    grid = [[math.nan] * len(strategies) for _ in attacks]
    for r in rows:
        if r.get(f"{metric}_mean") is not None and r.get("attack") in attacks and r.get("strategy") in strategies:
            grid[attacks.index(r["attack"])][strategies.index(r["strategy"])] = r[f"{metric}_mean"]
    return grid


def heatmaps(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Attack x strategy heatmaps of accuracy, each attack metric and detection; cells without a value read n/a."""
    import numpy as np

    attacks = sorted({r["attack"] for r in rows if r.get("attack")})
    strategies = sorted({r["strategy"] for r in rows if r.get("strategy")})
    if len(attacks) < 2 or len(strategies) < 2:
        return []
    plt = pyplot()
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    paths = []
    for metric in ("accuracy", "source_recall", "asr", "tpr", "fpr"):
        grid = np.ma.masked_invalid(np.array(heatmap_grid(rows, metric, attacks, strategies), dtype=float))
        if grid.mask.all():
            continue
        fig, ax = plt.subplots(figsize=(1.1 * len(strategies) + 2, 0.6 * len(attacks) + 1.8))
        image = ax.imshow(grid, vmin=0, vmax=1, cmap=cmap)
        ax.set_xticks(range(len(strategies)), strategies, rotation=45, ha="right")
        ax.set_yticks(range(len(attacks)), attacks)
        for (i, j), v in np.ndenumerate(grid.filled(math.nan)):
            text, color = ("n/a", "dimgrey") if math.isnan(v) else (f"{v:.2f}", "w" if v < 0.6 else "k")
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
        fig.colorbar(image, ax=ax)
        role = {"source_recall": "source", "asr": "target"}.get(metric)
        valued = [r for r in rows if r.get(f"{metric}_mean") is not None]
        named = the_one({r.get(f"{role}_name") or "" for r in valued}) if role else ""
        ax.set_title(f"{metric} (attack x defense)" + (f", {role} {named}" if named else ""))
        fig.tight_layout()
        paths.append(out / f"heatmap_{metric}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def report_excluded(excluded: list[dict[str, Any]]) -> None:
    """Print the excluded runs to stderr (nothing when there are none)."""
    if excluded:
        print(f"poisonlab-summarize: {len(excluded)} run(s) excluded (not averaged):", file=sys.stderr)
        for e in excluded:
            print(f"  {e['job']} ({e['condition']}, seed {e['seed']}): {e['reason']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Summarise the folders given on the command line; exit 1 under ``--strict`` when a run was excluded."""
    parser = argparse.ArgumentParser(description="Summarise poisonlab multirun folders into a table and figures.")
    parser.add_argument("folders", nargs="+", type=Path, help="multirun folder(s), e.g. multirun/2026-11-22/10-00-00")
    parser.add_argument("--last", type=int, default=10, help="rounds averaged at the end of each run (default 10)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any run was excluded")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)}")
    if args.last < 1:
        parser.error(f"--last must be at least 1, got {args.last}")
    runs = load_runs(args.folders)
    if not runs:
        parser.error(
            f"no run with a metrics.jsonl, config.json or .hydra folder under {', '.join(map(str, args.folders))}"
        )
    out = args.folders[0]
    rows = summarize(runs, args.last)
    excluded = excluded_runs(runs)
    made = write_tables(rows, excluded, out, args.last)
    made += [p for p in (dose_response(rows, out, args.last),) if p]
    made += [p for m in ("source_recall", "asr", "accuracy") if (p := per_round(runs, out, m))]
    made += heatmaps(rows, out)
    made += write_leakage(leakage_rows(runs), out)
    print((out / "sweep_summary.md").read_text())
    print("wrote:\n  " + "\n  ".join(str(p) for p in made))
    report_excluded(excluded)
    if args.strict and excluded:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
