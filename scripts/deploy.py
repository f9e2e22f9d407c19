"""A real Flower deployment on this machine: SuperLink + SuperNodes as processes.

:func:`run_local_deployment` starts one ``flower-superlink`` and one
``flower-supernode`` per client on loopback (each told its partition and role
with ``--node-config 'partition-id=i num-partitions=N role="malicious"'``, the
role from the run's seeded threat model), submits the run with
``flwr run`` (the resolved config as Flower run config), follows the run's
``metrics.jsonl`` on the console, waits for the run to finish and shuts every
process down. Flower's own state (``FLWR_HOME``) and every process log live in
``<run folder>/deployment/``, so nothing outside the run folder is touched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common.data import PROJECT_ROOT
from common.runtime import CONFIG_KEY
from server.results import progress_line

CONNECTION = "poisonlab-local"


def _bin(name: str) -> str:
    """A console script installed beside this Python (the project's environment)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found beside {sys.executable}; install flwr[simulation]==1.41.0")
    return str(path)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class ProcessGroup:
    """Processes started for one deployment, stopped together (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir, self.env = log_dir, env
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("w")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.log_dir, start_new_session=True
        )
        self.procs.append((name, proc))
        return proc

    def stop(self, grace: float = 10.0) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _flwr(args: list[str], env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    out = subprocess.run(
        [_bin("flwr"), *args, "--format", "json"], env=env, capture_output=True, text=True, timeout=timeout
    )
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"flwr {' '.join(args)} failed ({out.returncode}): {out.stdout}\n{out.stderr}") from None


def _run_status(run_id: int, env: dict[str, str]) -> str:
    listing = _flwr(["ls", CONNECTION, "--run-id", str(run_id)], env)
    runs = listing.get("runs", [])
    return str(runs[0].get("status", "")) if runs else ""


def _follow(metrics: Path, seen: int) -> int:
    """Print progress for the rounds appended to ``metrics.jsonl`` since ``seen`` lines."""
    if not metrics.exists():
        return seen
    rows = metrics.read_text().splitlines()
    for row in rows[seen:]:
        print(progress_line(json.loads(row)), flush=True)
    return len(rows)


def run_local_deployment(
    cfg: dict[str, Any], *, host: str, base_port: int, client_threads: int, timeout: float
) -> None:
    """Run ``cfg`` as a real deployment on loopback and wait for it (see module docstring)."""
    out_dir = Path(cfg["output_dir"]).resolve()
    deploy_dir = out_dir / "deployment"
    flwr_home = deploy_dir / "flwr-home"
    flwr_home.mkdir(parents=True, exist_ok=True)
    num_clients = int(cfg["federation"]["num_clients"])
    link_port = base_port
    node_ports = [base_port + 1 + i for i in range(num_clients)]
    busy = [p for p in [link_port, *node_ports] if not port_is_free(host, p)]
    if busy:
        raise RuntimeError(f"ports {busy[:10]} on {host} are in use; choose another engine.base_port")

    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{host}:{link_port}"\ninsecure = true\n'
    )
    run_config = deploy_dir / "run-config.toml"
    run_config.write_text(f"{CONFIG_KEY} = {json.dumps(json.dumps(cfg))}\n")
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": str(client_threads),
        "MKL_NUM_THREADS": str(client_threads),
    }

    with ExitStack() as stack:
        group = stack.enter_context(ProcessGroup(deploy_dir, env))
        link = group.start(
            "superlink",
            [_bin("flower-superlink"), "--insecure", "--host", host, "--port", str(link_port),
             "--disable-runtime-dependency-installation"],
        )  # fmt: skip
        wait_for_port(host, link_port, 60, link)
        malicious = set(cfg["attack"].get("malicious_clients", []))
        for i, port in enumerate(node_ports):
            role = "malicious" if i in malicious else "honest"
            group.start(
                f"supernode-{i}",
                [_bin("flower-supernode"), "--insecure", "--superlink", f"{host}:{link_port}",
                 "--host", host, "--port", str(port),
                 "--node-config", f'partition-id={i} num-partitions={num_clients} role="{role}"'],
            )  # fmt: skip
        submitted = _flwr(["run", str(PROJECT_ROOT), CONNECTION, "--run-config", str(run_config)], env)
        if not submitted.get("success", False) or "run-id" not in submitted:
            raise RuntimeError(f"flwr run was refused: {submitted}")
        run_id = int(submitted["run-id"])
        print(f"[poisonlab] deployment: run {run_id} on SuperLink {host}:{link_port}, {num_clients} SuperNodes")
        deadline = time.monotonic() + timeout
        seen, status = 0, ""
        while time.monotonic() < deadline:
            seen = _follow(out_dir / "metrics.jsonl", seen)
            status = _run_status(run_id, env)
            if status.startswith("finished"):
                break
            if link.poll() is not None:
                raise RuntimeError(f"the SuperLink exited ({link.returncode}); see {deploy_dir}/superlink.log")
            time.sleep(2)
        _follow(out_dir / "metrics.jsonl", seen)
        if not status.startswith("finished"):
            raise TimeoutError(f"run {run_id} did not finish within engine.timeout={timeout}s (status {status!r})")
    if status != "finished:completed" or not (out_dir / "summary.json").exists():
        raise RuntimeError(f"run {run_id} ended with status {status!r}; see {deploy_dir}/superlink.log")
