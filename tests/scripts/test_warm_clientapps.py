"""The warm ClientApp server and its launcher, with a probe entry instead of Flower's ``flwr-clientapp``.

A real server process forks a child per launch; the probe entry reports what the
child sees (command line, environment, folder, a module-level counter that a
fresh process has at 0) and exits with the code it is given. The deployment
tests run Flower's own entry through it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from scripts.warm_clientapps import COLD_ENV, LAUNCHER, SERVER_ENV, install_launcher, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import os, signal, sys, time

    import torch

    LAUNCHES = [0]

    def main():
        LAUNCHES[0] += 1
        args = sys.argv[1:]
        print(f"argv={args} cwd={os.getcwd()} probe={os.environ.get('PROBE')} launches={LAUNCHES[0]} "
              f"pid={os.getpid()} ppid={os.getppid()} draw={int(torch.randint(2**62, (1,)))}", flush=True)
        print("on stderr", file=sys.stderr, flush=True)
        if args[0] == "wait":
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(7))
            print("ready", flush=True)
            time.sleep(120)
        sys.exit(int(args[0]))
    """
)


@pytest.fixture
def server(tmp_path):
    """A server whose children run ``probe:main``; the environment that makes a process launch through it."""
    (tmp_path / "probe.py").write_text(PROBE)
    with tempfile.TemporaryDirectory(prefix="poisonlab-test-") as short:
        socket_path = Path(short) / "s.sock"
        log = tmp_path / "server.log"
        env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scripts.warm_clientapps", "serve", "--socket", str(socket_path),
                 "--entry", "probe:main"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip
        try:
            wait_until_serving(socket_path, proc, log, timeout=60)
            launch_env = {**os.environ, **install_launcher(tmp_path / "bin", socket_path), "PROBE": "seen"}
            yield proc, launch_env, tmp_path / "bin" / LAUNCHER, log
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def fields(line: str) -> dict[str, str]:
    parts = line.split(" cwd=")
    out = {"argv": parts[0].removeprefix("argv=")}
    for item in ("cwd=" + parts[1]).split():
        key, _, value = item.partition("=")
        out[key] = value
    return out


def test_a_launch_runs_the_entry_in_a_child_of_the_server_with_its_own_args_env_folder_and_streams(server, tmp_path):
    proc, env, launcher, log = server
    where = tmp_path / "elsewhere"
    where.mkdir()
    first = subprocess.run([str(launcher), "3", "--token", "abc"], env=env, cwd=where, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    second = subprocess.run([str(launcher), "0"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert first.returncode == 3 and second.returncode == 0
    a, b = fields(first.stdout.splitlines()[0]), fields(second.stdout.splitlines()[0])
    assert a["argv"] == "['3', '--token', 'abc']" and b["argv"] == "['0']"
    assert a["cwd"] == str(where) and b["cwd"] == str(tmp_path)
    assert a["probe"] == b["probe"] == "seen"  # the launcher's environment, not the server's
    assert a["launches"] == b["launches"] == "1"  # each launch a fresh child: nothing of the previous one
    assert a["ppid"] == b["ppid"] == str(proc.pid) and a["pid"] != b["pid"]
    assert a["draw"] != b["draw"]  # torch's default generator seeded anew in each child, as in a fresh process
    assert first.stderr.strip() == "on stderr"
    assert log.read_text().count("started ClientApp process") == 2


def exits(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` is gone or a zombie within ``within`` seconds.

    The child reports its exit code to the launcher just before its ``os._exit``,
    so the launcher can return while the child is still exiting.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return True
        if state == "Z" or time.monotonic() >= deadline:
            return state == "Z"
        time.sleep(0.05)


def test_sigterm_to_the_launcher_reaches_the_child_and_its_exit_code_comes_back(server):
    _, env, launcher, _ = server
    proc = subprocess.Popen([str(launcher), "wait"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    assert lines[1].strip() == "ready", lines
    child = int(fields(lines[0])["pid"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 7
    assert exits(child)


def test_without_a_server_the_launcher_runs_flowers_command_itself(tmp_path):
    cold = tmp_path / "cold-clientapp"
    cold.write_text('#!/bin/sh\necho "cold $*"\nexit 4\n')
    cold.chmod(0o755)
    env = {**os.environ, **install_launcher(tmp_path / "bin", tmp_path / "no-such.sock"), COLD_ENV: str(cold)}
    out = subprocess.run([str(tmp_path / "bin" / LAUNCHER), "--token", "x"], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 4 and out.stdout.strip() == "cold --token x"
    assert env[SERVER_ENV] == str(tmp_path / "no-such.sock")
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin")


def test_a_server_that_dies_while_importing_fails_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.warm_clientapps", "serve", "--socket", str(tmp_path / "s.sock"),
             "--entry", "no_such_module_here:main"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="no_such_module_here"):
        wait_until_serving(tmp_path / "s.sock", proc, log, timeout=60)
