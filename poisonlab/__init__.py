"""poisonlab from Python: compose a run with the same overrides as the command line, run it, get its summary.

Examples
--------
>>> import poisonlab
>>> result = poisonlab.run(["federation.num_rounds=3", "attack=label_flip"])  # doctest: +SKIP
>>> result["final_accuracy"], result["folder"]  # doctest: +SKIP
(0.8343, '/home/me/outputs/2026-12-02/14-13-22')

The run goes through the same checks and engines as ``poisonlab`` on the
command line (:func:`scripts.run.prepare`, :func:`scripts.run.execute`), so a bad override raises the same
:class:`ConfigError` before anything starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.data import DataMissingError
from scripts.config import ConfigError
from scripts.run import execute, prepare, prepare_resume

__all__ = ["ConfigError", "DataMissingError", "compose_config", "resume", "run"]


def compose_config(overrides: Sequence[str] = ()) -> Any:
    """The run config ``poisonlab <overrides>`` would compose (an OmegaConf ``DictConfig``, no ``hydra`` node).

    Raises
    ------
    ConfigError
        When an override names no group, option or key, or does not parse.
    """
    try:
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"overrides {list(overrides)}: {err}") from None
    return cfg


def _new_folder(root: Path) -> Path:
    """``root/<date>/<time>`` like the command line's run folders (suffixed when taken)."""
    now = datetime.now()
    folder = root / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    candidate, n = folder, 1
    while candidate.exists():
        candidate, n = folder.with_name(f"{folder.name}_{n}"), n + 1
    return candidate


def run(overrides: Sequence[str] = (), *, folder: str | Path | None = None) -> dict[str, Any]:
    """Run one federation composed from ``overrides``; its ``summary.json`` plus ``folder``.

    Parameters
    ----------
    overrides : sequence of str
        Hydra overrides, exactly as on the command line
        (``["strategy=krum", "attack=alie", "federation.num_rounds=5"]``).
    folder : path, optional
        The run folder (default: ``outputs/<date>/<time>`` under the working directory).

    Returns
    -------
    dict
        The run's summary (``status``, ``final_accuracy``, ``best_accuracy``, ...;
        see the README) with ``folder``, the run folder, added.

    Raises
    ------
    ConfigError
        On a bad override or value, before anything starts (as the command line).
    DataMissingError
        When the dataset is not on disk and cannot be downloaded.
    RuntimeError
        When the run did not complete.
    """
    cfg = compose_config(overrides)
    out_dir = Path(folder) if folder is not None else _new_folder(Path.cwd() / "outputs")
    prepared = prepare(cfg, out_dir)  # every check before the folder is made
    (out_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / ".hydra" / "config.yaml")
    (out_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    summary = execute(prepared)
    return {**summary, "folder": prepared.cfg["output_dir"]}


def resume(folder: str | Path, engine_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Continue the run in ``folder`` from its last completed round (``poisonlab resume=<folder>``).

    Parameters
    ----------
    folder : path
        A run folder whose run stopped before its end (its ``summary.json`` is
        ``failed`` or missing) after at least one round.
    engine_overrides : sequence of str
        Run it on another engine than it started on (``["engine=deployment", "engine.tls=false"]``);
        nothing else of the run's config can change.

    Returns
    -------
    dict
        The completed run's summary with ``folder`` added.

    Raises
    ------
    ConfigError
        When the folder has no checkpoint, is complete, or an override is not an engine one.
    """
    overrides = list(engine_overrides)
    engine = compose_config(overrides).engine if overrides else None
    prepared = prepare_resume(folder, overrides, engine)
    summary = execute(prepared)
    return {**summary, "folder": prepared.cfg["output_dir"]}
