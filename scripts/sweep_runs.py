"""The runs of a sweep: find the job folders of a multirun folder, read them, and judge each complete or not.

Runs
----
Every job folder under the given folder(s) that has a ``metrics.jsonl``, a
``config.json`` or a ``.hydra`` folder is one run (the last two alone: a job that
died before its first round). A run's condition is its Hydra overrides less
``seed`` (and ``hydra.*``); its seed comes from ``config.json``, else from the
overrides.

Only complete runs are averaged. A run is complete iff ``summary.json`` exists,
its ``status`` is ``"complete"``, no round of ``metrics.jsonl`` diverged
(``diverged: true``, or a non-finite accuracy or loss) and ``rounds_completed``,
the configured ``num_rounds`` and the number of round >= 1 lines of
``metrics.jsonl`` are equal. ``num_rounds`` missing from ``summary.json`` is read
from ``config.json`` (``federation.num_rounds``); an older ``summary.json``
without ``status`` counts as complete when its lines match that number; when
neither file tells it, the run is incomplete ("cannot tell the configured number
of rounds"). A ``rounds_completed`` missing from ``summary.json`` is not checked.
Every other run is excluded, with a status (``incomplete``, ``failed``,
``diverged``, ``unreadable``, or whatever other ``status`` its ``summary.json``
gives) and a one-line reason, e.g.
``incomplete: 7 of 20 rounds, no summary.json (the run did not finish)``,
``failed: <reason>``, ``diverged from round 3: <reason>``.

Numbers
-------
Each complete run is reduced to its last ``k`` rounds (``poisonlab-summarize
--last``, default 10: per-round attack metrics swing by +-0.3, Tolpegin et al.):

* accuracy, source / target / other recall and ASR: the plain mean over those
  rounds (rounds without the metric are left out);
* detection (``tpr``, ``fpr``, ``precision``): micro-averaged over the *scored*
  rounds among them, i.e. rounds of a detecting rule (``detects``) whose defense
  ran (``defense_active``) on an aggregated round (``skipped`` null):
  ``tpr = sum tp / sum (tp + fn)``, ``fpr = sum fp / sum (fp + tn)``,
  ``precision = sum tp / sum (tp + fp)``, each null when its denominator is 0 or
  no round was scored. Unscored rounds (a non-detecting rule such as Krum, a
  defense before its start round, a skipped round, a line without these keys
  from an older server) never count, whatever numbers they carry;
* ``active_rounds``: the number of scored rounds in the window (null for a rule
  that never detects).

See Also
--------
scripts.summarize : groups the runs into conditions and writes the tables and figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from server.results import attack_class_names, attack_classes, run_class_names

RATE_METRICS = ("accuracy", "source_recall", "target_recall", "other_recall", "asr")
#: privacy spent by the end of the run: the last round's value (cumulative), not a window mean
FINAL_METRICS = ("epsilon_max", "central_epsilon")
DETECTION_METRICS = ("tpr", "fpr", "precision")
METRICS = (*RATE_METRICS, *FINAL_METRICS, *DETECTION_METRICS)
COUNTS = ("tp", "fp", "fn", "tn")


@dataclass
class Run:
    """One job folder: what it was asked to run, what it wrote, and whether it may be averaged.

    Attributes
    ----------
    job : Path
        The job folder.
    condition : tuple of str
        Its Hydra overrides less ``seed`` and ``hydra.*``, sorted.
    seed : int or None
        From ``config.json``, else from the overrides.
    config : dict
        ``config.json`` (empty when missing).
    choices : dict
        Hydra's config-group choices (``strategy`` -> ``krum``, ...) from ``.hydra/hydra.yaml``.
    lines : list of dict
        The lines of ``metrics.jsonl``, round 0 included.
    summary : dict or None
        ``summary.json``; ``None`` when missing.
    problems : list of str
        Files that could not be parsed.
    status, reason : str
        ``"complete"`` and ``""``, or why the run is excluded (see :func:`run_status`).
    """

    job: Path
    condition: tuple[str, ...]
    seed: int | None
    config: dict[str, Any]
    choices: dict[str, str]
    lines: list[dict[str, Any]]
    summary: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    status: str = "complete"
    reason: str = ""

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """The lines of the federated rounds (round >= 1)."""
        return [x for x in self.lines if x["round"] >= 1]

    @property
    def label(self) -> str:
        """The condition as one string."""
        return condition_label(self.condition)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The names of its dataset's classes (from ``config.json``); None when the config names no known dataset."""
        return run_class_names(self.config)

    @property
    def attack_classes(self) -> dict[str, int]:
        """The attack's ``source`` / ``target`` class ids (keys present when the attack has them)."""
        return attack_classes(self.config)

    @property
    def attack_class_names(self) -> dict[str, str]:
        """The names of the attack's ``source`` / ``target`` classes, e.g. ``{"source": "Shirt", ...}``."""
        return attack_class_names(self.config)


def classes_label(names: dict[str, str]) -> str:
    """The attack's classes in a few words: ``Shirt -> T-shirt/top``, ``target Sandal``, or ``""`` for none."""
    if "source" in names and "target" in names:
        return f"{names['source']} -> {names['target']}"
    return " ".join(f"{role} {name}" for role, name in names.items())


def condition_label(condition: tuple[str, ...]) -> str:
    """The overrides of a condition joined by spaces, ``(defaults)`` when there are none."""
    return " ".join(condition) or "(defaults)"


def job_folders(folders: list[Path]) -> list[Path]:
    """Every folder under ``folders`` with a ``metrics.jsonl``, a ``config.json`` or a ``.hydra`` folder."""
    jobs = {
        path.parent
        for folder in folders
        for marker in ("metrics.jsonl", "config.json", ".hydra")
        for path in folder.rglob(marker)
    }
    return sorted(job for job in jobs if ".hydra" not in job.parts)


def read_json(path: Path, problems: list[str]) -> Any:
    """``path`` parsed as JSON; ``None`` when it is missing or unreadable (then noted in ``problems``)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        problems.append(f"{path.name} is not valid JSON ({err})")
        return None


def read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The lines of ``path`` parsed as JSON; the readable ones when one is not (then noted in ``problems``)."""
    lines = []
    for index, text in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError as err:
            problems.append(f"{path.name} line {index} is not valid JSON ({err})")
    return lines


def read_yaml(path: Path) -> Any:
    """``path`` parsed as YAML; ``None`` when it is missing."""
    return yaml.safe_load(path.read_text()) if path.exists() else None


def load_run(job: Path) -> Run:
    """Read one job folder and decide whether it is complete."""
    problems: list[str] = []
    overrides = read_yaml(job / ".hydra" / "overrides.yaml") or []
    config = read_json(job / "config.json", problems) or {}
    hydra = read_yaml(job / ".hydra" / "hydra.yaml") or {}
    seeds = [yaml.safe_load(o.split("=", 1)[1]) for o in overrides if o.startswith("seed=")]
    run = Run(
        job=job,
        condition=tuple(sorted(o for o in overrides if not o.startswith(("seed=", "hydra.")))),
        seed=config.get("seed", seeds[0] if seeds else None),
        config=config,
        choices=((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {},
        lines=read_jsonl(job / "metrics.jsonl", problems),
        summary=read_json(job / "summary.json", problems),
        problems=problems,
    )
    run.status, run.reason = run_status(run)
    return run


def load_runs(folders: list[Path]) -> list[Run]:
    """Every run under ``folders``, complete or not."""
    return [load_run(job) for job in job_folders(folders)]


def is_diverged(line: dict[str, Any]) -> bool:
    """Whether a round is marked diverged, or (older servers) has a non-finite accuracy or loss."""
    values = (line.get("accuracy"), line.get("loss"))
    return bool(line.get("diverged")) or any(isinstance(v, float) and not math.isfinite(v) for v in values)


def configured_rounds(run: Run) -> int | None:
    """``num_rounds`` from ``summary.json``, else ``federation.num_rounds`` from ``config.json``."""
    value = (run.summary or {}).get("num_rounds")
    if value is None:
        value = run.config.get("federation", {}).get("num_rounds")
    return None if value is None else int(value)


def diverged_reason(summary: dict[str, Any], diverged: list[int]) -> str:
    """``diverged from round <r>: <why>`` from ``summary.json``, else from the rounds marked diverged."""
    first = summary.get("first_diverged_round") or (diverged[0] if diverged else None)
    why = summary.get("reason") or (
        f"{len(diverged)} round(s) marked diverged in metrics.jsonl" if diverged else "no reason given"
    )
    return f"diverged from round {first}: {why}" if first is not None else f"diverged: {why}"


def run_status(run: Run) -> tuple[str, str]:
    """``("complete", "")``, or the run's status and a one-line reason why it is not averaged."""
    done, configured = len(run.rounds), configured_rounds(run)
    if run.problems:
        return "unreadable", "unreadable: " + "; ".join(run.problems)
    if run.summary is None:
        total = "?" if configured is None else configured
        return "incomplete", f"incomplete: {done} of {total} rounds, no summary.json (the run did not finish)"
    status = run.summary.get("status")
    if status not in (None, "complete", "diverged"):
        return str(status), f"{status}: {run.summary.get('reason') or 'no reason given'}"
    diverged = [x["round"] for x in run.lines if is_diverged(x)]
    if status == "diverged" or diverged:
        return "diverged", diverged_reason(run.summary, diverged)
    if configured is None:
        return "incomplete", "incomplete: cannot tell the configured number of rounds"
    recorded = run.summary.get("rounds_completed", done)
    if not done == recorded == configured:
        said = f", summary.json says {recorded}" if recorded != done else ""
        return "incomplete", f"incomplete: {done} of {configured} rounds in metrics.jsonl{said}"
    return "complete", ""


def number(line: dict[str, Any], key: str) -> float | None:
    """``line[key]`` when it is a finite number, else ``None``."""
    value = line.get(key)
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def window_mean(rounds: list[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over ``rounds``, leaving out rounds without a value."""
    values = [v for x in rounds if (v := number(x, key)) is not None]
    return sum(values) / len(values) if values else None


def last_value(rounds: list[dict[str, Any]], key: str) -> float | None:
    """The last round's value of a cumulative figure (e.g. ``epsilon_max``), ``None`` when no round has one."""
    values = [v for x in rounds if (v := number(x, key)) is not None]
    return values[-1] if values else None


def is_scored(line: dict[str, Any]) -> bool:
    """Whether a round's detection was scored: a detecting rule, its defense active, the round aggregated."""
    flags = line.get("detects") and line.get("defense_active") and line.get("skipped") is None
    return bool(flags) and all(number(line, c) is not None for c in COUNTS)


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, ``None`` when the denominator is 0."""
    return numerator / denominator if denominator else None


def detection(rounds: list[dict[str, Any]], detects: bool) -> dict[str, float | None]:
    """Micro-averaged ``tpr``, ``fpr``, ``precision`` over the scored ``rounds``, and their number.

    Parameters
    ----------
    rounds : list of dict
        The window of rounds (the run's last ``k``).
    detects : bool
        Whether the run's rule detects at all; ``active_rounds`` is ``None`` when not.
    """
    scored = [x for x in rounds if is_scored(x)]
    tp, fp, fn, tn = (sum(x[c] for x in scored) for c in COUNTS)
    return {
        "tpr": ratio(tp, tp + fn),
        "fpr": ratio(fp, fp + tn),
        "precision": ratio(tp, tp + fp),
        "active_rounds": len(scored) if detects else None,
    }


def run_metrics(run: Run, k: int) -> dict[str, float | None]:
    """A complete run reduced to its last ``k`` rounds: every metric and ``active_rounds``."""
    window = run.rounds[-k:]
    values = {metric: window_mean(window, metric) for metric in RATE_METRICS}
    values.update({metric: last_value(run.rounds, metric) for metric in FINAL_METRICS})
    values.update(detection(window, any(x.get("detects") for x in run.rounds)))
    return values
