"""A real Flower deployment on this machine: one SuperLink and one SuperNode process per client.

:func:`run_local_deployment` starts a plain ``flower-superlink`` and one
``flower-supernode`` per client on loopback (each told its partition and role
with ``--node-config 'partition-id=i num-partitions=N role="malicious"'``, the
role from the run's seeded threat model), then submits and follows the run the
way every engine does (:class:`scripts.flower_run.FlowerSession`). Flower's own
state and every process's log live in ``<run folder>/flower/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts.flower_run import FlowerSession, flower_bin, port_is_free


def supernode_argv(link: str, host: str, port: int, partition: int, num_partitions: int, role: str) -> list[str]:
    """The command line of one SuperNode: its SuperLink, its own ClientAppIo port, its partition and role."""
    return [flower_bin("flower-supernode"), "--insecure", "--superlink", link, "--host", host, "--port", str(port),
            "--node-config", f'partition-id={partition} num-partitions={num_partitions} role="{role}"']  # fmt: skip


def run_local_deployment(
    cfg: dict[str, Any], *, host: str, base_port: int, client_threads: int, timeout: float,
    on_round: Callable[[dict[str, Any]], None], verbose: bool = False,
) -> None:  # fmt: skip
    """Run ``cfg`` as a real deployment on loopback and wait for it (see module docstring)."""
    num_clients = int(cfg["federation"]["num_clients"])
    link_port = base_port
    node_ports = [base_port + 1 + i for i in range(num_clients)]
    busy = [p for p in [link_port, *node_ports] if not port_is_free(host, p)]
    if busy:
        raise RuntimeError(f"ports {busy[:10]} on {host} are in use; choose another engine.base_port")
    threads = {"OMP_NUM_THREADS": str(client_threads), "MKL_NUM_THREADS": str(client_threads)}
    with FlowerSession(Path(cfg["output_dir"]), host=host, port=link_port, env=threads) as session:
        session.start_superlink(simulation=False)
        malicious = set(cfg["attack"].get("malicious_clients", []))
        for i, port in enumerate(node_ports):
            role = "malicious" if i in malicious else "honest"
            session.group.start(
                f"supernode-{i}", supernode_argv(f"{host}:{link_port}", host, port, i, num_clients, role)
            )
        session.run(cfg, timeout=timeout, on_round=on_round, verbose=verbose)
