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

from scripts.certificates import make_node_keys, make_tls
from scripts.flower_run import FlowerSession, flower_bin, port_is_free


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
    """Run ``cfg`` as a real deployment on loopback and wait for it (see module docstring).

    ``tls``: the SuperLink serves HTTPS with a CA and certificate made for this
    run (``<run folder>/flower/certs``); ``auth``: every SuperNode gets its own
    key pair, registered with the SuperLink before the SuperNodes start.
    """
    num_clients = int(cfg["federation"]["num_clients"])
    link_port = base_port
    node_ports = [base_port + 1 + i for i in range(num_clients)]
    busy = [p for p in [link_port, *node_ports] if not port_is_free(host, p)]
    if busy:
        raise RuntimeError(f"ports {busy[:10]} on {host} are in use; choose another engine.base_port")
    threads = {"OMP_NUM_THREADS": str(client_threads), "MKL_NUM_THREADS": str(client_threads)}
    certs = Path(cfg["output_dir"]).resolve() / "flower" / "certs"
    files = make_tls(certs, [host]) if tls else None
    keys = [make_node_keys(certs / "supernodes", i) for i in range(num_clients)] if auth else []
    out_dir = Path(cfg["output_dir"])
    with FlowerSession(out_dir, host=host, port=link_port, env=threads, tls=files, auth=auth) as session:
        session.start_superlink(simulation=False)
        if keys:
            session.register([k.public for k in keys])
        malicious = set(cfg["attack"].get("malicious_clients", []))
        for i, port in enumerate(node_ports):
            role = "malicious" if i in malicious else "honest"
            argv = supernode_argv(f"{host}:{link_port}", host, port, i, num_clients, role,
                                  ca=files.ca if files else None, key=keys[i].private if keys else None)  # fmt: skip
            session.group.start(f"supernode-{i}", argv)
        session.run(cfg, timeout=timeout, on_round=on_round, verbose=verbose)
