"""Where a federation runs: Flower's simulation runtime on Ray, or a real local deployment.

Engines are chosen by the ``engine`` config group (Hydra ``_target_``). Each
takes the run built by :func:`scripts.build.build_run` and runs it to
completion through Flower's supported path, ``flwr run`` against a SuperLink
the engine starts and stops itself (:class:`scripts.flower_run.FlowerSession`),
leaving the outputs in ``run.cfg["output_dir"]`` and handing every finished
round to ``on_round`` (the console's progress).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scripts.build import Run
from scripts.deploy import run_local_deployment
from scripts.flower_run import FlowerSession, free_port

OnRound = Callable[[dict[str, Any]], None]


class Simulation:
    """Flower's simulation runtime on Ray: one virtual SuperNode per client.

    A SuperLink started with ``--simulation`` on a free loopback port runs the
    submitted run in one process of its own (the ServerApp, and the ClientApps
    on Ray actors). The only engine that runs omniscient colluding attacks
    (``runs_colluding_attacks``): the ServerApp sees every honest update there.

    Parameters
    ----------
    client_cpus : int
        CPUs each client actor reserves (Ray gives it that many torch threads);
        with 1, as many clients train at once as there are cores. Flower's
        simulation config takes whole CPUs.
    client_gpus : float
        GPU fraction each client actor reserves (0 = CPU only).
    num_cpus : int, optional
        CPUs Ray may use in all (default: every core).
    object_store_mb : int
        Cap on Ray's object store.
    timeout : float
        Seconds for the whole run before everything is shut down.
    """

    runs_colluding_attacks = True

    def __init__(
        self,
        *,
        client_cpus: int = 1,
        client_gpus: float = 0.0,
        num_cpus: int | None = None,
        object_store_mb: int = 512,
        timeout: float = 86400,
    ) -> None:
        if isinstance(client_cpus, bool) or not isinstance(client_cpus, int) or client_cpus < 1:
            raise ValueError(
                f"engine.client_cpus must be a whole number >= 1 (Flower's simulation config), got {client_cpus}"
            )
        if not 0 <= client_gpus <= 1:
            raise ValueError(f"engine.client_gpus must be in [0, 1], got {client_gpus}")
        if client_gpus > 0:
            if not torch.cuda.is_available():
                raise ValueError(f"engine.client_gpus={client_gpus} but no CUDA device is visible; set 0")
        if num_cpus is not None and num_cpus < client_cpus:
            raise ValueError(f"engine.num_cpus={num_cpus} is below engine.client_cpus={client_cpus}")
        if object_store_mb < 78:
            raise ValueError(f"engine.object_store_mb must be >= 78 (Ray's minimum), got {object_store_mb}")
        if timeout <= 0:
            raise ValueError(f"engine.timeout must be > 0 seconds, got {timeout}")
        self.client_cpus = client_cpus
        self.client_gpus = client_gpus
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.object_store_mb = object_store_mb
        self.timeout = timeout

    def federation_config(self, num_clients: int) -> dict[str, Any]:
        """Flower's simulation config for the run (``flwr run --federation-config``)."""
        return {
            "num-supernodes": num_clients,
            "backend": "ray",
            "client-resources-num-cpus": self.client_cpus,
            "client-resources-num-gpus": float(self.client_gpus),
            "init-args-num-cpus": self.num_cpus,
            "init-args-logging-level": "ERROR",
            "init-args-log-to-driver": True,
        }

    def run(self, run: Run, on_round: OnRound, *, verbose: bool = False) -> None:
        """Start a simulation SuperLink, submit the run, follow it to its end, stop everything."""
        cfg = run.cfg
        host = "127.0.0.1"
        env = {"RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(self.object_store_mb * 1024 * 1024)}
        with FlowerSession(Path(cfg["output_dir"]), host=host, port=free_port(host), env=env) as session:
            session.start_superlink(simulation=True)
            fed = self.federation_config(int(cfg["federation"]["num_clients"]))
            session.run(cfg, timeout=self.timeout, on_round=on_round, federation_config=fed, verbose=verbose)


class LocalDeployment:
    """A real deployment on this machine (see :mod:`scripts.deploy`), secured by default.

    Parameters
    ----------
    host, base_port : str, int
        Loopback address; the SuperLink listens on ``base_port``, SuperNode ``i``'s
        Runtime API on ``base_port + 1 + i``.
    client_threads : int
        torch threads of each ClientApp process.
    timeout : float
        Seconds for the whole run.
    tls : bool
        HTTPS between the SuperNodes (and the ``flwr`` CLI) and the SuperLink, with
        a CA and certificate made for the run; ``false`` is an explicit opt-out.
    auth : bool
        SuperNode authentication: a key pair per SuperNode, registered with the
        SuperLink before it starts; an unregistered SuperNode is refused.
    """

    def __init__(self, *, host: str = "127.0.0.1", base_port: int = 19091, client_threads: int = 1,
                 timeout: float = 1800, tls: bool = True, auth: bool = True) -> None:  # fmt: skip
        if not 1024 <= base_port <= 65000:
            raise ValueError(f"engine.base_port must be in [1024, 65000], got {base_port}")
        if client_threads < 1:
            raise ValueError(f"engine.client_threads must be >= 1, got {client_threads}")
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ValueError(f"engine.host must be a loopback address for a local deployment, got {host!r}")
        if auth and not tls:
            raise ValueError("engine.auth=true needs engine.tls=true (Flower authenticates SuperNodes over TLS only); "
                             "for a plain local deployment set engine.tls=false engine.auth=false")  # fmt: skip
        self.host, self.base_port, self.client_threads, self.timeout = host, base_port, client_threads, timeout
        self.tls, self.auth = bool(tls), bool(auth)

    runs_colluding_attacks = False

    def run(self, run: Run, on_round: OnRound, *, verbose: bool = False) -> None:
        """Start a SuperLink and one SuperNode per client, submit the run, follow it, shut down."""
        run_local_deployment(
            run.cfg, host=self.host, base_port=self.base_port, client_threads=self.client_threads,
            timeout=self.timeout, on_round=on_round, verbose=verbose, tls=self.tls, auth=self.auth,
        )  # fmt: skip
