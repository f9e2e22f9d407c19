"""The ``poisonlab`` command: compose ``conf/`` with Hydra, validate, run one federation.

Examples
--------
``poisonlab`` (paper A's Fashion-MNIST federation on the local Ray simulation),
``poisonlab federation.num_rounds=50 strategy=fedavg_weighted``,
``poisonlab -m seed=0,1,2`` (a sweep, one run folder per job),
``poisonlab resume=outputs/2026-12-02/14-13-22`` (continue an interrupted run).

:func:`prepare` and :func:`execute` are the one way a composed config becomes
a run; the command line (:func:`main`) and the Python API (:func:`poisonlab.run`)
both call them. The command line prepares each run in a short-lived child
process (:func:`prepare_apart`) and keeps only its resolved config and engine:
the runner process, which then only starts the federation and follows it,
never imports torch nor holds the run's objects (dataset, partitions, model),
so it stays small for the whole run (torch alone is about 0.3 GiB per process).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from scripts.console import Progress, SweepClock, summary_line, sweep_clock, sweep_size
from scripts.flower_run import RUN_LOG
from server.results import write_summary

if TYPE_CHECKING:  # building a run imports torch: done by prepare(), in a child process on the command line
    from scripts.build import Run

log = logging.getLogger("poisonlab")

#: what may be given with ``resume=``: where and how the run goes on, never what it computes
RESUME_OVERRIDES = ("resume", "engine", "output.verbose")

# Hydra's run folder and its .hydra record: a resumed run stays in its own folder and keeps how it was started
OmegaConf.register_new_resolver("poisonlab_run_dir", lambda resume, new: resume or new, replace=True)
OmegaConf.register_new_resolver("poisonlab_hydra_subdir", lambda resume: None if resume else ".hydra", replace=True)


@contextmanager
def run_logging(out_dir: Path, verbose: bool) -> Iterator[None]:
    """Log everything to ``<out_dir>/run.log``; on the console only poisonlab's warnings (all logs if ``verbose``).

    Python warnings are logged too (so library deprecation notices land in
    ``run.log``, not on the console). Handlers are removed on exit, so the jobs
    of a sweep (one process) each log to their own folder.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    root, ours = logging.getLogger(), logging.getLogger("poisonlab")
    to_file = logging.FileHandler(out_dir / RUN_LOG)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setFormatter(logging.Formatter("[poisonlab] %(levelname)s: %(message)s"))
    to_console.setLevel(logging.INFO if verbose else logging.WARNING)
    level = root.level
    # Hydra's own console handler on the root logger would print every library's INFO line
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]
    for handler in consoles:
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    root.addHandler(to_file)
    (root if verbose else ours).addHandler(to_console)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, handler in ((root, to_file), (root, to_console), (ours, to_console)):
            logger.removeHandler(handler)
        to_file.close()
        root.setLevel(level)
        for handler in consoles:
            root.addHandler(handler)


@dataclass(frozen=True)
class PreparedRun:
    """What the runner needs of a checked run to run it: its resolved config and its engine.

    The engines read only ``cfg`` of the run they are given (``run.cfg``).
    """

    cfg: dict[str, Any]
    engine: Any


class RunRefused(Exception):
    """The config is wrong or the data is missing (a ``ConfigError`` or ``DataMissingError`` while preparing)."""


def prepare(cfg: DictConfig, out_dir: str | Path) -> Run:
    """Check ``cfg`` completely and build its run for ``out_dir``; nothing is started or written.

    Raises
    ------
    scripts.config.ConfigError, common.data.DataMissingError
        When the config is wrong or the data is missing.
    """
    from scripts.build import build_run

    run = build_run(cfg)
    run.cfg["output_dir"] = str(Path(out_dir).resolve())
    return run


def prepare_resume(folder: str | Path, overrides: list[str] | None = None, engine: Any = None) -> Run:
    """Check that the run in ``folder`` can go on from its checkpoint and build it; nothing is started.

    The run's ``config.json`` is its config; ``engine`` (a composed ``engine``
    section) replaces its engine when the resumption runs elsewhere, and
    ``overrides`` (the command line's) may name only :data:`RESUME_OVERRIDES`.
    The ``summary.json`` of the interrupted attempt is removed: the resumed run
    writes its own.

    Raises
    ------
    scripts.config.ConfigError
        When ``folder`` is not a run folder, the run is complete, it has no
        checkpoint (it completed no round), the checkpoint was written by
        another config, or an override would change what the run computes.
    """
    from scripts.config import ConfigError
    from server.checkpoint import ResumeError, load_checkpoint

    folder = Path(folder).resolve()
    config_file, summary_file = folder / "config.json", folder / "summary.json"
    if not config_file.exists():
        raise ConfigError(f"resume={folder}: no config.json there; give the folder of a poisonlab run that started")
    changed = [o for o in overrides or [] if not o.lstrip("+~").startswith(RESUME_OVERRIDES)]
    if changed:
        raise ConfigError(
            f"resume={folder} runs that folder's config.json; {changed} would change what it computes "
            f"(only {list(RESUME_OVERRIDES[1:])} may be given): start a new run for another config"
        )
    if summary_file.exists() and json.loads(summary_file.read_text()).get("status") == "complete":
        raise ConfigError(f"resume={folder}: the run is complete (summary.json); there is nothing to resume")
    saved = json.loads(config_file.read_text())
    if engine is not None:
        saved["engine"] = OmegaConf.to_container(engine, resolve=True) if isinstance(engine, DictConfig) else engine
    saved["resume"] = str(folder)
    try:
        load_checkpoint(folder, saved)
    except ResumeError as err:
        raise ConfigError(f"resume={folder}: {err}") from None
    run = prepare(OmegaConf.create(saved), folder)
    summary_file.unlink(missing_ok=True)
    return run


def _prepared(build: Callable[[], Run]) -> tuple[str, Any]:
    """``build()``'s run as ``("ok", PreparedRun)``, or ``("refused", why)`` / ``("failed", traceback)``."""
    from common.data import DataMissingError
    from scripts.config import ConfigError

    try:
        run = build()
        return "ok", PreparedRun(run.cfg, run.engine)
    except (ConfigError, DataMissingError) as err:
        return "refused", str(err)
    except Exception:  # noqa: BLE001 (reported by the caller, with this traceback)
        return "failed", traceback.format_exc()


def _prepare_in_child(build: Callable[[], Run], conn: Any) -> None:
    """In the child of :func:`prepare_apart`: send back :func:`_prepared`'s answer."""
    answer = _prepared(build)
    try:
        conn.send(answer)
    except Exception:  # noqa: BLE001 (an engine that cannot be pickled)
        conn.send(("failed", traceback.format_exc()))
    conn.close()


def prepare_apart(build: Callable[[], Run]) -> PreparedRun:
    """Call ``build`` (e.g. ``lambda: prepare(cfg, out_dir)``) in a child process; the run's config and engine.

    The child imports torch and builds the run's objects, which go with it when
    it exits: this process keeps the resolved config and the engine only, the
    same ones ``build()`` made. Where processes cannot be forked, ``build`` runs
    here.

    Raises
    ------
    RunRefused
        When ``build`` raised a ``ConfigError`` or ``DataMissingError`` (its message).
    RuntimeError
        When ``build`` failed otherwise (with its traceback) or the child died.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        kind, payload = _prepared(build)
    else:
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_prepare_in_child, args=(build, send), name="poisonlab-prepare")
        child.start()
        send.close()
        try:
            kind, payload = receive.recv()
        except EOFError:
            child.join()
            raise RuntimeError(f"preparing the run failed: its process exited with code {child.exitcode}") from None
        finally:
            receive.close()
        child.join()
    if kind == "refused":
        raise RunRefused(payload)
    if kind == "failed":
        raise RuntimeError(f"preparing the run failed:\n{payload}")
    return payload


def execute(run: Run | PreparedRun, *, job: tuple[int, SweepClock] | None = None) -> dict[str, Any]:
    """Run a prepared ``run`` on its engine, showing progress; the run's ``summary.json``.

    Raises
    ------
    RuntimeError
        When the run did not complete (``summary.json`` then says why, when it got that far).
    """
    out_dir = Path(run.cfg["output_dir"])
    verbose = bool(run.cfg["output"]["verbose"])
    with run_logging(out_dir, verbose):
        print(f"[poisonlab] run folder: {out_dir}", flush=True)
        rounds = int(run.cfg["federation"]["num_rounds"])
        progress = Progress(rounds, live=False if verbose else None, job=job, cfg=run.cfg)
        try:
            run.engine.run(run, progress, verbose=verbose)
        except BaseException as err:
            progress.close()
            mark_unfinished(run, err)
            raise
        progress.close()
        summary = json.loads((out_dir / "summary.json").read_text())
        print(summary_line(summary), flush=True)
        return summary


def mark_unfinished(run: Run | PreparedRun, err: BaseException) -> None:
    """Write ``summary.json`` as ``failed`` (with the reason) when the run stopped before its ServerApp wrote one.

    An interrupted (Ctrl-C, ``kill``) or crashed run keeps every round it
    finished in ``metrics.jsonl``; its summary says it is incomplete, so no
    table averages it as if it were a result.
    """
    out_dir = Path(run.cfg["output_dir"])
    if (out_dir / "summary.json").exists():
        return
    interrupted = isinstance(err, KeyboardInterrupt | SystemExit)
    reason = "interrupted (Ctrl-C or SIGTERM)" if interrupted else f"{type(err).__name__}: {err}"
    fed = run.cfg["federation"]
    write_summary(out_dir, {"num_clients": fed["num_clients"], "clients_per_round": fed["clients_per_round"],
                            "num_rounds": fed["num_rounds"], "status": "failed", "reason": reason})  # fmt: skip
    print(f"[poisonlab] stopped: {reason}; summary.json marks the run failed", file=sys.stderr, flush=True)


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Run the composed config (one job of a sweep under ``-m``); exit 2 on a config error.

    The run is prepared in a child process (:func:`prepare_apart`); this process only runs and follows it.
    """
    hydra_cfg = HydraConfig.get()
    job = None
    if hydra_cfg.mode == RunMode.MULTIRUN:
        job = (int(hydra_cfg.job.num), sweep_clock(sweep_size(sys.argv[1:])))
    try:
        if cfg.get("resume"):
            if job is not None:
                raise RunRefused("resume= continues one run; it cannot be part of a sweep (-m)")
            task = list(hydra_cfg.overrides.task)
            engine = cfg.engine if any(o.lstrip("+~").startswith("engine") for o in task) else None
            run = prepare_apart(lambda: prepare_resume(cfg.resume, task, engine))
        else:
            run = prepare_apart(lambda: prepare(cfg, hydra_cfg.runtime.output_dir))
    except RunRefused as err:
        print(f"poisonlab: configuration error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    execute(run, job=job)


if __name__ == "__main__":
    main()
