"""``poisonlab-node`` and ``engine=remote``: clear argument errors, and a federation of separate processes.

The end-to-end test does what a user does on several machines, on loopback:
``poisonlab-node certs``, then ``poisonlab-node superlink`` (TLS, SuperNode
authentication, keys registered by the command) and three ``poisonlab-node
supernode`` processes (SuperNode 2 with ``--role malicious``), each a real
process; a run built with ``engine=remote`` is submitted to that SuperLink and
completes. The engine refuses a CA that did not sign the SuperLink's certificate,
an ``insecure`` connection to a TLS SuperLink and malicious clients other than
the malicious SuperNode's before submitting anything, and a run it gives up on
(its timeout) is stopped on the SuperLink, which stays up for the next run.
SIGTERM to each ``poisonlab-node`` stops its Flower process and everything it
spawned; a fixture kills whatever is left, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from scripts.certificates import make_tls
from scripts.config import ConfigError
from scripts.endpoints import EndpointError, certificate_names
from scripts.engines import RemoteFederation
from scripts.flower_run import FlowerSession, free_port, marked_processes
from scripts.node import main
from tests.server.fake_grid import make_run

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
MARK = "POISONLAB_NODE_TEST"
RUN = ["federation.num_clients=3", "federation.clients_per_round=3", "federation.num_rounds=2",
       "federation.connect_timeout=60", "attack=label_flip", "attack.num_malicious=1",
       "+attack.malicious_clients=[2]", "seed=1"]  # fmt: skip


def node(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``poisonlab-node <args>`` in this process: its exit code and what it wrote to stderr."""
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation's certificates and three SuperNode key pairs, made by ``poisonlab-node certs``."""
    out = tmp_path_factory.mktemp("fed") / "certs"
    assert main(["certs", "--out", str(out), "--host", HOST, "--supernodes", "3"]) == 0
    return out


def test_certs_make_the_make_certs_sh_layout_and_never_overwrite_a_federation(certs, capsys):
    link, nodes = certs / "superlink", certs / "supernodes"
    assert sorted(p.name for p in (link / "authorized").iterdir()) == [f"supernode-{i}.pub" for i in range(3)]
    assert (link / "ca.crt").read_bytes() == (nodes / "ca.crt").read_bytes()
    assert all((nodes / f"supernode-{i}.pub").read_bytes() == (link / "authorized" / f"supernode-{i}.pub").read_bytes()
               for i in range(3))  # fmt: skip
    assert {oct(p.stat().st_mode & 0o777) for p in [link / "server.key", *nodes.glob("*.key")]} == {"0o600"}
    assert oct(certs.stat().st_mode & 0o777) == "0o700"
    server = x509.load_pem_x509_certificate((link / "server.crt").read_bytes())
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 365  # --days' default
    assert {"127.0.0.1", "localhost"} <= set(certificate_names(server))
    before = (link / "ca.crt").read_bytes()
    code, err = node(capsys, "certs", "--out", str(certs), "--host", HOST, "--supernodes", "3")
    assert code == 2 and "already holds a federation's certificates" in err
    assert (link / "ca.crt").read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["supernode", "--superlink", "127.0.0.1:19091", "--partition-id", "0", "--num-partitions", "3",
          "--ca", "{certs}/supernodes/ca.crt", "--key", "{certs}/supernodes/missing.key"],
         "--key {certs}/supernodes/missing.key: no such file"),
        (["supernode", "--superlink", "127.0.0.1:19091", "--partition-id", "0", "--num-partitions", "3",
          "--ca", "{certs}/supernodes/ca.crt", "--key", "{certs}/supernodes/supernode-0.pub"],
         "is a public key: give the private key"),
        (["supernode", "--superlink", "127.0.0.1:19091", "--partition-id", "0", "--num-partitions", "3",
          "--insecure", "--key", "{certs}/supernodes/supernode-0.key"],
         "SuperNode authentication (--key) needs TLS: give --ca"),
        (["supernode", "--superlink", "127.0.0.1:19091", "--partition-id", "0", "--num-partitions", "3"],
         "give one of --ca FILE"),
        (["supernode", "--superlink", "superlink.lab", "--partition-id", "0", "--num-partitions", "3", "--insecure"],
         "--superlink='superlink.lab' is not HOST:PORT"),
        (["supernode", "--superlink", "127.0.0.1:70000", "--partition-id", "0", "--num-partitions", "3",
          "--insecure"], "--superlink=70000 is not a TCP port"),
        (["supernode", "--superlink", "127.0.0.1:19091", "--partition-id", "3", "--num-partitions", "3",
          "--insecure"], "--partition-id 3 is not in 0..2"),
        (["supernode", "--superlink", "127.0.0.1:19091", "--partition-id", "0", "--num-partitions", "3",
          "--insecure", "--node-config", 'role="honest"'], "use --partition-id, --num-partitions and --role"),
        (["superlink", "--host", HOST, "--insecure", "--auth"], "SuperNode authentication (--auth) needs TLS"),
        (["superlink", "--host", HOST, "--certs", "{certs}/nowhere"], "no server.crt in"),
        (["superlink", "--host", "10.9.8.7", "--certs", "{certs}"], "not for 10.9.8.7: make the certificates again"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_before_anything_starts(certs, capsys, args, message):
    code, err = node(capsys, *(a.format(certs=certs) for a in args))
    assert code == 2, err
    assert message.format(certs=certs) in err
    assert err.startswith(f"poisonlab-node {args[0]}: error: ")


def test_remote_engine_refuses_an_unreachable_superlink_before_the_data_is_prepared(tmp_path):
    port = free_port(HOST)  # nothing listens there
    empty = tmp_path / "no-data"  # a data root without the dataset: preparing it would fail differently
    with pytest.raises(ConfigError, match=rf"cannot reach the SuperLink at 127\.0\.0\.1:{port} .*poisonlab-node"):
        make_run(tmp_path, "engine=remote", f"engine.superlink={HOST}:{port}", "engine.insecure=true",
                 f"dataset.root={empty}")  # fmt: skip
    with pytest.raises(EndpointError, match="engine.ca is not set"):
        RemoteFederation(superlink=f"{HOST}:{port}")
    with pytest.raises(EndpointError, match=r"engine.superlink='10.0.0.5' is not HOST:PORT"):
        RemoteFederation(superlink="10.0.0.5", insecure=True)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``poisonlab-node`` processes (logs in ``tmp_path``); every one and all they spawned die at the end."""
    mark = f"{tmp_path}:{os.getpid()}"
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        with (tmp_path / f"{name}.log").open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scripts.node", *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, MARK: mark}, start_new_session=True,
            )  # fmt: skip
        started.append(proc)
        return proc

    start.mark = mark  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for proc in started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        deadline = time.monotonic() + 15
        while (left := marked_processes(MARK, mark)) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)


def wait_for_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Block until the log at ``path`` contains ``text``; fail with the log if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"{path.name} has no {text!r} (exit {proc.poll()}):\n{path.read_text()[-3000:]}")


def test_a_remote_run_completes_on_a_secured_federation_of_poisonlab_node_processes(
    tmp_path, certs, launch, fmnist_root
):
    port = free_port(HOST)
    link = launch("superlink", "superlink", "--host", HOST, "--port", str(port), "--certs", str(certs))
    wait_for_log(tmp_path / "superlink.log", "SuperLink ready", link)
    assert "3 keys registered" in (tmp_path / "superlink.log").read_text()
    nodes = [
        launch(f"supernode-{i}", "supernode", "--superlink", f"{HOST}:{port}", "--partition-id", str(i),
               "--num-partitions", "3", "--role", "malicious" if i == 2 else "honest", "--port", str(free_port(HOST)),
               "--ca", str(certs / "supernodes" / "ca.crt"), "--key", str(certs / "supernodes" / f"supernode-{i}.key"),
               "--threads", "1")
        for i in range(3)
    ]  # fmt: skip

    address = [f"engine.superlink={HOST}:{port}"]
    other_ca = make_tls(tmp_path / "other", [HOST]).ca
    with pytest.raises(ConfigError, match=f"presents a certificate that {other_ca} does not verify"):
        make_run(tmp_path / "refused", *RUN, "engine=remote", *address, f"engine.ca={other_ca}")
    with pytest.raises(ConfigError, match="serves TLS but engine.insecure=true"):
        make_run(tmp_path / "refused", *RUN, "engine=remote", *address, "engine.insecure=true")
    ca = f"engine.ca={certs / 'superlink' / 'ca.crt'}"
    with pytest.raises(ConfigError, match=r"malicious clients are \[2\] but the SuperNodes with --role malicious"):
        make_run(tmp_path / "refused", *RUN, "engine=remote", *address, ca, "engine.malicious=[0]")

    # a run that ends on this side (here: its timeout) is stopped on the SuperLink, which keeps running
    cut = make_run(tmp_path / "cut", *RUN, "engine=remote", *address, ca, "engine.timeout=8")
    with pytest.raises(TimeoutError, match="did not finish within engine.timeout=8"):
        cut.engine.run(cut, lambda row: None)
    run_id = int(re.search(r"Successfully started run (\d+)", (tmp_path / "cut/flower/stream.log").read_text())[1])
    probe = FlowerSession(tmp_path / "probe", host=HOST, port=port, trust=certs / "superlink" / "ca.crt")
    assert probe.status(run_id) == "finished:stopped"

    out = tmp_path / "run"
    run = make_run(out, *RUN, "engine=remote", *address, ca, "engine.malicious=[2]", "engine.timeout=120")
    rounds: list[dict] = []
    run.engine.run(run, rounds.append)

    lines = [json.loads(row) for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 1, 2] and [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["sampled"] == [0, 1, 2] and r["failed"] == {} for r in lines[1:])
    assert all(r["malicious_in_round"] == 1 for r in lines[1:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["malicious_clients"] == [2]
    assert not list((out / "flower").glob("superlink*.log"))  # the engine started no SuperLink of its own
    assert all(proc.poll() is None for proc in [link, *nodes])  # the federation outlives the run

    # SIGTERM to each poisonlab-node (not its group) reaches Flower's processes through it
    for proc in [*nodes, link]:
        proc.send_signal(signal.SIGTERM)
    codes = [proc.wait(timeout=30) for proc in [*nodes, link]]
    # Flower's own codes: 0, or the SIGTERM it re-raises after a graceful shutdown; never poisonlab-node killed
    assert all(code in (0, 128 + signal.SIGTERM) for code in codes), codes
    deadline = time.monotonic() + 10
    while marked_processes(MARK, launch.mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked_processes(MARK, launch.mark) == []
