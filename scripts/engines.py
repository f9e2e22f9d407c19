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
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts.deploy import run_local_deployment
from scripts.endpoints import (
    EndpointError,
    check_reachable,
    check_superlink,
    is_local_address,
    load_certificate,
    parse_address,
    url_host,
)
from scripts.flower_run import FlowerSession, free_port

if TYPE_CHECKING:  # the runner imports this module without torch: it only starts and follows the run
    from scripts.build import Run

OnRound = Callable[[dict[str, Any]], None]
log = logging.getLogger("poisonlab.engine")


class Simulation:
    """Flower's simulation runtime on Ray: one virtual SuperNode per client.

    A SuperLink started with ``--simulation`` on a free loopback port runs the
    submitted run in one process of its own (the ServerApp, and the ClientApps
    on Ray actors). The only engine that runs omniscient colluding attacks
    (``runs_colluding_attacks``, computed on the server: ``colluders_on_clients``
    false): the ServerApp sees every honest update there.

    The client actors run on a Ray of the run's own, started on this machine
    and stopped with the run, or, with ``ray_address``, on the nodes of a Ray
    cluster that is already running (``ray start``), which the run joins and
    leaves running. Flower's federation config has no field for Ray's address
    (it passes only ``init-args-num-cpus|num-gpus|logging-level|log-to-driver``
    to ``ray.init``), so the address reaches ``ray.init`` as ``RAY_ADDRESS`` in
    the environment of the simulation process (:meth:`ray_env`). Joining, the
    process that runs the ServerApp is the cluster's driver: poisonlab must run
    on a node of the cluster (the head), and every node needs the same Python
    environment with poisonlab installed and the data at the same path.

    Parameters
    ----------
    client_cpus : int
        CPUs each client actor reserves (Ray gives it that many torch threads);
        with 1, as many clients train at once as there are cores (of all the
        cluster's nodes: Flower makes as many actors as fit on each node). Flower's
        simulation config takes whole CPUs.
    client_gpus : float
        GPU fraction each client actor reserves (0 = CPU only). With ``ray_address``
        the GPUs are the cluster's: this machine need not have one.
    num_cpus : int, optional
        CPUs the local Ray may use in all (default: every core). Must be unset
        with ``ray_address``: a cluster has the CPUs its nodes were started with
        (``ray start --num-cpus``).
    object_store_mb : int
        Cap on the local Ray's object store (``RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES``).
        A cluster's object stores are sized by ``ray start`` on each node
        (``--object-store-memory``); joining one, this does not apply.
    timeout : float
        Seconds for the whole run before everything is shut down.
    ray_address : str, optional
        ``HOST:PORT`` of a running Ray cluster's head (``ray start --head
        --port=6379`` there), e.g. ``10.0.0.5:6379``; checked when the engine is
        built, before the data is prepared (a TCP connection within
        ``ray_connect_timeout`` seconds). ``None``: a local Ray of the run's own,
        even where this machine runs a ``ray start`` cluster.
    clients_per_node : int or "auto"
        Clients each virtual SuperNode serves: the ServerApp sends one message
        per node and round listing its sampled clients, trained one after
        another in one actor, so a round of hundreds of clients costs a few
        Flower messages and Ray round trips, not one per client (the numbers do
        not change, see ``tests/server/test_client_groups.py``). ``auto``: 1
        while a round samples at most 4 clients per worker (actor), else as
        many as give 4 nodes per worker.
    shared_run_dir : bool
        With ``ray_address``: the run folder is on a filesystem every node of
        the cluster shares (``hydra.run.dir=/shared/...``). Clients that keep
        state between rounds (``client.keep_optimizer_state`` with momentum,
        ``dp=opacus``) keep it under the run folder of the machine that trains
        them, and Ray may train a client on another node next round: such runs
        are refused on a cluster unless this says the folder is shared.
    """

    runs_colluding_attacks = True
    colluders_on_clients = False

    ray_connect_timeout = 5.0  # seconds for the TCP connection to the cluster's head

    def __init__(
        self,
        *,
        client_cpus: int = 1,
        client_gpus: float = 0.0,
        num_cpus: int | None = None,
        object_store_mb: int = 512,
        timeout: float = 86400,
        ray_address: str | None = None,
        clients_per_node: int | str = "auto",
        shared_run_dir: bool = False,
    ) -> None:
        if clients_per_node != "auto" and (
            isinstance(clients_per_node, bool) or not isinstance(clients_per_node, int) or clients_per_node < 1
        ):
            raise ValueError(f"engine.clients_per_node must be auto or a whole number >= 1, got {clients_per_node}")
        self.clients_per_node = clients_per_node
        self.shared_run_dir = shared_run_dir
        if isinstance(client_cpus, bool) or not isinstance(client_cpus, int) or client_cpus < 1:
            raise ValueError(
                f"engine.client_cpus must be a whole number >= 1 (Flower's simulation config), got {client_cpus}"
            )
        if not 0 <= client_gpus <= 1:
            raise ValueError(f"engine.client_gpus must be in [0, 1], got {client_gpus}")
        if client_gpus > 0 and ray_address is None:  # a cluster's GPUs are on its nodes, not necessarily here
            import torch

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
        self.object_store_mb = object_store_mb
        self.timeout = timeout
        self.ray_address: str | None = None
        self.num_cpus: int | None = num_cpus or os.cpu_count() or 1
        if ray_address is not None:
            try:
                host, port = parse_address(ray_address, "engine.ray_address")
            except EndpointError as err:
                raise EndpointError(
                    f"{err}. engine.ray_address is the HOST:PORT of a running Ray cluster's head, with the port "
                    "given to `ray start --head --port=6379` there: e.g. engine.ray_address=10.0.0.5:6379 (no ray:// "
                    "scheme), or null for a local Ray of the run's own"
                ) from None
            if num_cpus is not None:
                raise ValueError(
                    f"engine.num_cpus={num_cpus} sizes the local Ray the engine starts; joining the cluster at "
                    f"{ray_address} the run has the CPUs its nodes were started with (`ray start --num-cpus=N` on "
                    "each): set engine.num_cpus=null"
                )
            check_reachable(
                host, port, service="the Ray cluster's head", timeout=self.ray_connect_timeout,
                fix=f"start it there with `ray start --head --port={port}` (and `ray start --address="
                f"{url_host(host)}:{port}` on the other machines), check that this machine can reach it "
                "(firewall), or fix engine.ray_address",
            )  # fmt: skip
            self.ray_address, self.num_cpus = f"{url_host(host)}:{port}", None

    @property
    def workers(self) -> int:
        """Client actors that train at once: the local Ray's CPUs over each actor's (16 assumed on a cluster)."""
        if self.num_cpus is None:
            return 16
        return max(1, self.num_cpus // self.client_cpus)

    def num_nodes(self, num_clients: int, clients_per_round: int) -> int:
        """Virtual SuperNodes for the run: ``num_clients`` over ``clients_per_node`` (see the class docstring)."""
        if self.clients_per_node == "auto":
            if clients_per_round <= 4 * self.workers:
                return num_clients
            return min(num_clients, 4 * self.workers)
        return math.ceil(num_clients / int(self.clients_per_node))

    def check_run(self, cfg: dict[str, Any]) -> None:
        """Refuse, on a Ray cluster, clients that keep state between rounds unless the run folder is shared."""
        if self.ray_address is None or self.shared_run_dir:
            return
        from scripts.privacy import dp_mode

        client = cfg["client"]
        keeps = [
            name
            for name, on in (
                ("client.keep_optimizer_state=true", client["keep_optimizer_state"] and client["momentum"] > 0),
                ("dp=opacus", dp_mode(cfg["dp"]) == "opacus"),
            )
            if on
        ]
        if keeps:
            raise ValueError(
                f"{' and '.join(keeps)} keep each client's state between rounds under the run folder of the machine "
                f"that trains it, and on the Ray cluster at {self.ray_address} a client may train on another node "
                "next round: put the run folder on a filesystem every node shares (hydra.run.dir=/shared/...) and "
                "add engine.shared_run_dir=true, or set client.keep_optimizer_state=false"
            )

    def federation_config(self, num_clients: int, clients_per_round: int | None = None) -> dict[str, Any]:
        """Flower's simulation config for the run (``flwr run --federation-config``).

        Every ``init-args-*`` key goes to ``ray.init``, which refuses ``num_cpus``
        when it joins a cluster: ``init-args-num-cpus`` only for a local Ray.
        """
        config: dict[str, Any] = {
            "num-supernodes": self.num_nodes(num_clients, clients_per_round or num_clients),
            "backend": "ray",
            "client-resources-num-cpus": self.client_cpus,
            "client-resources-num-gpus": float(self.client_gpus),
            "init-args-logging-level": "ERROR",
            "init-args-log-to-driver": True,
        }
        if self.ray_address is None:
            config["init-args-num-cpus"] = self.num_cpus
        return config

    def ray_env(self) -> dict[str, str]:
        """The environment of the simulation SuperLink and so of the process that calls ``ray.init``.

        ``RAY_ADDRESS``: the cluster to join, else ``local``: without it ``ray.init()``
        joins the cluster of the last ``ray start`` on this machine (and refuses
        ``num_cpus``). ``RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES``: the local
        Ray's object store cap (a cluster's nodes have theirs from ``ray start``).
        """
        return {
            "RAY_ADDRESS": self.ray_address or "local",
            "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(self.object_store_mb * 1024 * 1024),
        }

    def run(self, run: Run, on_round: OnRound, *, verbose: bool = False) -> None:
        """Start a simulation SuperLink, submit the run, follow it to its end, stop everything."""
        cfg = run.cfg
        host = "127.0.0.1"
        with FlowerSession(Path(cfg["output_dir"]), host=host, port=free_port(host), env=self.ray_env()) as session:
            session.start_superlink(simulation=True)
            fed = self.federation_config(
                int(cfg["federation"]["num_clients"]), int(cfg["federation"]["clients_per_round"])
            )
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
    warm_clientapps : bool
        Fork each message's ClientApp process from a server that has imported
        Flower's runtime, torch and poisonlab once (:mod:`scripts.warm_clientapps`)
        instead of starting it cold; ``false``: Flower's own cold start.

    Colluding attacks run here with partial knowledge only (``colluders_on_clients``):
    each malicious SuperNode's ClientApp computes the attack itself from the benign
    updates the round's colluders share through the attacker service
    (:mod:`scripts.attacker_service`, port ``base_port + 1 + num_clients``).
    """

    runs_colluding_attacks = True
    colluders_on_clients = True

    def __init__(self, *, host: str = "127.0.0.1", base_port: int = 19091, client_threads: int = 1,
                 timeout: float = 1800, tls: bool = True, auth: bool = True,
                 attacker_window: float = 30.0, warm_clientapps: bool = True) -> None:  # fmt: skip
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
        self.warm_clientapps = bool(warm_clientapps)

    def run(self, run: Run, on_round: OnRound, *, verbose: bool = False) -> None:
        """Start a SuperLink and one SuperNode per client (and the attacker service), run, follow, shut down."""
        run_local_deployment(
            run.cfg, host=self.host, base_port=self.base_port, client_threads=self.client_threads,
            timeout=self.timeout, on_round=on_round, verbose=verbose, tls=self.tls, auth=self.auth,
            attacker_window=self.attacker_window, warm_clientapps=self.warm_clientapps,
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
