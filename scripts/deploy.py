"""A real Flower deployment: one SuperLink and one SuperNode process per client, on given addresses.

:func:`run_deployment` starts a plain ``flower-superlink`` and one
``flower-supernode`` per client where a :class:`Topology` says (an address,
a port, and optionally a command prefix such as ``ip netns exec <namespace>``
to run a process on another network stack), each SuperNode told its partition
and role with ``--node-config 'partition-id=i num-partitions=N role="malicious"'``
(the role from the run's seeded threat model), then submits and follows the run
the way every engine does (:class:`scripts.flower_run.FlowerSession`). TLS and
SuperNode authentication are on by default: a CA and SuperLink certificate and
one key pair per SuperNode are made for the run, and the public keys are
registered before the SuperNodes start. :func:`run_local_deployment` is the
loopback topology of ``engine=deployment``. Flower's own state, the
certificates and every process's log live in ``<run folder>/flower/``.

A colluding attack (ALIE, IPM, Min-Max, Min-Sum, Fang et al.'s) runs on the
malicious SuperNodes themselves with partial knowledge (Fang et al., USENIX
Security 2020): the launcher starts the attacker service
(:mod:`scripts.attacker_service`) where ``Topology.attackers`` says, with a
key made for the run (``<run folder>/flower/certs/attackers.key``), and only
the malicious SuperNodes learn its address and key, through their node config
(``attacker-service="host:port" attacker-key-file="<file>"``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.attacker_service import attacker_service_argv, make_key, service_bin
from scripts.certificates import make_node_keys, make_tls
from scripts.flower_run import FlowerSession, flower_bin, port_is_free, wait_for_port
from scripts.warm_clientapps import install_launcher, serve_argv, wait_until_serving

# SuperNodes started at once, each wave waited for until it serves: every SuperNode and the SuperExec it
# starts import Flower (about 1.5 s of CPU each); 100 of them at once on 2 cores starve the ones already
# up of the CPU for their heartbeats, and Flower reports them unavailable.
START_WAVE = max(1, os.cpu_count() or 1)
SUPERNODE_START_S = 120.0


@dataclass(frozen=True)
class Endpoint:
    """Where one process runs: the address and port it listens on, and a prefix for its command line.

    ``node_config``: more node config for a SuperNode started here (e.g.
    ``{"fault": "shape"}``, ``{"state-dir": "/var/lib/poisonlab"}``).
    """

    host: str
    port: int
    prefix: tuple[str, ...] = ()
    node_config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    """A SuperLink and one SuperNode per client (SuperNode ``i`` serves partition ``i``).

    ``attackers``: where the attacker service of a colluding attack listens
    (reachable from the malicious SuperNodes); needed only by colluding attacks.
    """

    superlink: Endpoint
    supernodes: list[Endpoint] = field(default_factory=list)
    attackers: Endpoint | None = None

    @classmethod
    def loopback(cls, host: str, base_port: int, num_clients: int) -> Topology:
        """The SuperLink on ``base_port``, SuperNode ``i``'s Runtime API on ``base_port + 1 + i``, the attacker
        service on ``base_port + 1 + num_clients``."""
        return cls(Endpoint(host, base_port), [Endpoint(host, base_port + 1 + i) for i in range(num_clients)],
                   Endpoint(host, base_port + 1 + num_clients))  # fmt: skip


def attacker_node_config(address: str, key_file: Path | str | None) -> dict[str, str]:
    """The node config that tells a malicious SuperNode where its attacker service is (and its key file)."""
    config = {"attacker-service": address}
    if key_file is not None:
        config["attacker-key-file"] = str(key_file)
    return config


def supernode_argv(
    link: str, host: str, port: int, partition: int, num_partitions: int, role: str, *,
    ca: Path | None = None, key: Path | None = None, node_config: dict[str, str] | None = None,
) -> list[str]:  # fmt: skip
    """The command line of one SuperNode: its SuperLink, its own Runtime API port, its partition and role.

    ``ca``: reach the SuperLink over HTTPS, trusting this CA (else ``--insecure``).
    ``key``: authenticate with this private key (its public key registered with the SuperLink).
    ``node_config``: more string-valued node config after the role (e.g. :func:`attacker_node_config`).
    """
    security = ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
    if key is not None:
        security += ["--auth-supernode-private-key", str(key)]
    pairs = [f"partition-id={partition}", f"num-partitions={num_partitions}", f'role="{role}"']
    for name, value in (node_config or {}).items():
        if '"' in value or "\\" in value:
            raise ValueError(f"node config {name}={value!r}: a value cannot hold a quote or a backslash")
        pairs.append(f'{name}="{value}"')
    return [flower_bin("flower-supernode"), *security, "--superlink", link, "--host", host, "--port", str(port),
            "--node-config", " ".join(pairs)]  # fmt: skip


def run_local_deployment(
    cfg: dict[str, Any], *, host: str, base_port: int, client_threads: int, timeout: float,
    on_round: Callable[[dict[str, Any]], None], verbose: bool = False, tls: bool = True, auth: bool = True,
    attacker_window: float = 30.0, warm_clientapps: bool = True,
) -> None:  # fmt: skip
    """Run ``cfg`` as a real deployment on loopback (``engine=deployment``) and wait for it."""
    topology = Topology.loopback(host, base_port, int(cfg["federation"]["num_clients"]))
    ports = [topology.superlink.port, *(node.port for node in topology.supernodes)]
    if colluders_on_clients(cfg) and topology.attackers is not None:
        ports.append(topology.attackers.port)
    busy = [p for p in ports if not port_is_free(host, p)]
    if busy:
        raise RuntimeError(f"ports {busy[:10]} on {host} are in use; choose another engine.base_port")
    run_deployment(cfg, topology, client_threads=client_threads, timeout=timeout, on_round=on_round,
                   verbose=verbose, tls=tls, auth=auth, attacker_window=attacker_window,
                   warm_clientapps=warm_clientapps)  # fmt: skip


def colluders_on_clients(cfg: dict[str, Any]) -> bool:
    """Whether ``cfg``'s attack is a colluding one that its malicious clients compute (through the attacker service).

    Raises ``ValueError`` for a colluding attack whose run was built for an
    engine that computes it on the server (the simulation's wrapper): such a
    run would not be attacked at all in a deployment.
    """
    from scripts.build import Run  # torch and the attacks: only for a run, not for poisonlab-node's imports

    run = Run(cfg)
    if run.attack_kind != "colluding":
        return False
    if not run.colluders_on_clients:
        raise ValueError(
            f"attack={cfg['attack'].get('name')} is a colluding attack and this run was built for an engine that "
            f"computes it on the server ({cfg['engine'].get('_target_')}); a deployment's malicious SuperNodes "
            "compute it themselves: build the run with engine=deployment attack.knowledge=partial"
        )
    return True


def run_deployment(
    cfg: dict[str, Any], topology: Topology, *, client_threads: int, timeout: float,
    on_round: Callable[[dict[str, Any]], None], verbose: bool = False, tls: bool = True, auth: bool = True,
    attacker_window: float = 30.0, warm_clientapps: bool = True,
) -> None:  # fmt: skip
    """Start ``topology``'s processes, run ``cfg`` on them and wait for it; stop every process at the end.

    ``tls``: the SuperLink serves HTTPS with a CA and certificate made for this
    run, valid for its address (``<run folder>/flower/certs``); ``auth``: every
    SuperNode gets its own key pair, registered with the SuperLink before the
    SuperNodes start (authentication needs TLS). With a colluding attack the
    attacker service runs at ``topology.attackers`` (always with a key made for
    the run: it needs no certificate) and answers each round after at most
    ``attacker_window`` seconds. ``warm_clientapps``: one warm ClientApp
    server per distinct command prefix (network stack) forks the ClientApp
    processes of the SuperNodes there (:mod:`scripts.warm_clientapps`).
    """
    num_clients = int(cfg["federation"]["num_clients"])
    if len(topology.supernodes) != num_clients:
        raise ValueError(f"the topology has {len(topology.supernodes)} SuperNodes for {num_clients} clients")
    if auth and not tls:
        raise ValueError("SuperNode authentication needs TLS (tls=True)")
    colluding = colluders_on_clients(cfg)
    if colluding and topology.attackers is None:
        raise ValueError(
            "the run's attack is a colluding one: give the Topology an attackers Endpoint (where the attacker "
            "service listens, reachable from the malicious SuperNodes)"
        )
    out_dir = Path(cfg["output_dir"])
    link = topology.superlink
    threads = {"OMP_NUM_THREADS": str(client_threads), "MKL_NUM_THREADS": str(client_threads)}
    certs = out_dir.resolve() / "flower" / "certs"
    files = make_tls(certs, [link.host]) if tls else None
    keys = [make_node_keys(certs / "supernodes", i) for i in range(num_clients)] if auth else []
    malicious = set(cfg["attack"].get("malicious_clients", []))
    with (
        FlowerSession(out_dir, host=link.host, port=link.port, env=threads, tls=files, auth=auth) as session,
        tempfile.TemporaryDirectory(prefix="poisonlab-") as sockets,  # a Unix socket path must be short
    ):
        session.start_superlink(simulation=False, prefix=list(link.prefix))
        prefixes = sorted({node.prefix for node in topology.supernodes}) if warm_clientapps else []
        launch_env = _start_clientapp_servers(session, prefixes, Path(sockets))
        if keys:
            session.register([k.public for k in keys])
        colluder_config: dict[str, str] = {}
        if colluding and topology.attackers is not None:
            colluder_config = _start_attacker_service(session, topology.attackers, certs, sorted(malicious),
                                                      attacker_window)  # fmt: skip
        wave: list[tuple[int, Endpoint, subprocess.Popen]] = []
        for i, node in enumerate(topology.supernodes):
            role = "malicious" if i in malicious else "honest"
            argv = supernode_argv(f"{link.host}:{link.port}", node.host, node.port, i, num_clients, role,
                                  ca=files.ca if files else None, key=keys[i].private if keys else None,
                                  node_config={**node.node_config,
                                               **(colluder_config if role == "malicious" else {})})  # fmt: skip
            proc = session.group.start(f"supernode-{i}", [*node.prefix, *argv], env=launch_env.get(node.prefix))
            wave.append((i, node, proc))
            if len(wave) == START_WAVE or i == num_clients - 1:
                for k, started, started_proc in wave:
                    _wait_for_supernode(session, k, started, started_proc)
                wave = []
        session.run(cfg, timeout=timeout, on_round=on_round, verbose=verbose)


def _wait_for_supernode(session: FlowerSession, i: int, node: Endpoint, proc: subprocess.Popen) -> None:
    """Wait until SuperNode ``i`` serves its Runtime API (on this network stack only: no prefix); fail with its log."""
    if node.prefix:
        return
    try:
        wait_for_port(node.host, node.port, SUPERNODE_START_S, proc)
    except (RuntimeError, TimeoutError) as err:
        log = session.group.log_dir / f"supernode-{i}.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
        raise RuntimeError(f"SuperNode {i} did not start: {err} ({log}):\n{tail}") from None


def _start_clientapp_servers(
    session: FlowerSession, prefixes: list[tuple[str, ...]], sockets: Path
) -> dict[tuple[str, ...], dict[str, str]]:
    """A warm ClientApp server per command prefix, started together, each waited for; each prefix's SuperNode env."""
    started = []
    for k, prefix in enumerate(prefixes):
        socket_path = sockets / f"clientapps-{k}.sock"
        proc = session.group.start(f"clientapps-{k}", [*prefix, *serve_argv(socket_path)])
        started.append((prefix, socket_path, proc, session.group.log_dir / f"clientapps-{k}.log"))
    launch_env = {}
    for prefix, socket_path, proc, log in started:
        wait_until_serving(socket_path, proc, log)
        launch_env[prefix] = install_launcher(session.group.log_dir / "bin", socket_path)
    return launch_env


def _start_attacker_service(
    session: FlowerSession, where: Endpoint, certs: Path, colluders: list[int], window: float
) -> dict[str, str]:
    """Start the attacker service in the session (stopped with it); the malicious SuperNodes' node config."""
    address = f"{where.host}:{where.port}"
    if ":" in where.host:
        raise ValueError(f"the attacker service listens on IPv4 or a host name only, got {where.host!r}")
    key = certs / "attackers.key"
    if not key.exists():
        make_key(key)
    argv = attacker_service_argv(where.host, where.port, key_file=key, colluders=colluders, window=window,
                                 program=service_bin())  # fmt: skip
    proc = session.group.start("attackers", [*where.prefix, *argv])
    wait_for_port(where.host, where.port, 30, proc)
    return attacker_node_config(address, key)
