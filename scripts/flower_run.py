"""How every poisonlab federation runs through Flower: its own SuperLink, ``flwr run``, follow, stop.

Both engines take Flower's supported path (``flwr run`` against a SuperLink)
and differ only in the SuperLink they start: :class:`scripts.engines.Simulation`
starts it with ``--simulation`` (Flower's simulation runtime then runs the
ServerApp and one virtual SuperNode per client on Ray, in one process it
spawns), :class:`scripts.engines.LocalDeployment` starts it plain and adds one
``flower-supernode`` process per client.

A :class:`FlowerSession` belongs to one run folder and keeps everything of
Flower's there: its state and app cache (``FLWR_HOME``) and every process's
output live in ``<run folder>/flower/``; Flower's log of the run (the
ServerApp's and the simulation's) is appended to ``<run folder>/run.log`` when
the run ends. It submits a one-file app (``pyproject.toml`` naming
poisonlab's ServerApp and ClientApp, with ``--disable-runtime-dependency-installation``),
so the apps run from the installed poisonlab, never from a copy of a source
tree, and submission does not walk the checkout. Every process it starts is
stopped when it exits, also on an error or Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from common.runtime import CONFIG_KEY

log = logging.getLogger("poisonlab.flower")

CONNECTION = "poisonlab"
FLOWER_FOLDER = "flower"
RUN_LOG = "run.log"
# While summary.json is absent the run is followed through metrics.jsonl (cheap) and its status is asked of
# the SuperLink only this often (each `flwr ls` is a Python start-up, about 1 s of a core).
STATUS_EVERY_S = 15.0


def flower_bin(name: str) -> str:
    """A console script installed beside this Python (the project's environment)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"{name} not found beside {sys.executable}; install poisonlab (flwr[simulation]==1.41.0)"
        )
    return str(path)


def free_port(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections (fail early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


class ProcessGroup:
    """Processes started for one run, each in its own session, stopped together (SIGTERM, then SIGKILL).

    Stopping signals each process's whole process group, so what a process
    spawned (the SuperLink's ServerApp or simulation process, Ray's workers)
    goes with it.
    """

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir, self.env = log_dir, env
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start ``argv`` with its output in ``<log_dir>/<name>.log``."""
        with (self.log_dir / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.log_dir, start_new_session=True
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds."""
        for _, proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # also children that outlived their parent
            proc.wait()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def superlink_argv(host: str, port: int, *, simulation: bool) -> list[str]:
    """The SuperLink's command line: one port for its Runtime, Control and Fleet APIs; no run-time installs.

    ``simulation``: Flower's simulation runtime runs each submitted run (ServerApp
    and virtual SuperNodes on Ray) instead of waiting for SuperNode processes.
    """
    argv = [flower_bin("flower-superlink"), "--insecure", "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation"]  # fmt: skip
    return [*argv, "--simulation"] if simulation else argv


def app_pyproject() -> str:
    """The ``pyproject.toml`` of the app ``flwr run`` submits: poisonlab's two apps and its run config key."""
    try:
        installed = version("poisonlab")
    except PackageNotFoundError:
        raise RuntimeError("poisonlab is not installed in this environment: pip install -e . first") from None
    return (
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "poisonlab"\nversion = "{installed}"\n'
        'description = "poisonlab federation (apps loaded from the installed poisonlab)"\n'
        'license = "Apache-2.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "poisonlab"\n\n'
        '[tool.flwr.app.components]\nserverapp = "scripts.apps:server_app"\nclientapp = "scripts.apps:client_app"\n\n'
        f'[tool.flwr.app.config]\n{CONFIG_KEY} = ""\n'
    )


class FlowerSession:
    """One run's SuperLink (and SuperNodes), its submission with ``flwr run``, and its end.

    Parameters
    ----------
    out_dir : Path
        The run folder; Flower's state and logs go to ``out_dir/flower``.
    host : str
        Address the SuperLink listens on.
    port : int
        The SuperLink's port (its Runtime, Control and Fleet APIs share it).
    env : dict, optional
        Extra environment for every process started (e.g. thread counts).
    """

    def __init__(self, out_dir: Path, *, host: str, port: int, env: dict[str, str] | None = None) -> None:
        self.out_dir = Path(out_dir).resolve()
        self.folder = self.out_dir / FLOWER_FOLDER
        self.home = self.folder / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{host}:{port}"\ninsecure = true\n'
        )
        self.env = {
            **os.environ,
            **(env or {}),
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.group = ProcessGroup(self.folder, self.env)
        self.link: subprocess.Popen | None = None

    def __enter__(self) -> FlowerSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.group.stop()
        log.info("stopped every process of the run")

    def start_superlink(self, *, simulation: bool) -> subprocess.Popen:
        """Start the SuperLink (``--simulation``: Flower's simulation runtime) and wait until it listens."""
        self.link = self.group.start("superlink", superlink_argv(self.host, self.port, simulation=simulation))
        wait_for_port(self.host, self.port, 60, self.link)
        log.info("SuperLink listening on %s:%d (simulation=%s)", self.host, self.port, simulation)
        return self.link

    def flwr(self, args: list[str], timeout: float = 120) -> dict[str, Any]:
        """Run a ``flwr`` CLI command against this session's SuperLink; its JSON answer."""
        out = subprocess.run(
            [flower_bin("flwr"), *args, "--format", "json"], env=self.env, capture_output=True, text=True,
            timeout=timeout, cwd=self.folder,
        )  # fmt: skip
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({out.returncode}): {out.stdout}\n{out.stderr}") from None

    def submit(self, cfg: dict[str, Any], federation_config: dict[str, Any] | None = None) -> int:
        """Submit ``cfg`` (the resolved poisonlab config) as a Flower run; its run id."""
        app = self.folder / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(app_pyproject())
        run_config = self.folder / "run-config.toml"
        run_config.write_text(f"{CONFIG_KEY} = {json.dumps(json.dumps(cfg))}\n")
        args = ["run", str(app), CONNECTION, "--run-config", str(run_config)]
        if federation_config:
            args += ["--federation-config", " ".join(f"{k}={_toml(v)}" for k, v in federation_config.items())]
        submitted = self.flwr(args)
        if not submitted.get("success", False) or "run-id" not in submitted:
            raise RuntimeError(f"flwr run was refused: {submitted}")
        log.info("submitted run %s", submitted["run-id"])
        return int(submitted["run-id"])

    def status(self, run_id: int) -> str:
        """The run's status as the SuperLink reports it (e.g. ``running``, ``finished:completed``)."""
        runs = self.flwr(["ls", CONNECTION, "--run-id", str(run_id)]).get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""

    def wait(self, run_id: int, timeout: float, on_round: Callable[[dict[str, Any]], None]) -> str:
        """Follow ``metrics.jsonl`` (``on_round`` per new round) until the run finishes; its final status.

        Raises
        ------
        RuntimeError
            When the SuperLink exits before the run finished.
        TimeoutError
            When the run has not finished after ``timeout`` seconds.
        """
        metrics = self.out_dir / "metrics.jsonl"
        summary = self.out_dir / "summary.json"
        deadline = time.monotonic() + timeout
        seen, status, asked = 0, "", 0.0
        while time.monotonic() < deadline:
            seen = _follow(metrics, seen, on_round)
            if self.link is not None and self.link.poll() is not None:
                raise RuntimeError(f"the SuperLink exited ({self.link.returncode}); see {self.folder}/superlink.log")
            now = time.monotonic()
            if summary.exists() or now - asked >= STATUS_EVERY_S:
                asked, status = now, self.status(run_id)
                if status.startswith("finished"):
                    break
            time.sleep(0.5)
        _follow(metrics, seen, on_round)
        log.info("run %d: %s", run_id, status)
        if not status.startswith("finished"):
            raise TimeoutError(f"run {run_id} did not finish within engine.timeout={timeout}s (status {status!r})")
        return status

    def save_log(self, run_id: int) -> Path:
        """Append Flower's log of the run (ServerApp, simulation, Ray) to ``<run folder>/run.log``."""
        out = subprocess.run(
            [flower_bin("flwr"), "log", str(run_id), CONNECTION, "--show"], env=self.env, capture_output=True,
            text=True, timeout=120, cwd=self.folder,
        )  # fmt: skip
        path = self.out_dir / RUN_LOG
        with path.open("a") as log:
            log.write(f"\n===== Flower's log of run {run_id} (flwr log) =====\n{out.stdout}{out.stderr}")
        return path

    def stream_log(self, run_id: int) -> None:
        """Show Flower's log of the run on this process's console while it runs (``output.verbose``)."""
        proc = subprocess.Popen(
            [flower_bin("flwr"), "log", str(run_id), CONNECTION, "--stream"], env=self.env, cwd=self.folder,
            start_new_session=True,
        )  # fmt: skip
        self.group.procs.append(("flwr-log", proc))

    def run(
        self, cfg: dict[str, Any], *, timeout: float, on_round: Callable[[dict[str, Any]], None],
        federation_config: dict[str, Any] | None = None, verbose: bool = False,
    ) -> None:  # fmt: skip
        """Submit ``cfg``, follow it to its end, keep Flower's log; raise unless it completed with a summary."""
        run_id = self.submit(cfg, federation_config)
        if verbose:
            self.stream_log(run_id)
        try:
            status = self.wait(run_id, timeout, on_round)
        finally:
            self.save_log(run_id)
        if status != "finished:completed" or not (self.out_dir / "summary.json").exists():
            raise RuntimeError(f"run {run_id} ended with status {status!r}; see {self.out_dir / RUN_LOG}")


def _follow(metrics: Path, seen: int, on_round: Callable[[dict[str, Any]], None]) -> int:
    """Hand the complete rounds appended to ``metrics.jsonl`` since ``seen`` lines to ``on_round``."""
    if not metrics.exists():
        return seen
    rows = metrics.read_text().split("\n")[:-1]  # a line still being written has no newline yet
    for row in rows[seen:]:
        on_round(json.loads(row))
    return max(seen, len(rows))


def _toml(value: Any) -> str:
    """A value in TOML's syntax for ``--federation-config`` (strings quoted, booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
