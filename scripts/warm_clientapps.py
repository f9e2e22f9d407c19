"""Warm ClientApp processes for a real deployment: Flower's process per message, without its cold start.

In flwr 1.41 a SuperNode's SuperExec starts a fresh ``flwr-clientapp`` process
for every message it receives (``SubprocessExecutor``: the command is looked up
on ``PATH``). A cold process spends about 4 s on 2 cores importing Flower's
runtime, torch and poisonlab before it trains (paper A's local epoch: 2 s), and
5 of them at once on 2 cores make a deployment round 9x the simulation's.

A warm ClientApp server (:func:`serve`) imports all of that once and then
forks one child per message; the child runs Flower's own ``flwr-clientapp``
entry point (:func:`flwr.supernode.cli.flwr_clientapp.flwr_clientapp`) with
the command line, environment, working folder and standard streams of the
process the SuperExec started. That process is a small launcher (:func:`launch`,
the ``flwr-clientapp`` of :func:`install_launcher`'s folder, put first on the
SuperNode's ``PATH``): it hands its command line and streams to the server,
forwards SIGTERM, SIGINT and SIGHUP to the child and exits with the child's
exit code. Each message still runs in a process of its own, started from a
clean state (nothing of a previous message is in the server), under Flower's
own runtime, task token and heartbeats; only the imports are shared, copy on
write. Where the server is not reachable, the launcher runs Flower's
``flwr-clientapp`` itself (the cold path).

The server forks only while it has a single thread, and its children are
reaped by the kernel (``SIGCHLD`` ignored). A child runs where the server
runs: one server per network stack (e.g. one per ``ip netns`` namespace).

Command line (``python -m scripts.warm_clientapps``)::

    serve --socket PATH [--entry MODULE:FUNCTION]
                             import, then fork a ClientApp process per connection
    launch ARGS...           run ``flwr-clientapp ARGS...`` in a child of the server
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SERVER_ENV = "POISONLAB_CLIENTAPP_SERVER"
COLD_ENV = "POISONLAB_FLWR_CLIENTAPP"
LAUNCHER = "flwr-clientapp"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_HEADER = struct.Struct("!I")
_STREAMS = (0, 1, 2)
# What a ClientApp process of poisonlab imports: Flower's runtime and the HTTP stack its Runtime API client
# loads on first use (httpcore), torch and what torch.optim imports on a first optimizer (torch._dynamo: 3 s
# of a cold message on 2 cores), the apps.
PRELOAD = (
    "flwr.supernode.cli.flwr_clientapp", "httpcore", "torch", "torch._dynamo", "scripts.apps", "scripts.build",
    "clients.app",
)  # fmt: skip
ENTRY = "flwr.supernode.cli.flwr_clientapp:flwr_clientapp"


def install_launcher(folder: Path, server: Path) -> dict[str, str]:
    """Write the ``flwr-clientapp`` launcher into ``folder``; the environment that makes a SuperNode use it.

    The returned variables put ``folder`` first on ``PATH`` (the SuperExec
    finds the launcher instead of Flower's command), name the server's socket
    and Flower's own ``flwr-clientapp`` (the launcher's fallback).
    """
    folder.mkdir(parents=True, exist_ok=True)
    launcher = folder / LAUNCHER
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m scripts.warm_clientapps launch "$@"\n')
    launcher.chmod(0o755)
    cold = Path(sys.executable).parent / LAUNCHER
    return {
        "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}",
        SERVER_ENV: str(server),
        COLD_ENV: str(cold),
    }


def _send_frame(sock: socket.socket, payload: bytes, fds: Sequence[int] = ()) -> None:
    data = _HEADER.pack(len(payload)) + payload
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            raise ConnectionError("the connection closed mid-message")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv_request(sock: socket.socket) -> tuple[dict, list[int]]:
    """One launch request: its JSON body and the standard streams passed with it."""
    head, fds, _, _ = socket.recv_fds(sock, _HEADER.size, len(_STREAMS))
    head += _recv_exact(sock, _HEADER.size - len(head))
    (size,) = _HEADER.unpack(head)
    return json.loads(_recv_exact(sock, size)), list(fds)


def launch(args: Sequence[str]) -> int:
    """Run ``flwr-clientapp args`` in a child of the warm server; its exit code (1 if it died without one).

    Without a reachable server (``$POISONLAB_CLIENTAPP_SERVER``) this process
    becomes Flower's own ``flwr-clientapp`` (``$POISONLAB_FLWR_CLIENTAPP``).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.environ[SERVER_ENV])
    except (KeyError, OSError):
        sock.close()
        cold = os.environ.get(COLD_ENV) or str(Path(sys.executable).parent / LAUNCHER)
        os.execv(cold, [cold, *args])
    child: list[int] = []
    pending: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if not child:
            pending.append(signum)  # before the child is known: sent to it once it is
            return
        try:
            os.kill(child[0], signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:  # from before the request: no signal may find this process without its handler
        signal.signal(sig, forward)
    request = {"argv": [LAUNCHER, *args], "env": dict(os.environ), "cwd": os.getcwd()}
    _send_frame(sock, json.dumps(request).encode(), _STREAMS)
    reader = sock.makefile("r")
    first = reader.readline()
    if not first:
        return 1  # the server closed the connection without starting a child
    child.append(int(first))
    for signum in pending:
        forward(signum, None)
    last = reader.readline()
    if not last:
        return 1  # killed before it could report (SIGKILL, or the server's group stopped)
    return int(last)


def _fresh_random_state() -> None:
    """Random generators as a newly started process has them, not as the server left them for every child.

    Python's ``random`` and numpy's global generator are reseeded at fork by
    themselves; torch's default generator is not, so it is seeded from the OS
    here, as a fresh process seeds it (poisonlab's own draws come from seeded
    streams).
    """
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def _run_child(conn: socket.socket, request: dict, fds: list[int], entry: str) -> None:
    """In the forked child: run ``entry`` (``module:function``) with the launcher's streams, environment, folder
    and command line."""
    code = 1
    try:
        for sig in (*FORWARDED, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in zip(_STREAMS, fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = list(request["argv"])
        conn.sendall(f"{os.getpid()}\n".encode())
        _fresh_random_state()
        module, _, function = entry.partition(":")
        main = getattr(sys.modules[module], function)
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must report and exit, whatever happened
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            conn.sendall(f"{code}\n".encode())
        except OSError:
            pass
        os._exit(code)


def serve(path: Path, entry: str = ENTRY, preload: Sequence[str] = PRELOAD) -> None:
    """Import ``preload``, listen on the Unix socket ``path`` and fork a process per connection that runs ``entry``.

    ``entry`` (``module:function``, imported here too) is what each child runs:
    Flower's ``flwr-clientapp``. The socket appears only once the imports are
    done (a launcher that finds no socket runs the cold path). Runs until
    SIGTERM or SIGINT.
    """
    import importlib
    import threading

    for name in (*preload, entry.partition(":")[0]):
        importlib.import_module(name)
    if threading.active_count() != 1:
        raise RuntimeError(f"importing {list(preload)} started threads; forking would not be safe")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    path.unlink(missing_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(staging))
    server.listen(64)
    staging.rename(path)  # appears whole, already listening
    print(f"serving on {path} (imported: {', '.join((*preload, entry))})", flush=True)
    try:
        while True:
            conn, _ = server.accept()
            try:
                request, fds = _recv_request(conn)
            except (OSError, ValueError, ConnectionError):
                conn.close()
                continue
            child = os.fork()
            if child == 0:
                server.close()
                _run_child(conn, request, fds, entry)
            print(f"started ClientApp process {child}", flush=True)
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        server.close()
        path.unlink(missing_ok=True)


def serve_argv(path: Path) -> list[str]:
    """The command line of a warm ClientApp server listening on ``path``."""
    return [sys.executable, "-m", "scripts.warm_clientapps", "serve", "--socket", str(path)]


def wait_until_serving(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Block until the server ``proc`` listens on ``path``; fail with its log's tail if it exits or times out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            what = f"exited with code {proc.returncode}" if proc.poll() is not None else f"not up after {timeout:.0f}s"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
            raise RuntimeError(f"the warm ClientApp server {what} ({log}):\n{tail}")
        time.sleep(0.1)


@contextmanager
def running_server(folder: Path, *, log: int | None = subprocess.DEVNULL) -> Iterator[dict[str, str]]:
    """A warm ClientApp server for one SuperNode started from here; the SuperNode's extra environment.

    The socket and the launcher live in ``folder`` (keep its path short: a Unix
    socket path holds at most 107 bytes); the server's per-launch lines go to
    ``log`` (its errors to this process's stderr). It is stopped on exit.
    """
    socket_path = folder / "clientapps.sock"
    errors = folder / "clientapps.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(serve_argv(socket_path), stdout=log, stderr=err, start_new_session=True)
    try:
        wait_until_serving(socket_path, proc, errors)
        yield install_launcher(folder / "bin", socket_path)
    finally:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def main(argv: Sequence[str] | None = None) -> int:
    """``launch ARGS...`` or ``serve --socket PATH [--entry MODULE:FUNCTION]`` (the entry alone is preloaded)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["launch"]:
        return launch(args[1:])
    if args[:2] == ["serve", "--socket"] and len(args) == 3:
        serve(Path(args[2]))
        return 0
    if args[:2] == ["serve", "--socket"] and len(args) == 5 and args[3] == "--entry":
        serve(Path(args[2]), entry=args[4], preload=())
        return 0
    print(__doc__.rsplit("Command line", 1)[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
