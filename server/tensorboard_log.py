"""TensorBoard scalars of one run, per round (``output.tensorboard=true``): ``<run folder>/tensorboard/``.

Each round's line of ``metrics.jsonl`` becomes one scalar per metric it holds,
at step = round (round 0: the initial model's scores):

==========================  ==============================================================
tag                         from the line
==========================  ==============================================================
``test/accuracy``,          ``accuracy``, ``loss`` (central evaluation of the global model)
``test/loss``
``per_class_recall/<name>`` ``per_class_recall``, one tag per class, named after the class
``train/loss``              ``train_loss`` (mean local training loss of the valid replies)
``attack/<key>``            ``source_recall``, ``target_recall``, ``other_recall``, ``asr``
``detection/<key>``         ``tpr``, ``fpr``, ``precision`` (rounds whose detection was scored)
``clients/<key>``           how many clients were ``flagged``, ``excluded``, ``rejected``,
                            ``failed``, ``withheld`` (rounds >= 1)
``privacy/<key>``           ``epsilon_max`` (DP-SGD), ``central_epsilon`` (central DP)
``leakage/<key>``           ``psnr_median``, ``ssim_mean``, ``label_accuracy`` of the round's
                            gradient-inversion attack, when attempted
``time/seconds_per_round``  ``seconds`` (rounds >= 1)
==========================  ==============================================================

A value is written only when the line holds a finite number: a diverged round
(every score null) writes no score, an infinite epsilon (no noise) none, a
rule that does not detect no ``detection/*``; nothing is ever written as a
stand-in 0. The events are flushed after every round, so a run that dies keeps
every round it finished, as ``metrics.jsonl`` does.

``tensorboard --logdir multirun/<sweep>`` shows every job of a sweep as its own
run, named by its folder (``<job>/tensorboard``): TensorBoard names a run by
the path, relative to ``--logdir``, of the folder holding its event files. The
run's dataset, attack classes and Hydra overrides are written once as text
(``run``, TensorBoard's Text tab) to tell the runs apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: the sub-folder of the run folder that holds the event files
TENSORBOARD_DIR = "tensorboard"

INSTALL_HINT = 'pip install -e ".[tensorboard]"'

_SCORES = (
    ("test/accuracy", "accuracy"),
    ("test/loss", "loss"),
    ("train/loss", "train_loss"),
    ("attack/source_recall", "source_recall"),
    ("attack/target_recall", "target_recall"),
    ("attack/other_recall", "other_recall"),
    ("attack/asr", "asr"),
    ("detection/tpr", "tpr"),
    ("detection/fpr", "fpr"),
    ("detection/precision", "precision"),
    ("privacy/epsilon_max", "epsilon_max"),
    ("privacy/central_epsilon", "central_epsilon"),
)
_COUNTS = ("flagged", "excluded", "rejected", "failed", "withheld")
_LEAKAGE = ("psnr_median", "ssim_mean", "label_accuracy")


class TensorBoardMissing(ImportError):
    """``output.tensorboard=true`` but the ``tensorboard`` package is not installed."""


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, imported now.

    Raises
    ------
    TensorBoardMissing
        When the ``tensorboard`` package is missing, naming the command that installs it.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise TensorBoardMissing(
            f"output.tensorboard=true needs the tensorboard package: {INSTALL_HINT} "
            f"(or set output.tensorboard=false). ({err})"
        ) from None
    return SummaryWriter


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def scalars(line: Mapping[str, Any], class_names: Sequence[str] | None = None) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` line, tag -> value (finite values only).

    Parameters
    ----------
    line : mapping
        One round's line, as :class:`server.results.RunRecorder` writes it.
    class_names : sequence of str, optional
        The dataset's class names, for the ``per_class_recall/<name>`` tags
        (class ids when omitted).
    """
    out: dict[str, float] = {}
    for tag, key in _SCORES:
        if (value := _finite(line.get(key))) is not None:
            out[tag] = value
    for c, recall in enumerate(line.get("per_class_recall") or []):
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        if (value := _finite(recall)) is not None:
            out[f"per_class_recall/{name}"] = value
    leakage = line.get("leakage") or {}
    for key in _LEAKAGE:
        if (value := _finite(leakage.get(key))) is not None:
            out[f"leakage/{key}"] = value
    if line.get("round", 0) > 0:
        for key in _COUNTS:
            if isinstance(line.get(key), list | dict):
                out[f"clients/{key}"] = float(len(line[key]))
        if (value := _finite(line.get("seconds"))) is not None:
            out["time/seconds_per_round"] = value
    return out


class TensorBoardLog:
    """One run's TensorBoard event files: one scalar per metric and round.

    Parameters
    ----------
    out_dir : Path
        The run folder; the event files go to ``out_dir / "tensorboard"``.
    class_names : sequence of str, optional
        The dataset's class names (for ``per_class_recall/<name>``).
    description : str, optional
        Markdown written once as the text ``run`` (what the run is).

    Raises
    ------
    TensorBoardMissing
        When the ``tensorboard`` package is missing.
    """

    def __init__(self, out_dir: Path, class_names: Sequence[str] | None = None, description: str | None = None):
        self.log_dir = Path(out_dir) / TENSORBOARD_DIR
        self.class_names = list(class_names) if class_names is not None else None
        self.writer = summary_writer_class()(log_dir=str(self.log_dir))
        if description:
            self.writer.add_text("run", description, global_step=0)
            self.writer.flush()

    def write(self, line: Mapping[str, Any]) -> dict[str, float]:
        """Write the scalars of one round's line (step = its round), flush, and return them."""
        values = scalars(line, self.class_names)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=int(line["round"]))
        self.writer.flush()
        return values

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
