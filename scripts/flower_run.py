"""How every poisonlab federation runs through Flower: its own SuperLink, ``flwr run``, follow, stop.

Every engine takes Flower's supported path (``flwr run`` against a SuperLink)
and they differ only in the SuperLink they start: :class:`scripts.engines.Simulation`
starts it with ``--simulation`` (Flower's simulation runtime then runs the
ServerApp and one virtual SuperNode per client on Ray, in one process it
spawns), :class:`scripts.engines.LocalDeployment` starts it plain and adds one
``flower-supernode`` process per client; :class:`scripts.engines.RemoteFederation`
starts none and submits to a SuperLink that is already running (an *attached*
session).

A :class:`FlowerSession` belongs to one run folder and keeps everything of
Flower's there: its state and app cache (``FLWR_HOME``) and every process's
output live in ``<run folder>/flower/``; Flower's log of the run (the
ServerApp's, the simulation's, Ray's) streams into ``flower/stream.log`` while
it runs and is appended whole to ``<run folder>/run.log`` at its end. It
submits a one-file app (``pyproject.toml`` naming poisonlab's ServerApp and
ClientApp, with ``--disable-runtime-dependency-installation``), so the apps
run from the installed poisonlab, never from a copy of a source tree, and
submission does not walk the checkout. Every process it starts is stopped
when it exits, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from common.runtime import CONFIG_KEY
from common.text import strip_ansi
from scripts.certificates import TlsFiles

log = logging.getLogger("poisonlab.flower")

CONNECTION = "poisonlab"
# The ServerApp writes summary.json last; Flower then spends seconds shutting Ray and the run down. The engine
# waits this long for that to end by itself (and Flower's last log lines) before it stops every process.
FINISH_GRACE_S = 1.0
# In the environment of every process a run starts (and so of their children): which run it belongs to.
RUN_MARK = "POISONLAB_RUN"
FLOWER_FOLDER = "flower"
RUN_LOG = "run.log"


def flower_bin(name: str) -> str:
    """A console script installed beside this Python (the project's environment)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"{name} not found beside {sys.executable}; install poisonlab (flwr[simulation]==1.41.0)"
        )
    return str(path)


def write_connection(home: Path, address: str, ca: Path | None) -> None:
    """Name the SuperLink at ``address`` the default connection of the ``flwr`` CLI whose ``FLWR_HOME`` is ``home``.

    ``ca``: trust this CA certificate (HTTPS); ``None``: plain, insecure connection.
    """
    trust = "insecure = true" if ca is None else f"root-certificates = {json.dumps(str(ca))}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{trust}\n'
    )


def flower_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for Flower's processes and CLI: ``FLWR_HOME``, no update check, this venv first."""
    return {
        **os.environ,
        **(extra or {}),
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def register_keys(public_keys: list[Path], env: dict[str, str], cwd: Path, *, already_ok: bool = False) -> None:
    """Register SuperNode public keys with the SuperLink of ``env``'s default connection (one process for all).

    Runs ``flwr supernode register <key> poisonlab`` for each key in one Python
    process. ``already_ok``: a key the SuperLink already holds (Flower: "Public
    key already in use", e.g. after a restart on a persistent ``--database``)
    counts as registered.

    Raises
    ------
    RuntimeError
        When a key cannot be registered, with Flower's output.
    """
    script = (
        "import sys\nimport click\nfrom flwr.cli.app import app\n"
        "already_ok = sys.argv[1] == '1'\n"
        "for key in sys.argv[2:]:\n"
        "    try:\n"
        f"        app(['supernode', 'register', key, {CONNECTION!r}], standalone_mode=False)\n"
        "    except click.ClickException as err:\n"
        "        if not (already_ok and 'already in use' in str(err).lower()):\n"
        "            raise\n"
        "        print(f'{key}: already registered')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "1" if already_ok else "0", *map(str, public_keys)], env=env,
        capture_output=True, text=True, timeout=60 + 5 * len(public_keys), cwd=cwd,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"registering SuperNode keys failed ({out.returncode}): {out.stdout}\n{out.stderr}")


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
    spawned (the SuperLink's ServerApp or simulation process) goes with it.
    Ray starts some of its processes in sessions of their own; every process
    started here carries ``POISONLAB_RUN=<id>`` in its environment, which its
    descendants inherit, so whatever is still alive with that mark is killed
    last (Linux: read from ``/proc``).
    """

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.mark = f"{log_dir.resolve()}:{os.getpid()}:{time.time_ns()}"
        self.env = {**env, RUN_MARK: self.mark}
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` with its output in ``<log_dir>/<name>.log`` (``env``: more environment for it alone)."""
        with (self.log_dir / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}, cwd=self.log_dir,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append((name, proc))
        return proc

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds.

        What is left includes every live member of a process group that a
        marked process led or belonged to when the stop began: Ray renames its
        agents (``ray::DashboardAgent``) by writing over their environment, so
        the mark cannot be read from them, and they live in the process group
        of the simulation process, which the SuperLink started in a session of
        its own.
        """
        own = os.getpgrp()
        groups = {proc.pid for _, proc in self.procs} | {
            g for g in map(process_group, marked_processes(RUN_MARK, self.mark)) if g is not None
        }
        groups.discard(own)
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
        deadline = time.monotonic() + 15.0  # until the kernel has really removed them (slow on a loaded machine)
        while (
            left := sorted(set(marked_processes(RUN_MARK, self.mark)) | set(group_members(groups)))
        ) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)
        if left:
            log.warning("processes of the run still alive after SIGKILL: %s", left)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def marked_processes(key: str, value: str) -> list[int]:
    """Live processes whose environment has ``key=value`` (empty where ``/proc`` is not readable)."""
    needle, found = f"{key}={value}".encode(), []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, ...); ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def process_group(pid: int) -> int | None:
    """The process group of ``pid`` (``None`` once it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[2]) if fields and len(fields) > 2 else None


def group_members(groups: set[int]) -> list[int]:
    """Live processes (not zombies) in any of the process ``groups``, this one excepted (Linux ``/proc``)."""
    found: list[int] = []
    if not groups or not Path("/proc").is_dir():
        return found
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            fields = _stat_fields(int(entry.name))
            if fields and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) in groups:
                found.append(int(entry.name))
    return found


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def superlink_argv(
    host: str, port: int, *, simulation: bool, tls: TlsFiles | None = None, auth: bool = False
) -> list[str]:
    """The SuperLink's command line: one port for its Runtime, Control and Fleet APIs; no run-time installs.

    ``simulation``: Flower's simulation runtime runs each submitted run (ServerApp
    and virtual SuperNodes on Ray) instead of waiting for SuperNode processes.
    ``tls``: HTTPS on that port with these files (else ``--insecure``).
    ``auth``: only SuperNodes whose public key was registered may join.
    """
    security = ["--insecure"] if tls is None else [
        "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]  # fmt: skip
    argv = [flower_bin("flower-superlink"), *security, "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation"]  # fmt: skip
    if auth:
        argv.append("--enable-supernode-auth")
    return [*argv, "--simulation"] if simulation else argv


def app_pyproject() -> str:
    """The ``pyproject.toml`` of the app ``flwr run`` submits: poisonlab's two apps and its run config key."""
    try:
        installed = version("poisonlab")
    except PackageNotFoundError:
        raise RuntimeError("poisonlab is not installed in this environment: pip install -e . first") from None
    description = "poisonlab federation (apps loaded from the installed poisonlab)"
    return flower_app_pyproject("poisonlab", installed, description, "scripts.apps", {CONFIG_KEY: ""})


def flower_app_pyproject(name: str, app_version: str, description: str, module: str, config: dict[str, Any]) -> str:
    """A Flower app's ``pyproject.toml``: ``module``'s ``server_app`` and ``client_app``, run config keys ``config``."""
    keys = "".join(f"{key} = {toml_value(value)}\n" for key, value in config.items())
    return (
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{name}"\nversion = "{app_version}"\ndescription = "{description}"\n'
        'license = "Apache-2.0"\ndependencies = []\n\n'
        '[tool.flwr.app]\npublisher = "poisonlab"\n\n'
        f'[tool.flwr.app.components]\nserverapp = "{module}:server_app"\nclientapp = "{module}:client_app"\n\n'
        f"[tool.flwr.app.config]\n{keys}"
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
    tls : TlsFiles, optional
        Serve the SuperLink over HTTPS with these files; the ``flwr`` CLI trusts their CA.
    auth : bool
        SuperNode authentication: only registered keys (:meth:`register`) may join.
    trust : Path, optional
        The CA certificate the ``flwr`` CLI trusts when the session attaches to a
        SuperLink started elsewhere (no :meth:`start_superlink`; with neither
        ``tls`` nor ``trust`` the CLI connects without TLS).

    A session that never starts a SuperLink is *attached* (:attr:`attached`):
    :meth:`run` submits to the SuperLink at ``host:port`` and, when the session
    ends on an error, Ctrl-C or SIGTERM, stops its run there (``flwr stop``), since
    no SuperLink of its own goes down with it.
    """

    def __init__(
        self, out_dir: Path, *, host: str, port: int, env: dict[str, str] | None = None,
        tls: TlsFiles | None = None, auth: bool = False, trust: Path | None = None,
    ) -> None:  # fmt: skip
        self.out_dir = Path(out_dir).resolve()
        self.folder = self.out_dir / FLOWER_FOLDER
        self.home = self.folder / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.host, self.port, self.tls, self.auth = host, port, tls, auth
        write_connection(self.home, f"{host}:{port}", tls.ca if tls is not None else trust)
        self.env = flower_env(self.home, env)
        self.group = ProcessGroup(self.folder, self.env)
        self.env = self.group.env  # every process of the session, `flwr` CLI calls too, carries the run's mark
        self.link: subprocess.Popen | None = None
        self._stream: LogStream | None = None

    def __enter__(self) -> FlowerSession:
        # `kill <poisonlab>` (SIGTERM) must stop the run's processes as Ctrl-C does, not orphan them
        self._sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _terminate)
        return self

    @property
    def attached(self) -> bool:
        """Whether the session submits to a SuperLink it did not start (and so must stop its run there)."""
        return self.link is None

    @property
    def run_id(self) -> int | None:
        """The id of the run :meth:`run` submitted, once the SuperLink has accepted it."""
        return self._stream.run_id if self._stream is not None else None

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and self.attached and self.run_id is not None:
            self.stop_run(self.run_id)  # the SuperLink outlives the session: do not leave the run going on there
        try:
            # After a finished run nothing is left to save (Flower's state is in memory): stop at once.
            self.group.stop(grace=2.0 if exc_type is None else 10.0)
            log.info("stopped every process of the run")
        finally:
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)

    def start_superlink(self, *, simulation: bool, prefix: list[str] | None = None) -> subprocess.Popen:
        """Start the SuperLink and wait until it listens.

        ``simulation``: Flower's simulation runtime. ``prefix``: put before its
        command line (e.g. ``ip netns exec <namespace>`` to run it on another
        network stack, reachable from here at ``host``).
        """
        argv = superlink_argv(self.host, self.port, simulation=simulation, tls=self.tls, auth=self.auth)
        self.link = self.group.start("superlink", [*(prefix or []), *argv])
        try:
            wait_for_port(self.host, self.port, 60, self.link)
        except (TimeoutError, RuntimeError) as err:
            tail = "\n".join((self.group.log_dir / "superlink.log").read_text(errors="replace").splitlines()[-20:])
            raise type(err)(f"{err}; the SuperLink's log ends with:\n{tail}") from None
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

    def register(self, public_keys: list[Path]) -> None:
        """Register SuperNode public keys with the SuperLink (``flwr supernode register``, one process for all)."""
        register_keys(public_keys, self.env, self.folder)
        log.info("registered %d SuperNode keys", len(public_keys))

    def stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop run ``run_id`` (``flwr stop``); a run that has finished is left alone.

        Failures are logged, not raised: this runs while the session ends on another error.
        """
        try:
            answer = self.flwr(["stop", str(run_id), CONNECTION], timeout=30)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            answer = {"success": False, "error-message": str(err)}
        reason = str(answer.get("error-message", answer))
        if answer.get("success"):
            log.info("stopped run %d on the SuperLink %s:%d", run_id, self.host, self.port)
        elif "already finished" in reason:
            log.info("run %d had already finished on the SuperLink", run_id)
        else:
            log.warning("could not stop run %d on the SuperLink %s:%d: %s", run_id, self.host, self.port, reason)

    def stage(self, cfg: dict[str, Any]) -> tuple[Path, Path]:
        """Write the app ``flwr run`` submits and the run config holding ``cfg``; their paths."""
        app = self.folder / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(app_pyproject())
        run_config = self.folder / "run-config.toml"
        run_config.write_text(f"{CONFIG_KEY} = {json.dumps(json.dumps(cfg))}\n")
        return app, run_config

    def save_log(self, run_id: int) -> None:
        """Append Flower's whole log of the run (ServerApp, simulation, Ray), as the SuperLink holds it, to run.log.

        Taken with ``flwr log --show`` once the run has written its summary: the
        stream may not have caught up when the engine stops the run's processes.
        """
        out = subprocess.run(
            [flower_bin("flwr"), "log", str(run_id), CONNECTION, "--show"], env=self.env, capture_output=True,
            text=True, timeout=120, cwd=self.folder,
        )  # fmt: skip
        with (self.out_dir / RUN_LOG).open("a") as run_log:
            run_log.write(f"===== Flower's log of run {run_id} (flwr log) =====\n")
            run_log.write(strip_ansi(out.stdout + out.stderr))

    def status(self, run_id: int) -> str:
        """The run's status as the SuperLink reports it (e.g. ``running``, ``finished:completed``)."""
        runs = self.flwr(["ls", CONNECTION, "--run-id", str(run_id)]).get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""

    def run(
        self, cfg: dict[str, Any], *, timeout: float, on_round: Callable[[dict[str, Any]], None],
        federation_config: dict[str, Any] | None = None, verbose: bool = False,
    ) -> None:  # fmt: skip
        """Submit ``cfg`` and follow it to its end; raise unless it ended with a complete or diverged summary.

        One ``flwr run --stream`` submits the run, streams Flower's log of it
        (ServerApp, simulation, Ray) into ``flower/stream.log`` (and to the
        console when ``verbose``) and exits when the run has finished;
        meanwhile every new round of ``metrics.jsonl`` goes to ``on_round``.
        Flower's whole log is then appended to ``run.log``.

        Raises
        ------
        RuntimeError
            When submission is refused, the SuperLink exits, or the run ends
            without a summary or with ``status: failed``.
        TimeoutError
            When the run has not finished after ``timeout`` seconds.
        """
        app, run_config = self.stage(cfg)
        argv = [flower_bin("flwr"), "run", str(app), CONNECTION, "--run-config", str(run_config), "--stream"]
        if federation_config:
            argv += ["--federation-config", " ".join(f"{k}={toml_value(v)}" for k, v in federation_config.items())]
        stream = self._stream = LogStream(self.folder / "stream.log", echo=verbose)
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=self.folder,
            start_new_session=True, text=True, errors="replace",
        )  # fmt: skip
        self.group.procs.append(("flwr-run", proc))
        stream.follow(proc)
        metrics, summary = self.out_dir / "metrics.jsonl", self.out_dir / "summary.json"
        deadline, seen, complete_since = time.monotonic() + timeout, 0, None
        while proc.poll() is None:
            seen = _follow(metrics, seen, on_round)
            if complete_since is None and summary.exists():
                complete_since = time.monotonic()
            if complete_since is not None and time.monotonic() - complete_since > FINISH_GRACE_S:
                log.info("summary.json written %.0fs ago; stopping without waiting for Flower's shutdown",
                         FINISH_GRACE_S)  # fmt: skip
                break
            if self.link is not None and self.link.poll() is not None:
                raise RuntimeError(f"the SuperLink exited ({self.link.returncode}); see {self.folder}/superlink.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {stream.run_id} did not finish within engine.timeout={timeout}s")
            time.sleep(0.25)
        stream.join(timeout=0.0 if proc.poll() is None else 10.0)
        _follow(metrics, seen, on_round)
        if stream.run_id is None:
            raise RuntimeError(f"flwr run was refused (exit {proc.returncode}): {stream.tail()}")
        log.info("run %d finished (flwr run exit %s)", stream.run_id, proc.returncode)
        self.save_log(stream.run_id)
        self._check_outcome(stream.run_id)

    def _check_outcome(self, run_id: int) -> None:
        """Raise unless the run's ``summary.json`` says it completed (or diverged, a valid end)."""
        path = self.out_dir / "summary.json"
        if not path.exists():
            status = self.status(run_id)
            raise RuntimeError(f"run {run_id} ended without a summary (Flower status {status!r}); see {RUN_LOG}")
        summary = json.loads(path.read_text())
        if summary.get("status") == "failed":
            raise RuntimeError(f"run {run_id} failed: {summary.get('reason')}; see {self.out_dir / RUN_LOG}")


class LogStream:
    """Copies ``flwr run --stream``'s output to a file (and the console) as it comes; finds the run id.

    A thread reads the pipe so the CLI never blocks on a full pipe while the
    main thread follows the rounds.
    """

    _STARTED = re.compile(r"Successfully started run (\d+)")

    def __init__(self, path: Path, *, echo: bool) -> None:
        self.path, self.echo = path, echo
        self.run_id: int | None = None
        self.lines: list[str] = []
        self._thread: threading.Thread | None = None

    def follow(self, proc: subprocess.Popen) -> None:
        """Start copying ``proc``'s output."""
        self._thread = threading.Thread(target=self._copy, args=(proc,), daemon=True)
        self._thread.start()

    def _copy(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        with self.path.open("a") as out:
            for line in proc.stdout:
                out.write(strip_ansi(line))
                out.flush()
                self.lines = [*self.lines[-49:], line]
                if self.run_id is None and (found := self._STARTED.search(line)):
                    self.run_id = int(found[1])
                if self.echo:
                    sys.stderr.write(line)

    def join(self, timeout: float = 10.0) -> None:
        """Wait until the output is copied to its end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def tail(self) -> str:
        """The last lines of the output (for error messages)."""
        return "".join(self.lines[-20:])


def _follow(metrics: Path, seen: int, on_round: Callable[[dict[str, Any]], None]) -> int:
    """Hand the complete rounds appended to ``metrics.jsonl`` since ``seen`` lines to ``on_round``."""
    if not metrics.exists():
        return seen
    rows = metrics.read_text().split("\n")[:-1]  # a line still being written has no newline yet
    for row in rows[seen:]:
        on_round(json.loads(row))
    return max(seen, len(rows))


def toml_value(value: Any) -> str:
    """A value in TOML's syntax, for run and federation configs (strings quoted, booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
