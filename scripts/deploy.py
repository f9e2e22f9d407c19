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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.certificates import make_node_keys, make_tls
from scripts.flower_run import FlowerSession, flower_bin, port_is_free


@dataclass(frozen=True)
class Endpoint:
    """Where one process runs: the address and port it listens on, and a prefix for its command line."""

    host: str
    port: int
    prefix: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    """A SuperLink and one SuperNode per client (SuperNode ``i`` serves partition ``i``)."""

    superlink: Endpoint
    supernodes: list[Endpoint] = field(default_factory=list)

    @classmethod
    def loopback(cls, host: str, base_port: int, num_clients: int) -> Topology:
        """The SuperLink on ``base_port``, SuperNode ``i``'s Runtime API on ``base_port + 1 + i``."""
        return cls(Endpoint(host, base_port), [Endpoint(host, base_port + 1 + i) for i in range(num_clients)])


def supernode_argv(
    link: str, host: str, port: int, partition: int, num_partitions: int, role: str, *,
    ca: Path | None = None, key: Path | None = None,
) -> list[str]:  # fmt: skip
    """The command line of one SuperNode: its SuperLink, its own Runtime API port, its partition and role.

    ``ca``: reach the SuperLink over HTTPS, trusting this CA (else ``--insecure``).
    ``key``: authenticate with this private key (its public key registered with the SuperLink).
    """
    security = ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
    if key is not None:
        security += ["--auth-supernode-private-key", str(key)]
    return [flower_bin("flower-supernode"), *security, "--superlink", link, "--host", host, "--port", str(port),
            "--node-config", f'partition-id={partition} num-partitions={num_partitions} role="{role}"']  # fmt: skip


def run_local_deployment(
    cfg: dict[str, Any], *, host: str, base_port: int, client_threads: int, timeout: float,
    on_round: Callable[[dict[str, Any]], None], verbose: bool = False, tls: bool = True, auth: bool = True,
) -> None:  # fmt: skip
    """Run ``cfg`` as a real deployment on loopback (``engine=deployment``) and wait for it."""
    topology = Topology.loopback(host, base_port, int(cfg["federation"]["num_clients"]))
    ports = [topology.superlink.port, *(node.port for node in topology.supernodes)]
    busy = [p for p in ports if not port_is_free(host, p)]
    if busy:
        raise RuntimeError(f"ports {busy[:10]} on {host} are in use; choose another engine.base_port")
    run_deployment(cfg, topology, client_threads=client_threads, timeout=timeout, on_round=on_round,
                   verbose=verbose, tls=tls, auth=auth)  # fmt: skip


def run_deployment(
    cfg: dict[str, Any], topology: Topology, *, client_threads: int, timeout: float,
    on_round: Callable[[dict[str, Any]], None], verbose: bool = False, tls: bool = True, auth: bool = True,
) -> None:  # fmt: skip
    """Start ``topology``'s processes, run ``cfg`` on them and wait for it; stop every process at the end.

    ``tls``: the SuperLink serves HTTPS with a CA and certificate made for this
    run, valid for its address (``<run folder>/flower/certs``); ``auth``: every
    SuperNode gets its own key pair, registered with the SuperLink before the
    SuperNodes start (authentication needs TLS).
    """
    num_clients = int(cfg["federation"]["num_clients"])
    if len(topology.supernodes) != num_clients:
        raise ValueError(f"the topology has {len(topology.supernodes)} SuperNodes for {num_clients} clients")
    if auth and not tls:
        raise ValueError("SuperNode authentication needs TLS (tls=True)")
    out_dir = Path(cfg["output_dir"])
    link = topology.superlink
    threads = {"OMP_NUM_THREADS": str(client_threads), "MKL_NUM_THREADS": str(client_threads)}
    certs = out_dir.resolve() / "flower" / "certs"
    files = make_tls(certs, [link.host]) if tls else None
    keys = [make_node_keys(certs / "supernodes", i) for i in range(num_clients)] if auth else []
    malicious = set(cfg["attack"].get("malicious_clients", []))
    with FlowerSession(out_dir, host=link.host, port=link.port, env=threads, tls=files, auth=auth) as session:
        session.start_superlink(simulation=False, prefix=list(link.prefix))
        if keys:
            session.register([k.public for k in keys])
        for i, node in enumerate(topology.supernodes):
            role = "malicious" if i in malicious else "honest"
            argv = supernode_argv(f"{link.host}:{link.port}", node.host, node.port, i, num_clients, role,
                                  ca=files.ca if files else None, key=keys[i].private if keys else None)  # fmt: skip
            session.group.start(f"supernode-{i}", [*node.prefix, *argv])
        session.run(cfg, timeout=timeout, on_round=on_round, verbose=verbose)
