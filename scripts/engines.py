"""Where a federation runs: Flower's simulation runtime on Ray, a real local deployment, or a running federation.

Engines are chosen by the ``engine`` config group (Hydra ``_target_``). Each
takes the run built by :func:`scripts.build.build_run` and runs it to
completion through Flower's supported path, ``flwr run`` against a SuperLink
(:class:`scripts.flower_run.FlowerSession`) that the engine starts and stops
itself, or, for :class:`RemoteFederation`, one that is already running,
leaving the outputs in ``run.cfg["output_dir"]`` and handing every finished
round to ``on_round`` (the console's progress).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scripts.build import Run
from scripts.deploy import run_local_deployment
from scripts.endpoints import (
    EndpointError,
    check_superlink,
    is_local_address,
    load_certificate,
    parse_address,
    url_host,
)
from scripts.flower_run import FlowerSession, free_port

OnRound = Callable[[dict[str, Any]], None]
log = logging.getLogger("poisonlab.engine")


class Simulation:
    """Flower's simulation runtime on Ray: one virtual SuperNode per client.

    A SuperLink started with ``--simulation`` on a free loopback port runs the
    submitted run in one process of its own (the ServerApp, and the ClientApps
    on Ray actors). The only engine that runs omniscient colluding attacks
    (``runs_colluding_attacks``, computed on the server: ``colluders_on_clients``
    false): the ServerApp sees every honest update there.

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
    colluders_on_clients = False

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
    attacker_window : float
        Colluding attacks only: seconds the attacker service waits after a
        round's first benign update before it answers the colluders with what
        was posted (at once when every colluder posted).

    Colluding attacks run here with partial knowledge only (``colluders_on_clients``):
    each malicious SuperNode's ClientApp computes the attack itself from the benign
    updates the round's colluders share through the attacker service
    (:mod:`scripts.attacker_service`, port ``base_port + 1 + num_clients``).
    """

    runs_colluding_attacks = True
    colluders_on_clients = True

    def __init__(self, *, host: str = "127.0.0.1", base_port: int = 19091, client_threads: int = 1,
                 timeout: float = 1800, tls: bool = True, auth: bool = True,
                 attacker_window: float = 30.0) -> None:  # fmt: skip
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
        if not attacker_window > 0:
            raise ValueError(f"engine.attacker_window must be > 0 seconds, got {attacker_window}")
        self.tls, self.auth, self.attacker_window = bool(tls), bool(auth), float(attacker_window)

    def run(self, run: Run, on_round: OnRound, *, verbose: bool = False) -> None:
        """Start a SuperLink and one SuperNode per client (and the attacker service), run, follow, shut down."""
        run_local_deployment(
            run.cfg, host=self.host, base_port=self.base_port, client_threads=self.client_threads,
            timeout=self.timeout, on_round=on_round, verbose=verbose, tls=self.tls, auth=self.auth,
            attacker_window=self.attacker_window,
        )  # fmt: skip


class RemoteFederation:
    """Submit the run to a SuperLink that is already running; start and stop no SuperLink or SuperNode.

    For a federation started with ``poisonlab-node`` (or ``docker/``): the
    engine checks the SuperLink answers (and its certificate) when it is built,
    before the data is prepared, then submits and follows the run as every
    engine does (``flwr run --stream``, rounds from ``metrics.jsonl``, done once
    ``summary.json`` is written). On an error, Ctrl-C or SIGTERM it stops its
    run on the SuperLink (``flwr stop``); the federation keeps running.

    The ServerApp runs on the SuperLink's machine and writes the run folder
    there, at the same absolute path (``output_dir``) as on the machine that
    submits; the ClientApps and the ServerApp read the data from the run's
    ``dataset.root``. So submit from the SuperLink's machine (or with the run
    folder on a filesystem both share), and keep the data at the same path on
    every machine.

    Parameters
    ----------
    superlink : str
        The SuperLink's ``HOST:PORT`` (``[v6]:PORT`` for IPv6), as its certificate names it.
    ca : str, optional
        The federation's CA certificate (``<certs>/superlink/ca.crt``).
    insecure : bool
        The SuperLink runs without TLS (``poisonlab-node superlink --insecure``); excludes ``ca``.
    malicious : list of int, optional
        The partitions whose SuperNode runs with ``--role malicious``; when given,
        a run whose ``attack.malicious_clients`` differ is a configuration error
        (:meth:`check_run`).
    timeout : float
        Seconds for the whole run.
    connect_timeout : float
        Seconds for the SuperLink to answer the check.
    """

    runs_colluding_attacks = False

    def __init__(
        self, *, superlink: str | None = None, ca: str | None = None, insecure: bool = False,
        malicious: list[int] | None = None, timeout: float = 86400, connect_timeout: float = 10.0,
    ) -> None:  # fmt: skip
        if not superlink:
            raise EndpointError(
                "engine.superlink is not set: give the SuperLink's HOST:PORT, e.g. engine.superlink=10.0.0.5:19091 "
                "(poisonlab-node superlink runs there)"
            )
        self.host, self.port = parse_address(superlink, "engine.superlink")
        if ca is not None and insecure:
            raise EndpointError(
                "engine.ca and engine.insecure=true exclude each other: keep engine.ca for a SuperLink with TLS, "
                "or set engine.ca=null for one started with --insecure"
            )
        if ca is None and not insecure:
            raise EndpointError(
                "engine.ca is not set: give the federation's CA certificate (engine.ca=<certs>/superlink/ca.crt), "
                "or engine.insecure=true for a SuperLink started with --insecure"
            )
        self.ca = Path(ca).expanduser().resolve() if ca is not None else None
        if self.ca is not None:
            load_certificate(self.ca, "engine.ca")
        if timeout <= 0 or connect_timeout <= 0:
            raise EndpointError(f"engine.timeout={timeout} and engine.connect_timeout={connect_timeout} must be > 0")
        if malicious is not None and (len(set(malicious)) != len(malicious) or any(int(c) < 0 for c in malicious)):
            raise EndpointError(f"engine.malicious={malicious} must list distinct partition ids >= 0")
        self.malicious = None if malicious is None else sorted(int(c) for c in malicious)
        self.timeout = timeout
        check_superlink(self.host, self.port, ca=self.ca, timeout=connect_timeout)

    @property
    def address(self) -> str:
        """The SuperLink's ``HOST:PORT``."""
        return f"{url_host(self.host)}:{self.port}"

    def check_run(self, cfg: dict[str, Any]) -> None:
        """Raise ``ValueError`` when the run's malicious clients are not the SuperNodes started malicious.

        Called by :func:`scripts.build.build_run` once the threat model has drawn
        ``attack.malicious_clients``, before the data is prepared.
        """
        drawn = sorted(int(c) for c in cfg["attack"].get("malicious_clients", []))
        if self.malicious is not None and drawn != self.malicious:
            ids = ",".join(map(str, self.malicious))
            raise EndpointError(
                f"the run's malicious clients are {drawn} but the SuperNodes with --role malicious serve partitions "
                f"{self.malicious} (engine.malicious): add attack.num_malicious={len(self.malicious)} "
                f"'+attack.malicious_clients=[{ids}]'"
            )

    def run(self, run: Run, on_round: OnRound, *, verbose: bool = False) -> None:
        """Submit the run to the SuperLink, follow it to its end; the federation keeps running."""
        cfg = run.cfg
        out_dir = Path(cfg["output_dir"])
        if not is_local_address(self.host):
            log.warning("the ServerApp writes the run folder on the SuperLink's machine (%s), at %s: this engine "
                        "follows the run only where that folder is visible here (a shared filesystem)",
                        self.address, out_dir)  # fmt: skip
        with FlowerSession(out_dir, host=url_host(self.host), port=self.port, trust=self.ca) as session:
            try:
                session.run(cfg, timeout=self.timeout, on_round=on_round, verbose=verbose)
            except RuntimeError as err:
                written = [out_dir / name for name in ("metrics.jsonl", "summary.json")]
                if session.run_id is None or any(path.exists() for path in written):
                    raise  # refused, or the run's own outcome
                raise RuntimeError(
                    f"{err}. No metrics.jsonl appeared in {out_dir} on this machine: the ServerApp writes the run "
                    f"folder on the SuperLink's machine ({self.address}); submit from that machine, or give the run "
                    "a folder on a filesystem both share (hydra.run.dir=...)"
                ) from err
