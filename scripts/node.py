"""``poisonlab-node``: the processes of a real federation on several machines, without containers.

    poisonlab-node certs --out DIR --host ADDR [--host ADDR2 ...] --supernodes N [--days D]
    poisonlab-node superlink --host ADDR [--port P] (--certs DIR | --insecure) [--no-auth] [--state DIR]
    poisonlab-node supernode --superlink HOST:PORT --partition-id I --num-partitions N [--role honest|malicious]
                             [--port P] (--ca FILE [--key FILE] | --insecure) [--node-config EXTRA] [--threads T]
                             [--cold-clientapps]

``certs`` makes what a secured federation needs (:mod:`scripts.certificates`, the
same files as ``engine=deployment`` makes for one run) in the layout of
``docker/certs/make_certs.sh``: ``DIR/superlink/`` (``ca.crt``, ``server.crt``,
``server.key``, ``authorized/supernode-<i>.pub``) stays on the SuperLink's
machine, ``DIR/supernodes/`` (``ca.crt``, ``supernode-<i>.key`` / ``.pub``) is
where SuperNode ``i``'s machine takes its CA and key from. ``superlink`` runs
``flower-superlink`` with the flags of ``engine=deployment``
(:func:`scripts.flower_run.superlink_argv`) and, with authentication (on with
``--certs``), registers every ``authorized/*.pub`` once it listens.
``supernode`` runs ``flower-supernode`` with
:func:`scripts.deploy.supernode_argv`, its partition and role in its node
config, and beside it a warm ClientApp server (:mod:`scripts.warm_clientapps`)
that forks each message's ClientApp process (``--cold-clientapps``: Flower's
cold start instead). Runs are submitted with ``poisonlab engine=remote``.

Each subcommand checks its arguments before starting anything (exit 2 with
the problem and its fix), runs the Flower process in the foreground (its
output on this terminal), forwards SIGTERM, SIGINT and SIGHUP to it (and what
it spawned) and exits with its exit code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from flwr.common.config import parse_config_args

from scripts.certificates import TlsFiles, make_node_keys, make_tls
from scripts.deploy import supernode_argv
from scripts.endpoints import (
    WILDCARDS,
    EndpointError,
    certificate_names,
    check_certificate_names,
    check_host,
    check_port,
    check_private_key,
    load_certificate,
    parse_address,
    url_host,
)
from scripts.flower_run import flower_env, port_is_free, register_keys, superlink_argv, wait_for_port, write_connection
from scripts.warm_clientapps import running_server

DEFAULT_SUPERLINK_PORT = 19091  # as engine=deployment's base_port and docker/
DEFAULT_DAYS = 365  # validity of the CA and the SuperLink's certificate made by `certs`
DEFAULT_SUPERNODE_PORT = 9094  # Flower's default for a SuperNode's Runtime API (local to its machine)
NODE_CONFIG_KEYS = ("partition-id", "num-partitions", "role")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_USAGE = 2


def say(text: str) -> None:
    """A line of poisonlab-node's own on stderr (Flower's output goes to stdout and stderr as it comes)."""
    print(f"poisonlab-node: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------- certs


def make_federation_certs(
    out: Path, hosts: list[str], supernodes: int, days: int = DEFAULT_DAYS
) -> tuple[TlsFiles, list[Path]]:
    """The CA, the SuperLink's certificate for ``hosts`` (valid ``days``) and ``supernodes`` key pairs under ``out``.

    Returns
    -------
    tuple
        The SuperLink's TLS files and the SuperNodes' private keys.

    Raises
    ------
    EndpointError
        When ``out`` already holds a federation's files (a new CA would
        invalidate the copies on the other machines), a host is a wildcard,
        ``supernodes`` < 1 or ``days`` < 1.
    """
    if supernodes < 1:
        raise EndpointError(f"--supernodes={supernodes}: make at least one SuperNode key pair")
    if days < 1:
        raise EndpointError(f"--days={days}: the certificates must be valid for at least one day")
    for host in hosts:
        if host in WILDCARDS:
            raise EndpointError(
                f"--host {host} is a wildcard, not an address SuperNodes connect to: give the SuperLink machine's "
                "name or IP (repeat --host for each)"
            )
    link, nodes = out / "superlink", out / "supernodes"
    taken = [p for p in (link / "server.crt", link / "ca.crt", nodes / "ca.crt") if p.exists()]
    if taken:
        raise EndpointError(
            f"{out} already holds a federation's certificates ({taken[0]}); a new CA would invalidate the copies on "
            "the other machines: choose another --out, or delete that folder to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)  # the private keys inside; the layout of docker/certs/make_certs.sh
    tls = make_tls(link, [check_host(h, "--host") for h in hosts], valid_days=days)
    (link / "authorized").mkdir(exist_ok=True)
    nodes.mkdir(exist_ok=True)
    shutil.copyfile(tls.ca, nodes / "ca.crt")
    keys = []
    for i in range(supernodes):
        pair = make_node_keys(nodes, i)
        shutil.copyfile(pair.public, link / "authorized" / pair.public.name)
        keys.append(pair.private)
    return tls, keys


def certs_command(args: argparse.Namespace) -> int:
    """``poisonlab-node certs``: make the files, then say which go where."""
    out = Path(args.out).expanduser().resolve()
    tls, keys = make_federation_certs(out, args.host, args.supernodes, args.days)
    cert = load_certificate(tls.cert, "certificate")
    names = ", ".join(certificate_names(cert))
    print(f"made {tls.ca}, {tls.cert} (valid for {names} until {cert.not_valid_after_utc:%Y-%m-%d}) and "
          f"{len(keys)} SuperNode key pairs in {out / 'supernodes'}")  # fmt: skip
    print(f"SuperLink machine: keep {out / 'superlink'} (poisonlab-node superlink --certs {out} ...)")
    print(f"SuperNode i's machine: copy {out / 'supernodes' / 'ca.crt'} and supernodes/supernode-<i>.key "
          "(poisonlab-node supernode --ca ca.crt --key supernode-<i>.key ...)")  # fmt: skip
    print(f"the submitting machine: {out / 'superlink' / 'ca.crt'} (poisonlab engine=remote engine.ca=...)")
    return 0


# ----------------------------------------------------------------------------------------------- foreground


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_code(returncode: int) -> int:
    """A child's exit status as a shell reports it (killed by signal ``s``: ``128 + s``)."""
    return 128 - returncode if returncode < 0 else returncode


def foreground(argv: list[str], env: dict[str, str], ready: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run ``argv`` until it exits, forwarding SIGTERM, SIGINT and SIGHUP to it; its exit code.

    The process runs in a session of its own, so a signal reaches it (and the
    processes it spawned: the ServerApp or ClientApp processes) once, from here.
    ``ready(proc)`` runs once it is started (e.g. wait until it listens, register
    keys); if it raises, the process is stopped and the error goes on up, unless
    a forwarded signal is why it failed.
    """
    started: list[subprocess.Popen] = []
    forwarded: list[int] = []

    def forward(signum: int, frame: object) -> None:
        forwarded.append(signum)
        for proc in started:
            _signal_group(proc, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        started.append(proc)
        if forwarded:  # a signal came while it was being started
            _signal_group(proc, forwarded[-1])
        if ready is not None:
            try:
                ready(proc)
            except Exception:
                if forwarded:
                    return exit_code(proc.wait())
                raise
        return exit_code(proc.wait())
    except BaseException:
        for proc in started:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def flower_home(folder: Path | None) -> Iterator[Path]:
    """``FLWR_HOME`` for the process: ``folder`` (made), the environment's, or a temporary folder removed after."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
    elif os.environ.get("FLWR_HOME"):
        yield Path(os.environ["FLWR_HOME"])
    else:
        with tempfile.TemporaryDirectory(prefix="poisonlab-node-") as tmp:
            yield Path(tmp)


# ------------------------------------------------------------------------------------------------ superlink


def find_tls(certs: Path) -> TlsFiles:
    """The SuperLink's TLS files in ``certs`` (the folder ``certs --out`` made, or its ``superlink/``)."""
    certs = certs.expanduser().resolve()
    for folder in (certs / "superlink", certs):
        if (folder / "server.crt").is_file():
            files = TlsFiles(ca=folder / "ca.crt", cert=folder / "server.crt", key=folder / "server.key")
            for path in (files.ca, files.key):
                if not path.is_file():
                    raise EndpointError(f"{path}: no such file (beside {files.cert}); make the certificates again")
            load_certificate(files.ca, "--certs: CA")
            return files
    raise EndpointError(
        f"--certs {certs}: no server.crt in {certs / 'superlink'} or {certs}: make them with "
        f"poisonlab-node certs --out {certs} --host <this machine's address> --supernodes <N>"
    )


def superlink_command(args: argparse.Namespace) -> int:
    """``poisonlab-node superlink``: check, start ``flower-superlink``, register the SuperNode keys, wait."""
    host = check_host(args.host, "--host")
    port = check_port(args.port, "--port")
    if (args.certs is None) == (not args.insecure):
        raise EndpointError("give one of --certs DIR (TLS, from poisonlab-node certs) or --insecure (trusted networks)")
    if args.insecure and args.auth:
        raise EndpointError("SuperNode authentication (--auth) needs TLS: give --certs DIR instead of --insecure")
    auth = not args.insecure if args.auth is None else args.auth
    local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # where this machine reaches it (as Flower does)
    tls = find_tls(Path(args.certs)) if args.certs is not None else None
    keys: list[Path] = []
    if tls is not None:
        check_certificate_names(tls.cert, local)
    if auth:
        assert tls is not None
        keys = sorted((tls.cert.parent / "authorized").glob("*.pub"))
        if not keys:
            say(f"warning: no *.pub in {tls.cert.parent / 'authorized'}: no SuperNode can join until its key is "
                "registered (flwr supernode register <key.pub>)")  # fmt: skip
    if not port_is_free(host, port):
        raise EndpointError(f"cannot listen on {url_host(host)}:{port}: the port is in use or {host} is not an "
                            "address of this machine; choose another --port or --host")  # fmt: skip
    state = Path(args.state).expanduser().resolve() if args.state else None
    argv = superlink_argv(host, port, simulation=False, tls=tls, auth=auth)
    if state is not None:
        argv += ["--database", str(state / "state.db")]
    with flower_home(state / "home" if state else None) as home:
        env = flower_env(home)
        write_connection(home, f"{url_host(local)}:{port}", tls.ca if tls else None)

        def ready(proc: subprocess.Popen) -> None:
            wait_for_port(local, port, 60, proc)
            if keys:
                register_keys(keys, env, home, already_ok=True)
            security = "TLS" if tls else "without TLS: --insecure"
            registered = f", SuperNode authentication: {len(keys)} keys registered" if auth else ""
            say(f"SuperLink ready on {url_host(host)}:{port} ({security}{registered})")

        return foreground(argv, env, ready)


# ------------------------------------------------------------------------------------------------ supernode


def node_config_extra(extra: str | None) -> str:
    """Extra ``--node-config`` pairs, parsed as Flower parses them; partition-id, num-partitions, role refused."""
    if not extra:
        return ""
    try:
        parsed = parse_config_args([extra])
    except Exception as err:  # Flower raises ValueError or TOML errors
        raise EndpointError(f"--node-config {extra!r} does not parse ({err}): write key=value pairs, strings "
                            'in double quotes, e.g. state-dir="/var/lib/poisonlab"') from None  # fmt: skip
    if not parsed:
        raise EndpointError(f"--node-config {extra!r} has no key=value pair")
    clash = [k for k in NODE_CONFIG_KEYS if k in parsed]
    if clash:
        raise EndpointError(f"--node-config sets {clash}: use --partition-id, --num-partitions and --role for them")
    return extra


def supernode_command(args: argparse.Namespace) -> int:
    """``poisonlab-node supernode``: check, then run ``flower-supernode`` until it exits."""
    link_host, link_port = parse_address(args.superlink, "--superlink")
    port = check_port(args.port, "--port")
    if args.num_partitions < 1 or not 0 <= args.partition_id < args.num_partitions:
        raise EndpointError(f"--partition-id {args.partition_id} is not in 0..{args.num_partitions - 1} "
                            f"(--num-partitions {args.num_partitions})")  # fmt: skip
    if args.insecure and args.key is not None:
        raise EndpointError("SuperNode authentication (--key) needs TLS: give --ca <the federation's ca.crt> "
                            "instead of --insecure")  # fmt: skip
    if (args.ca is None) == (not args.insecure):
        raise EndpointError("give one of --ca FILE (the federation's ca.crt, TLS) or --insecure (a SuperLink "
                            "started with --insecure)")  # fmt: skip
    ca = Path(args.ca).expanduser().resolve() if args.ca else None
    if ca is not None:
        load_certificate(ca, "--ca")
    key = check_private_key(Path(args.key), "--key").resolve() if args.key else None
    extra = node_config_extra(args.node_config)
    if args.threads is not None and args.threads < 1:
        raise EndpointError(f"--threads {args.threads}: give a whole number >= 1")
    if not port_is_free("127.0.0.1", port):
        raise EndpointError(f"port {port} on 127.0.0.1 is in use (another SuperNode?): give each SuperNode "
                            "on a machine its own --port")  # fmt: skip
    argv = supernode_argv(f"{url_host(link_host)}:{link_port}", "127.0.0.1", port, args.partition_id,
                          args.num_partitions, args.role, ca=ca, key=key)  # fmt: skip
    if extra:
        at = argv.index("--node-config") + 1
        argv[at] = f"{argv[at]} {extra}"
    threads = {} if args.threads is None else {v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with flower_home(None) as home, warm_clientapps(not args.cold_clientapps) as launch_env:
        say(f"SuperNode {args.partition_id} of {args.num_partitions} ({args.role}) connecting to {args.superlink}")
        return foreground(argv, {**flower_env(home, threads), **launch_env})


@contextmanager
def warm_clientapps(enabled: bool) -> Iterator[dict[str, str]]:
    """A warm ClientApp server for this SuperNode (:mod:`scripts.warm_clientapps`) and the environment to use it."""
    if not enabled:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="poisonlab-node-") as folder, running_server(Path(folder)) as env:
        yield env


# ---------------------------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    """The ``poisonlab-node`` command line."""
    cli = argparse.ArgumentParser(
        prog="poisonlab-node",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    sub = cli.add_subparsers(dest="command", required=True)

    certs = sub.add_parser("certs", help="make the CA, the SuperLink's certificate and SuperNode key pairs")
    certs.add_argument("--out", required=True, help="folder to make (superlink/ and supernodes/ inside)")
    certs.add_argument("--host", action="append", required=True,
                       help="a name or IP the SuperLink is reached at (repeat for each)")  # fmt: skip
    certs.add_argument("--supernodes", type=int, required=True, help="how many SuperNode key pairs")
    certs.add_argument("--days", type=int, default=DEFAULT_DAYS,
                       help=f"validity of the CA and certificate (default {DEFAULT_DAYS})")  # fmt: skip

    link = sub.add_parser("superlink", help="run flower-superlink (registers the SuperNode keys)")
    link.add_argument("--host", required=True, help="address to listen on (0.0.0.0: every interface)")
    link.add_argument(
        "--port", type=int, default=DEFAULT_SUPERLINK_PORT,
        help=f"its one port: Fleet, Control and Runtime APIs (default {DEFAULT_SUPERLINK_PORT})",
    )  # fmt: skip
    link.add_argument("--certs", help="the folder poisonlab-node certs made (or its superlink/)")
    link.add_argument("--insecure", action="store_true", help="no TLS, no authentication (trusted networks only)")
    link.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                      help="SuperNode authentication (default: on with --certs)")  # fmt: skip
    link.add_argument("--state", help="keep Flower's state (registrations, runs) here across restarts")

    node = sub.add_parser("supernode", help="run flower-supernode for one partition")
    node.add_argument("--superlink", required=True, help="the SuperLink's HOST:PORT")
    node.add_argument("--partition-id", type=int, required=True, help="the client id this SuperNode serves")
    node.add_argument("--num-partitions", type=int, required=True, help="the federation's number of clients")
    node.add_argument("--role", choices=("honest", "malicious"), default="honest")
    node.add_argument(
        "--port", type=int, default=DEFAULT_SUPERNODE_PORT,
        help=f"its local Runtime API port (default {DEFAULT_SUPERNODE_PORT}; one per SuperNode on a machine)",
    )  # fmt: skip
    node.add_argument("--ca", help="the federation's ca.crt (TLS)")
    node.add_argument("--key", help="this SuperNode's private key, supernode-<i>.key (authentication)")
    node.add_argument("--insecure", action="store_true", help="no TLS (a SuperLink started with --insecure)")
    node.add_argument("--node-config", help="extra node config pairs, e.g. 'state-dir=\"/var/lib/poisonlab\"'")
    node.add_argument("--threads", type=int, help="torch threads of each ClientApp process (default: torch's)")
    node.add_argument("--cold-clientapps", action="store_true",
                      help="start each message's ClientApp process cold (Flower's way) instead of forking it from "
                           "a warm server that imported Flower, torch and poisonlab once")  # fmt: skip
    return cli


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "certs": certs_command,
    "superlink": superlink_command,
    "supernode": supernode_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; exit 2 with the problem and its fix on a bad argument."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except EndpointError as err:
        print(f"poisonlab-node {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, RuntimeError, TimeoutError) as err:
        print(f"poisonlab-node {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
