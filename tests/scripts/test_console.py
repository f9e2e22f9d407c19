"""The console: sweep sizes from the command line, the live progress line, the final summary line, logging."""

from __future__ import annotations

import io
import logging
import time
import warnings

import pytest

from scripts.console import Progress, SweepClock, summary_line, sweep_size
from scripts.run import run_logging


def row(r: int, seconds: float, accuracy: float = 0.8) -> dict:
    return {"round": r, "seconds": seconds, "accuracy": accuracy, "loss": 0.5}


@pytest.mark.parametrize(
    ("argv", "jobs"),
    [
        (["seed=0,1,2"], 3),
        (["seed=0,1,2", "strategy=krum,median", "federation.num_rounds=5"], 6),
        (["-m", "attack=none,alie", "seed=range(3)"], 6),
        (["client.lr=interval(0.001,0.1)"], None),  # an interval belongs to other sweepers (unknown size)
        (["federation.num_rounds=5"], 1),
        (["seed=choice(0,1)", "dp=off,opacus", "--multirun"], 4),
    ],
)
def test_sweep_size_is_the_product_of_the_discrete_sweeps(argv, jobs):
    assert sweep_size(argv) == jobs


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_is_rewritten_in_place_with_the_eta():
    out = Tty()
    progress = Progress(4, out)
    progress(row(0, 9.0))  # start-up: not shown
    progress(row(1, 2.0))
    progress(row(2, 4.0))
    progress.close()
    text = out.getvalue()
    assert text.count("\r\033[K") == 2 and text.endswith("\n") and text.count("\n") == 1
    first, second = text.split("\r\033[K")[1:]
    assert "round    1/4" in first and "ETA      6s" in first  # 3 rounds left x 2 s
    assert "round    2/4" in second and "ETA      6s" in second  # 2 left x mean(2, 4)


def test_piped_output_gets_one_line_per_round():
    out = io.StringIO()
    progress = Progress(2, out)
    for r in range(3):
        progress(row(r, 1.0))
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[poisonlab] round    1/2")


def test_a_sweep_job_says_which_job_and_the_sweeps_eta():
    clock = SweepClock(total=3, started=time.monotonic() - 30.0)  # the sweep started 30 s ago
    clock.job_seconds.append(20.0)  # job 0 is done
    out = io.StringIO()
    progress = Progress(2, out, job=(1, clock))
    progress(row(1, 5.0))
    line = out.getvalue()
    assert line.startswith("[poisonlab] job 2/3 round    1/2")
    # 1.5 jobs of 3 done in 30 s: 1.5 jobs left take 30 s more (the sweep's ETA, not this run's 5 s)
    eta = float(line.rsplit("ETA", 1)[1].strip().rstrip("s"))
    assert eta == pytest.approx(30.0, abs=2.0)


def test_the_summary_line_names_status_accuracy_privacy_and_rounds():
    line = summary_line(
        {"status": "complete", "final_accuracy": 0.8123, "best_accuracy": 0.83, "best_round": 4,
         "final_epsilon_max": 3.21, "seconds_per_round_median": 2.5, "rounds_completed": 5, "num_rounds": 5}
    )  # fmt: skip
    assert line == ("[poisonlab] complete  final acc 0.8123  best 0.8300 (round 4)  eps 3.21  2.50 s/round  5/5 rounds")
    diverged = summary_line({"status": "diverged", "reason": "round 3 diverged", "rounds_completed": 3})
    assert diverged.startswith("[poisonlab] diverged  (round 3 diverged)") and "final acc" not in diverged


def test_run_logging_keeps_library_logs_and_warnings_off_the_console(tmp_path, capsys):
    with run_logging(tmp_path, verbose=False):
        logging.getLogger("flwr.something").info("a library line")
        warnings.warn("a library deprecation", DeprecationWarning, stacklevel=1)
        logging.getLogger("poisonlab.engine").warning("a warning that matters")
    err = capsys.readouterr().err
    assert "a warning that matters" in err and "library" not in err
    log = (tmp_path / "run.log").read_text()
    assert "a library line" in log and "a library deprecation" in log and "a warning that matters" in log
    logging.getLogger("flwr.something").warning("after the run")
    assert "after the run" not in (tmp_path / "run.log").read_text()  # handlers removed


def test_a_console_handler_already_on_the_root_logger_is_quiet_during_the_run_and_restored(tmp_path, capsys):
    root = logging.getLogger()
    hydras = logging.StreamHandler()  # what Hydra's logging config puts on the root logger
    root.addHandler(hydras)
    try:
        with run_logging(tmp_path, verbose=False):
            logging.getLogger("flwr").info("a library line")
        assert "a library line" not in capsys.readouterr().err
        assert hydras in root.handlers
    finally:
        root.removeHandler(hydras)


def test_verbose_shows_library_logs_on_the_console(tmp_path, capsys):
    with run_logging(tmp_path, verbose=True):
        logging.getLogger("ray.something").info("a library line")
    assert "a library line" in capsys.readouterr().err
