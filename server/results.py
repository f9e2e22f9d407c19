"""The outputs of one run: ``metrics.jsonl``, ``summary.json``, plots, console progress.

A diverged round (non-finite model output) is written with every score null
and drawn as a gap; ``summary.json`` says whether the run completed.

Every round appends one JSON line and flushes it, so a run that dies later keeps
every round it finished; ``summary.json`` and the plots are written at the end
(and can be rebuilt from ``metrics.jsonl`` with :func:`write_summary` and
:func:`write_plots`).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from common.plotting import pyplot

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def progress_line(line: dict[str, Any], num_rounds: int | None = None, eta: float | None = None) -> str:
    """The console line of one round of ``metrics.jsonl``."""
    total = f"/{num_rounds}" if num_rounds else ""
    head = f"[poisonlab] round {line['round']:>4}{total}"
    if line.get("diverged"):
        return f"{head}  DIVERGED: non-finite logits or loss, round not scored  {line['seconds']:6.2f}s"
    extra = "".join(
        f"  {label} {line[key]:.3f}"
        for key, label in (("source_recall", "src-recall"), ("asr", "ASR"))
        if line.get(key) is not None
    )
    if line.get("malicious_in_round"):
        extra += f"  malicious {line['malicious_in_round']}"
    for key in ("flagged", "excluded", "rejected", "failed", "withheld"):
        if line.get(key):
            extra += f"  {key} {len(line[key])}"
    if line.get("epsilon_max") is not None:
        extra += f"  eps {line['epsilon_max']:.2f}"
    if line.get("central_epsilon") is not None:
        extra += f"  central-eps {line['central_epsilon']:.2f}"
    leak = line.get("leakage")
    if leak:
        psnr = f"{leak['psnr_median']:.1f}" if leak.get("psnr_median") is not None else "n/a"
        extra += f"  leak {leak['reconstructed']}/{leak['images']} psnr {psnr} dB"
    if line.get("skipped"):
        extra += "  SKIPPED"
    tail = f"  ETA {eta:6.0f}s" if eta is not None else ""
    return f"{head}  acc {line['accuracy']:.4f}  loss {line['loss']:.4f}{extra}  {line['seconds']:6.2f}s{tail}"


class RunRecorder:
    """Append one line per round and print a progress line.

    Parameters
    ----------
    out_dir : Path
        The run folder (Hydra's output directory).
    num_rounds : int
        For the ETA on the console.
    """

    def __init__(self, out_dir: Path, num_rounds: int) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / METRICS_FILE
        self.path.write_text("")
        self.num_rounds = num_rounds
        self.started = time.perf_counter()
        self.last = self.started
        self.round_seconds: list[float] = []

    def record(self, line: dict[str, Any]) -> dict[str, Any]:
        """Stamp the round's wall time on ``line``, append it and print progress."""
        now = time.perf_counter()
        seconds = now - self.last
        self.last = now
        line = {"round": line.pop("round"), "seconds": round(seconds, 4), **line}
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if line["round"] > 0:
            self.round_seconds.append(seconds)
            recent = self.round_seconds[-5:]
            eta = (self.num_rounds - len(self.round_seconds)) * sum(recent) / len(recent)
            print(progress_line(line, self.num_rounds, eta), flush=True)
        elif line.get("diverged"):
            print("[poisonlab] round    0 (initial model)  DIVERGED: non-finite logits or loss", flush=True)
        else:
            print(f"[poisonlab] round    0 (initial model)  acc {line['accuracy']:.4f}", flush=True)
        return line


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    """All lines of a run's ``metrics.jsonl``."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(row) for row in path.read_text().splitlines() if row.strip()]


def write_summary(out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summarise ``metrics.jsonl`` into ``summary.json`` and return it.

    Accuracy figures come only from rounds whose model was finite. ``status``
    (from ``extra``: ``complete``, ``diverged`` or ``failed``, with ``reason``),
    ``rounds_completed``, ``first_diverged_round`` and ``diverged_rounds`` say
    whether the run's numbers may be used: ``poisonlab-summarize`` averages only
    complete runs without a diverged round.
    """
    lines = read_metrics(out_dir)
    rows = [r for r in lines if r["round"] > 0]
    diverged = [r["round"] for r in rows if r.get("diverged")]
    scored = [r for r in rows if not r.get("diverged")]
    summary: dict[str, Any] = {
        "status": "complete",
        "reason": None,
        "rounds_completed": len(rows),
        "first_diverged_round": diverged[0] if diverged else None,
        "diverged_rounds": diverged,
    }
    if scored:
        best = max(scored, key=lambda r: r["accuracy"])
        last10 = scored[-10:]
        timed = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
        summary.update(
            final_accuracy=rows[-1]["accuracy"],
            final_loss=rows[-1]["loss"],
            best_accuracy=best["accuracy"],
            best_round=best["round"],
            mean_accuracy_last10=sum(r["accuracy"] for r in last10) / len(last10),
            final_per_class_recall=rows[-1]["per_class_recall"],
            seconds_per_round_median=statistics.median(timed),
            total_seconds=sum(r["seconds"] for r in lines),
        )
    privacy = [r["epsilon_max"] for r in rows if r.get("epsilon_max") is not None]
    if privacy:
        summary["final_epsilon_max"] = privacy[-1]
    central = [r["central_epsilon"] for r in rows if r.get("central_epsilon") is not None]
    if central:
        summary["final_central_epsilon"] = central[-1]
    leaked = [r for r in rows if r.get("leakage")]
    if leaked:
        summary["leakage"] = {str(r["round"]): r["leakage"] for r in leaked}
    summary.update(extra or {})
    (Path(out_dir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_plots(out_dir: Path) -> list[Path]:
    """Accuracy / loss per round and per-class recall per round, as PNG files."""
    plt = pyplot()
    rows = [r for r in read_metrics(out_dir) if not r.get("diverged")]
    if not rows:
        return []
    rounds = [r["round"] for r in rows]
    paths = []

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(rounds, [r["accuracy"] for r in rows], marker=".")
    ax1.set(xlabel="round", ylabel="test accuracy", title="Global model accuracy", ylim=(0, 1))
    ax1.grid(alpha=0.3)
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax2.plot(rounds, [r["loss"] for r in rows], marker=".", color="tab:red")
    ax2.set(xlabel="round", ylabel="test loss", title="Global model loss")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(Path(out_dir) / "accuracy_loss.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    recalls = [r["per_class_recall"] for r in rows]
    for c in range(len(recalls[0])):
        ax.plot(rounds, [rec[c] for rec in recalls], label=f"class {c}")
    ax.set(xlabel="round", ylabel="recall", title="Per-class recall", ylim=(0, 1.02))
    ax.legend(ncol=2, fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(Path(out_dir) / "per_class_recall.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
