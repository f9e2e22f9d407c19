"""What a run shows on the console: its folder, one live progress line, warnings, the final summary.

Flower's, Ray's and the libraries' logs go to ``run.log`` in the run folder
(``output.verbose=true`` shows them too). On a terminal the progress line is
rewritten in place each round (round i/N, accuracy, the attack's key metric,
seconds per round, ETA); piped to a file it is one line per round. In a sweep
every line starts with ``job i/N`` and the ETA covers the whole sweep.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from hydra.core.override_parser.overrides_parser import OverridesParser

from server.results import attack_class_names, progress_line


def sweep_size(arguments: list[str]) -> int | None:
    """How many jobs Hydra's basic sweeper makes of these command-line overrides (``None`` if unknown).

    The basic sweeper runs the cartesian product of every sweep override
    (``seed=0,1,2 strategy=krum,median`` is 6 jobs).
    """
    overrides = [a for a in arguments if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports malformed overrides itself
        return None
    size = 1
    for override in parsed:
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return None  # ranges and intervals belong to other sweepers
            size *= len(list(override.sweep_string_iterator()))
    return size


@dataclass
class SweepClock:
    """Jobs done and time spent in one sweep (one process runs every job of Hydra's basic launcher)."""

    total: int | None
    started: float = field(default_factory=time.monotonic)
    job_seconds: list[float] = field(default_factory=list)

    def eta(self, job: int, job_done_fraction: float) -> float | None:
        """Seconds left for the whole sweep, from the mean job time so far (this job counted fractionally)."""
        if not self.total:
            return None
        done = len(self.job_seconds) + job_done_fraction
        if done <= 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / done * (self.total - done)


_SWEEP: SweepClock | None = None


def sweep_clock(total: int | None) -> SweepClock:
    """This process's sweep clock (made on the first job)."""
    global _SWEEP
    if _SWEEP is None:
        _SWEEP = SweepClock(total)
    return _SWEEP


class Progress:
    """The live progress of one run, fed one ``metrics.jsonl`` row per round.

    Parameters
    ----------
    num_rounds : int
        Rounds the run will have.
    stream : TextIO
        Where to write (standard output by default).
    live : bool, optional
        Rewrite one line in place (default: when ``stream`` is a terminal).
    job : tuple of (int, SweepClock), optional
        The job's number (from 0) and its sweep's clock, in a sweep.
    cfg : dict, optional
        The resolved run config, for the names of the attack's source and target classes.
    """

    def __init__(
        self, num_rounds: int, stream: TextIO | None = None, *, live: bool | None = None,
        job: tuple[int, SweepClock] | None = None, cfg: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.num_rounds = num_rounds
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.job = job
        self.class_names = attack_class_names(cfg) if cfg else {}
        self.round_seconds: list[float] = []
        self.started = time.monotonic()
        self._open = False

    def prefix(self) -> str:
        """``job i/N`` in a sweep, else nothing."""
        if self.job is None:
            return ""
        num, clock = self.job
        return f"job {num + 1}/{clock.total or '?'} "

    def __call__(self, row: dict[str, Any]) -> None:
        """Show the round ``row`` (a ``metrics.jsonl`` line)."""
        if row["round"] == 0:
            return  # the initial model's evaluation is start-up; shown in the first round's line
        self.round_seconds.append(float(row["seconds"]))
        recent = self.round_seconds[-5:]
        eta = (self.num_rounds - len(self.round_seconds)) * statistics.fmean(recent)
        if self.job is not None:
            eta = self.job[1].eta(self.job[0], len(self.round_seconds) / self.num_rounds) or eta
        text = progress_line(row, self.num_rounds, eta, **self.class_names).replace(
            "[poisonlab] ", "[poisonlab] " + self.prefix(), 1
        )
        if self.live:
            self.stream.write("\r\033[K" + text)
            self._open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live line (call once the run is over, before printing anything else)."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
        if self.job is not None:
            self.job[1].job_seconds.append(time.monotonic() - self.started)


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the end of a run: status, final and best accuracy, privacy, seconds per round."""
    status = summary.get("status", "?")
    parts = [f"[poisonlab] {status}"]
    if summary.get("reason"):
        parts.append(f"({summary['reason']})")
    if summary.get("final_accuracy") is not None:
        parts.append(f"final acc {summary['final_accuracy']:.4f}")
        parts.append(f"best {summary['best_accuracy']:.4f} (round {summary['best_round']})")
    if summary.get("final_epsilon_max") is not None:
        parts.append(f"eps {summary['final_epsilon_max']:.2f}")
    if summary.get("final_central_epsilon") is not None:
        parts.append(f"central eps {summary['final_central_epsilon']:.2f}")
    if summary.get("seconds_per_round_median") is not None:
        parts.append(f"{summary['seconds_per_round_median']:.2f} s/round")
    parts.append(f"{summary.get('rounds_completed', 0)}/{summary.get('num_rounds', '?')} rounds")
    return "  ".join(parts)
