"""Operate a running poisonlab federation: register SuperNode keys, submit runs, any ``flwr`` command.

    python federation.py register [--keys DIR]
    python federation.py submit [--outputs DIR] [--follow] <poisonlab overrides>...
    python federation.py flwr <flwr arguments>...          e.g. ``flwr supernode ls``, ``flwr log 7 --stream``

In the compose files it is the ``tools`` service of ``compose.server.yaml`` (the poisonlab image, on the
SuperLink's network): ``docker compose run --rm tools submit federation.num_clients=5 ...``. It runs on any
machine with poisonlab installed as well. The SuperLink is ``--superlink`` / ``$POISONLAB_SUPERLINK``
(host:port), verified with the federation's CA ``--root-certificates`` / ``$POISONLAB_SUPERLINK_CA``, or
reached without TLS with ``--insecure`` / ``$POISONLAB_SUPERLINK_INSECURE=1`` (compose.insecure.yaml).

``register``: with ``--enable-supernode-auth`` a Flower 1.41 SuperLink admits only SuperNodes whose public
key was registered through its Control API (``flwr supernode register <key.pub> <connection>``; the
SuperLink's ``--auth-list-public-keys`` is refused). This registers every ``*.pub`` of a folder and counts a
key the SuperLink already holds as registered, so it can be rerun after adding SuperNodes.

``submit``: composes and validates the config exactly as ``poisonlab <overrides>`` does
(:func:`scripts.run.prepare`), checks it against the federation it is sent to (every container reads the
data from the same root, the run's clients and malicious clients are the SuperNodes' partitions and roles,
the ServerApp can write the run folder), and submits it with ``flwr run`` as the one-file app that
``poisonlab engine=deployment`` submits, the resolved config as run config ``poisonlab-config``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.flower_run import CONNECTION, flower_bin, flower_env, register_keys, write_connection

EXIT_CONFIG = 2


def flwr_json(args: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> dict[str, Any]:
    """Run ``flwr <args> --format json``; its JSON answer (failures answer ``success: false`` too)."""
    out = subprocess.run(
        [flower_bin("flwr"), *args, "--format", "json"], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"flwr {' '.join(args)} failed ({out.returncode}): {out.stdout}\n{out.stderr}") from None


def register(keys: Path, env: dict[str, str]) -> int:
    """Register every ``*.pub`` in ``keys`` with the SuperLink; 0 when each is registered (now or before)."""
    pubs = sorted(keys.glob("*.pub"))
    if not pubs:
        print(f"register: no *.pub in {keys} (certs/make_certs.sh puts them in superlink/authorized/)", file=sys.stderr)
        return 1
    try:
        register_keys(pubs, env, keys, already_ok=True)
    except RuntimeError as err:
        print(f"register: {err}", file=sys.stderr)
        return 1
    print(f"registered {', '.join(p.name for p in pubs)}")
    return 0


def parse_partitions(text: str) -> list[int]:
    """``"4"``, ``"3,4"`` or ``"3 4"`` -> sorted partition ids; empty -> none."""
    return sorted({int(p) for p in text.replace(",", " ").split()})


def federation_problems(
    cfg: dict[str, Any], *, data_root: str | None, num_partitions: int | None, malicious: list[int] | None
) -> list[str]:
    """What in a resolved poisonlab config contradicts the federation it would be submitted to.

    Parameters
    ----------
    cfg : dict
        The resolved config (``scripts.run.prepare(...).cfg``).
    data_root : str, optional
        The data root every container reads (``POISONLAB_DATA``, a read-only volume); ``dataset.root`` of
        the run must be it, since each process loads the dataset from the run's ``dataset.root``.
    num_partitions : int, optional
        How many SuperNodes the federation has (partitions ``0 .. N-1``).
    malicious : list of int, optional
        The partitions whose SuperNode was started with ``role="malicious"``.

    Returns
    -------
    list of str
        One sentence per problem, with the override that fixes it; empty when the run fits.
    """
    problems = []
    root = cfg["dataset"].get("root")
    if data_root is not None and root is not None and Path(root) != Path(data_root):
        problems.append(
            f"dataset.root resolved to {root}, not {data_root} where every container reads the data: put the "
            f"extracted dataset there (`poisonlab-data --root <host folder mounted at {data_root}>`)"
        )
    n = int(cfg["federation"]["num_clients"])
    if num_partitions is not None and n != num_partitions:
        problems.append(
            f"federation.num_clients={n} but the federation has {num_partitions} SuperNodes "
            f"(partitions 0..{num_partitions - 1}): add federation.num_clients={num_partitions}"
        )
    attack = cfg.get("attack", {})
    if malicious is not None and "_target_" in attack:
        drawn = sorted(int(c) for c in attack.get("malicious_clients", []))
        if drawn != malicious:
            ids = ",".join(str(c) for c in malicious)
            problems.append(
                f"the run's malicious clients are {drawn} but the SuperNodes with role=malicious serve partitions "
                f"{malicious}: add attack.num_malicious={len(malicious)} '+attack.malicious_clients=[{ids}]'"
            )
    if "_target_" in attack and colluding_on_the_server(cfg):
        problems.append(
            f"attack={attack.get('name')} is a colluding attack, which the malicious ClientApps of a container "
            "federation compute themselves through the attacker service (the ServerApp would otherwise compute "
            "it from every update it sees): add engine=deployment attack.knowledge=partial"
        )
    return problems


def colluding_on_the_server(cfg: dict[str, Any]) -> bool:
    """Whether the run's attack is a colluding one that its engine leaves to the ServerApp (not engine=deployment)."""
    from hydra.utils import get_object

    from attacks.registry import kind_of
    from scripts.build import Run

    try:
        kind = kind_of(get_object(cfg["attack"]["_target_"]))
    except Exception:  # noqa: BLE001 (resolve() has checked a real config; an unknown target is no colluding attack)
        return False
    return kind == "colluding" and not Run(cfg).colluders_on_clients


def resolve(overrides: list[str], out_dir: Path) -> dict[str, Any]:
    """The resolved config of ``poisonlab <overrides>`` for run folder ``out_dir`` (raises on a config error)."""
    from hydra import compose, initialize_config_module

    from scripts.run import prepare

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return prepare(cfg, out_dir).cfg


def submit(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Validate ``args.overrides`` as ``poisonlab`` does, check them against the federation, ``flwr run`` them."""
    from common.data import DataMissingError
    from common.runtime import CONFIG_KEY
    from scripts.config import ConfigError
    from scripts.flower_run import app_pyproject

    overrides = list(args.overrides)
    data_root = os.environ.get("POISONLAB_DATA") if args.data_root is None else args.data_root
    if data_root and not any(o.lstrip("+~").startswith("dataset.root=") for o in overrides):
        overrides.append(f"dataset.root={data_root}")
    now = time.localtime()
    out_dir = args.outputs / time.strftime("%Y-%m-%d", now) / time.strftime("%H-%M-%S", now)
    try:
        cfg = resolve(overrides, out_dir)
    except (ConfigError, DataMissingError) as err:
        print(f"submit: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    problems = federation_problems(
        cfg, data_root=data_root or None, num_partitions=args.num_partitions, malicious=args.malicious
    )
    if args.outputs.is_dir():  # the ServerApp's folder when submitting beside it (the tools service)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            problems.append(f"{args.outputs} is not writable by uid {os.getuid()}, the ServerApp's user: chown it")
    if problems:
        print("submit: the run does not fit this federation:\n  " + "\n  ".join(problems), file=sys.stderr)
        return EXIT_CONFIG
    with tempfile.TemporaryDirectory(prefix="poisonlab-submit-") as tmp:
        work = Path(tmp)
        app = work / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(app_pyproject())
        run_config = work / "run-config.toml"
        run_config.write_text(f"{CONFIG_KEY} = {json.dumps(json.dumps(cfg))}\n")
        answer = flwr_json(["run", str(app), CONNECTION, "--run-config", str(run_config)], env, cwd=work)
    if not answer.get("success") or "run-id" not in answer:
        print(f"submit: flwr run was refused: {answer}", file=sys.stderr)
        return 1
    run_id = answer["run-id"]
    print(f"submitted run {run_id}; its folder: {cfg['output_dir']}")
    if not args.follow:
        print(f"follow it: federation.py flwr log {run_id} --stream")
        return 0
    return subprocess.run([flower_bin("flwr"), "log", str(run_id), CONNECTION, "--stream"], env=env).returncode


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--superlink", default=env("POISONLAB_SUPERLINK", "127.0.0.1:19091"),
                   help="the SuperLink's host:port ($POISONLAB_SUPERLINK)")  # fmt: skip
    p.add_argument("--root-certificates", default=env("POISONLAB_SUPERLINK_CA") or None,
                   help="the federation's CA certificate ($POISONLAB_SUPERLINK_CA)")  # fmt: skip
    p.add_argument("--insecure", action="store_true", default=env("POISONLAB_SUPERLINK_INSECURE", "") == "1",
                   help="no TLS ($POISONLAB_SUPERLINK_INSECURE=1; compose.insecure.yaml)")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register every *.pub of a folder with the SuperLink")
    reg.add_argument("--keys", type=Path, default=Path("/app/authorized"), help="folder of public keys")
    sm = sub.add_parser("submit", help="validate a poisonlab config and submit it as a run")
    sm.add_argument("--outputs", type=Path, default=Path("/outputs"),
                    help="where the ServerApp writes run folders (<outputs>/<date>/<time>)")  # fmt: skip
    sm.add_argument("--data-root", default=None, help="data root of every container (default: $POISONLAB_DATA)")
    sm.add_argument("--num-partitions", type=int, default=int(env("NUM_PARTITIONS") or 0) or None,
                    help="the federation's SuperNode count ($NUM_PARTITIONS)")  # fmt: skip
    sm.add_argument("--malicious", type=parse_partitions, default=env("MALICIOUS_PARTITIONS"),
                    help='partitions of the role="malicious" SuperNodes ($MALICIOUS_PARTITIONS)')  # fmt: skip
    sm.add_argument("--follow", action="store_true", help="stream the run's log until it ends")
    sm.add_argument("overrides", nargs="*", help="poisonlab overrides, as on the poisonlab command line")
    fl = sub.add_parser("flwr", help="any flwr command against the SuperLink (default connection: poisonlab)")
    fl.add_argument("flwr_args", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args, extra = cli.parse_known_args(argv)  # `flwr --version`: argparse leaves leading options of REMAINDER
    if extra and args.command != "flwr":
        cli.error(f"unrecognized arguments: {' '.join(extra)}")
    with tempfile.TemporaryDirectory(prefix="poisonlab-flwr-") as home:
        ca = None if args.insecure else Path(args.root_certificates).resolve() if args.root_certificates else None
        if ca is None and not args.insecure:
            cli.error("give the federation's CA (--root-certificates / $POISONLAB_SUPERLINK_CA) or --insecure")
        write_connection(Path(home), args.superlink, ca)
        env = flower_env(Path(home))
        if args.command == "register":
            return register(args.keys, env)
        if args.command == "submit":
            return submit(args, env)
        return subprocess.run([flower_bin("flwr"), *extra, *args.flwr_args], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
