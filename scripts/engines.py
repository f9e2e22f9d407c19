"""Where a federation runs: Flower's Ray simulation, or a real local deployment.

Engines are chosen by the ``engine`` config group (Hydra ``_target_``). Each
takes the run built by :func:`scripts.build.build_run` and runs it to
completion, leaving the outputs in ``run.cfg["output_dir"]``. An engine wires
both Flower apps, so it sits in the runner, above ``server`` and ``clients``.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from flwr.simulation import run_simulation

from scripts.apps import bound_server_app, client_app
from scripts.build import Run
from scripts.deploy import run_local_deployment

log = logging.getLogger("poisonlab")


class Simulation:
    """Flower's simulation engine on Ray: one virtual SuperNode per client.

    The only engine that runs omniscient colluding attacks (``runs_colluding_attacks``):
    the ServerApp runs in this process, where the attack sees every honest update.

    Parameters
    ----------
    client_cpus : float
        CPUs each client actor reserves (Ray gives it that many torch threads);
        with 1, as many clients train at once as there are cores.
    client_gpus : float
        GPU fraction each client actor reserves (0 = CPU only).
    num_cpus : int, optional
        CPUs Ray may use in all (default: every core).
    object_store_mb : int
        Cap on Ray's object store.
    """

    runs_colluding_attacks = True

    def __init__(
        self,
        *,
        client_cpus: float = 1,
        client_gpus: float = 0.0,
        num_cpus: int | None = None,
        object_store_mb: int = 512,
    ) -> None:
        if client_cpus <= 0:
            raise ValueError(f"engine.client_cpus must be > 0, got {client_cpus}")
        if not 0 <= client_gpus <= 1:
            raise ValueError(f"engine.client_gpus must be in [0, 1], got {client_gpus}")
        if client_gpus > 0:
            if not torch.cuda.is_available():
                raise ValueError(f"engine.client_gpus={client_gpus} but no CUDA device is visible; set 0")
        if num_cpus is not None and num_cpus < client_cpus:
            raise ValueError(f"engine.num_cpus={num_cpus} is below engine.client_cpus={client_cpus}")
        if object_store_mb < 78:
            raise ValueError(f"engine.object_store_mb must be >= 78 (Ray's minimum), got {object_store_mb}")
        self.client_cpus = client_cpus
        self.client_gpus = client_gpus
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.object_store_mb = object_store_mb

    def backend_config(self) -> dict[str, Any]:
        """Flower's backend config for the Ray backend."""
        return {
            "client_resources": {"num_cpus": self.client_cpus, "num_gpus": self.client_gpus},
            "init_args": {
                "num_cpus": self.num_cpus,
                "object_store_memory": self.object_store_mb * 1024 * 1024,
                "include_dashboard": False,
                "logging_level": "ERROR",
            },
        }

    def run(self, run: Run) -> None:
        """Run the federation in this process (ServerApp) and Ray actors (ClientApps)."""
        cfg = run.cfg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # run_simulation's own deprecation notice
            warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
            run_simulation(
                server_app=bound_server_app(run),
                client_app=client_app,
                num_supernodes=int(cfg["federation"]["num_clients"]),
                backend_config=self.backend_config(),
            )
        summary = os.path.join(cfg["output_dir"], "summary.json")
        if not os.path.exists(summary):
            raise RuntimeError(f"the simulation ended without writing {summary}; see the log above")


class LocalDeployment:
    """A real deployment on this machine (see :mod:`scripts.deploy`)."""

    def __init__(self, *, host: str = "127.0.0.1", base_port: int = 19091, client_threads: int = 1,
                 timeout: float = 1800) -> None:  # fmt: skip
        if not 1024 <= base_port <= 65000:
            raise ValueError(f"engine.base_port must be in [1024, 65000], got {base_port}")
        if client_threads < 1:
            raise ValueError(f"engine.client_threads must be >= 1, got {client_threads}")
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ValueError(f"engine.host must be a loopback address for a local deployment, got {host!r}")
        self.host, self.base_port, self.client_threads, self.timeout = host, base_port, client_threads, timeout

    runs_colluding_attacks = False

    def run(self, run: Run) -> None:
        """Start a SuperLink and one SuperNode per client, submit the run, wait, shut down."""
        run_local_deployment(
            run.cfg, host=self.host, base_port=self.base_port, client_threads=self.client_threads, timeout=self.timeout
        )
