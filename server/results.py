"""The outputs of one run: ``metrics.jsonl``, ``summary.json``, plots, console progress.

A diverged round (non-finite model output) is written with every score null
and drawn as a gap; ``summary.json`` says whether the run completed.

Every round appends one JSON line and flushes it, so a run that dies later keeps
every round it finished; ``summary.json`` and the plots are written at the end
(and can be rebuilt from ``metrics.jsonl`` with :func:`write_summary` and
:func:`write_plots`). With ``output.tensorboard=true`` every round also goes to
TensorBoard event files in ``tensorboard/`` (:mod:`server.tensorboard_log`).

``metrics.jsonl`` names classes by id (``per_class_recall`` is a list indexed
by class id); what people read (plot legends, the console line) names them
after the dataset's classes (:func:`common.classes.class_names`, found through the
dataset named in the run's ``config.json``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from common.classes import class_names
from common.plotting import pyplot

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"


def run_class_names(cfg: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The class names of a run's dataset, from its config (``config.json``); None when it names no known dataset."""
    name = (cfg.get("dataset") or {}).get("name")
    try:
        return class_names(name) if name else None
    except ValueError:
        return None


def attack_classes(cfg: Mapping[str, Any]) -> dict[str, int]:
    """The attack's ``source`` and ``target`` class ids from a run's config; a key only when the attack has it."""
    attack = cfg.get("attack") or {}
    return {role: attack[role] for role in ("source", "target") if isinstance(attack.get(role), int)}


def class_label(names: Sequence[str] | None, c: int) -> str:
    """Class ``c`` as people read it: its name, or its id when the names are unknown."""
    return names[c] if names is not None and 0 <= c < len(names) else str(c)


def attack_class_names(cfg: Mapping[str, Any]) -> dict[str, str]:
    """The names of the attack's source and target classes (``progress_line(line, **attack_class_names(cfg))``)."""
    names = run_class_names(cfg)
    return {role: class_label(names, c) for role, c in attack_classes(cfg).items()}


def read_config(out_dir: Path) -> dict[str, Any]:
    """A run folder's ``config.json``; empty when it is missing or unreadable."""
    try:
        return json.loads((Path(out_dir) / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def progress_line(
    line: dict[str, Any],
    num_rounds: int | None = None,
    eta: float | None = None,
    *,
    source: str | None = None,
    target: str | None = None,
) -> str:
    """The console line of one round of ``metrics.jsonl``.

    Parameters
    ----------
    line : dict
        The round's line.
    num_rounds : int, optional
        Shown as ``round r/num_rounds``.
    eta : float, optional
        Seconds left, shown as ``ETA``.
    source, target : str, optional
        The names of the attack's source and target classes (:func:`attack_class_names`), shown with the
        source-class recall (``src-recall(Shirt)``) and the backdoor's success rate (``ASR(->T-shirt/top)``).
    """
    total = f"/{num_rounds}" if num_rounds else ""
    head = f"[poisonlab] round {line['round']:>4}{total}"
    if line.get("diverged"):
        return f"{head}  DIVERGED: non-finite logits or loss, round not scored  {line['seconds']:6.2f}s"
    labels = {
        "source_recall": f"src-recall({source})" if source is not None else "src-recall",
        "asr": f"ASR(->{target})" if target is not None else "ASR",
    }
    extra = "".join(f"  {label} {line[key]:.3f}" for key, label in labels.items() if line.get(key) is not None)
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
    """Append one line per round, print a progress line and (optionally) write TensorBoard scalars.

    Parameters
    ----------
    out_dir : Path
        The run folder (Hydra's output directory).
    num_rounds : int
        For the ETA on the console.
    cfg : mapping, optional
        The run's resolved config: its dataset's class names and the attack's
        source / target classes name the classes on the console and in TensorBoard.
    tensorboard : bool
        Also write each round's scalars to ``out_dir / "tensorboard"``
        (:class:`server.tensorboard_log.TensorBoardLog`; needs the ``tensorboard`` package).
    append : bool
        Keep the lines already in ``metrics.jsonl`` (a resumed run) instead of starting it empty.
    """

    def __init__(
        self, out_dir: Path, num_rounds: int, *, cfg: Mapping[str, Any] | None = None, tensorboard: bool = False,
        append: bool = False,
    ) -> None:  # fmt: skip
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / METRICS_FILE
        if not append or not self.path.exists():
            self.path.write_text("")
        self.rounds_before = len([r for r in read_metrics(self.out_dir) if r["round"] > 0]) if append else 0
        self.num_rounds = num_rounds
        self.started = time.perf_counter()
        self.last = self.started
        self.round_seconds: list[float] = []
        cfg = cfg or {}
        self.names = attack_class_names(cfg)
        self.tensorboard = None
        if tensorboard:
            from server.tensorboard_log import TensorBoardLog

            self.tensorboard = TensorBoardLog(self.out_dir, run_class_names(cfg), run_description(cfg, self.out_dir))

    def record(self, line: dict[str, Any]) -> dict[str, Any]:
        """Stamp the round's wall time on ``line``, append it and print progress."""
        now = time.perf_counter()
        seconds = now - self.last
        self.last = now
        line = {"round": line.pop("round"), "seconds": round(seconds, 4), **line}
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(line)
        if line["round"] > 0:
            self.round_seconds.append(seconds)
            recent = self.round_seconds[-5:]
            eta = (self.num_rounds - self.rounds_before - len(self.round_seconds)) * sum(recent) / len(recent)
            print(progress_line(line, self.num_rounds, eta, **self.names), flush=True)
        elif line.get("diverged"):
            print("[poisonlab] round    0 (initial model)  DIVERGED: non-finite logits or loss", flush=True)
        else:
            print(f"[poisonlab] round    0 (initial model)  acc {line['accuracy']:.4f}", flush=True)
        return line

    def close(self) -> None:
        """Close the TensorBoard event file, if any."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def run_description(cfg: Mapping[str, Any], out_dir: Path) -> str:
    """What a run is, in a few Markdown lines: dataset, attack (and its classes), strategy, Hydra overrides."""
    names = attack_class_names(cfg)
    attack = (cfg.get("attack") or {}).get("name") or "none"
    if names:
        attack += " (" + " -> ".join(f"{role} {name}" for role, name in names.items()) + ")"
    parts = [
        f"dataset: {(cfg.get('dataset') or {}).get('name', '?')}",
        f"attack: {attack}",
        f"strategy: {(cfg.get('strategy') or {}).get('_target_', '?').rsplit('.', 1)[-1]}",
        f"seed: {cfg.get('seed', '?')}",
    ]
    overrides = Path(out_dir) / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        listed = yaml.safe_load(overrides.read_text()) or []
        parts.append("overrides: " + (" ".join(f"`{o}`" for o in listed) or "(defaults)"))
    return "  \n".join(parts)


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
    path = Path(out_dir) / SUMMARY_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, path)  # atomic: a reader never sees half a summary
    return summary


def class_legend(cfg: Mapping[str, Any], num_classes: int) -> list[str]:
    """Each class's legend entry: its name, with ``(source)`` / ``(target)`` on the attack's classes."""
    names, roles = run_class_names(cfg), {c: role for role, c in attack_classes(cfg).items()}
    return [class_label(names, c) + (f" ({roles[c]})" if c in roles else "") for c in range(num_classes)]


def write_plots(out_dir: Path, cfg: Mapping[str, Any] | None = None) -> list[Path]:
    """Accuracy / loss per round and per-class recall per round, as PNG files.

    The per-class lines are named after the dataset's classes, the attack's
    source and target marked, from ``cfg`` (default: the run's ``config.json``).
    """
    plt = pyplot()
    cfg = read_config(out_dir) if cfg is None else cfg
    roles = set(attack_classes(cfg).values())
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
    for c, label in enumerate(class_legend(cfg, len(recalls[0]))):
        ax.plot(rounds, [rec[c] for rec in recalls], label=label, linewidth=2.5 if c in roles else 1.5)
    ax.set(xlabel="round", ylabel="recall", title="Per-class recall", ylim=(0, 1.02))
    ax.legend(ncol=2, fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(Path(out_dir) / "per_class_recall.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
