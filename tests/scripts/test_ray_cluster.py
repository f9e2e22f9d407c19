"""``engine.ray_address``: a run joins a running two-node Ray cluster and trains its clients on both nodes.

The cluster is real (:class:`ray.cluster_utils.Cluster`: a head and one more
node on this machine, one CPU each, what ``ray start --head`` and ``ray start
--address`` make); the run is the command line's, with ``engine.ray_address``
the head's address and ``engine.client_cpus=1``, so Flower's actor pool has two
actors, necessarily one per node. Where each actor lived and which node ran each
client's training come from the cluster's GCS (its actor table and task events:
no dashboard needed). The same command without ``engine.ray_address``, run while
the cluster is up (it wrote ``/tmp/ray/ray_current_cluster`` as ``ray start``
does, which a bare ``ray.init()`` would join), starts a Ray of its own and gives
the same metrics.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.endpoints import EndpointError
from scripts.engines import Simulation
from tests.server.fake_grid import SMALL as FAKE_GRID_SMALL

SMALL = [*FAKE_GRID_SMALL, "engine.client_cpus=1"]  # the small federation of the ServerApp tests
OBJECT_STORE = 80 * 1024 * 1024  # Ray's minimum is 75 MiB


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "scripts.run", *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def read_lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def untimed(line: dict[str, Any]) -> dict[str, Any]:
    """A ``metrics.jsonl`` line without its wall-clock ``seconds``."""
    return {key: value for key, value in line.items() if key != "seconds"}


def ray_address_file() -> str:
    """Where ``ray start`` (and a test cluster) writes the address a bare ``ray.init()`` joins."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def process_tree(roots: set[int]) -> set[int]:
    """``roots`` and every process below them, from the parent ids in ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def alive(pids: set[int]) -> list[int]:
    """The processes of ``pids`` that still run (zombies count as gone)."""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            left.append(pid)
    return left


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head and one more node, one CPU and 80 MiB of object store each; shut down with every process it started."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    address_file = Path(ray_address_file())
    previous = address_file.read_text() if address_file.exists() else None
    node_args = {"num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False}
    made = None
    try:
        made = cluster_utils.Cluster(initialize_head=True, head_node_args=node_args)
        made.add_node(**node_args)
        made.wait_for_nodes()
    except Exception as err:  # noqa: BLE001 (any failure to start a cluster here is a reason to skip)
        if made is not None:
            made.shutdown()
        pytest.skip(f"Ray cannot start a two-node cluster on this machine: {type(err).__name__}: {err}")
    try:
        yield made
    finally:
        nodes = made.list_all_nodes()
        started = {info.process.pid for node in nodes for infos in node.all_processes.values() for info in infos}
        tree = process_tree(started)  # GCS, raylets, their workers and agents
        made.shutdown()
        if previous is not None and not address_file.exists():  # a `ray start` of someone else's: its address back
            address_file.write_text(previous)
        deadline = time.monotonic() + 20
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = alive(tree)
        assert not left, f"processes of the cluster still run: {left}"


@pytest.fixture(scope="module")
def joined(cluster: Any, fmnist_root: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The run on the cluster, and what the cluster's GCS recorded of it."""
    folder = tmp_path_factory.mktemp("joined")
    # two nodes of two clients each (one message per node and round): both actors train; one machine, so the run
    # folder (where the clients keep their momentum) is shared by both nodes
    run_cli(*SMALL, f"engine.ray_address={cluster.address}", "engine.clients_per_node=2", "engine.shared_run_dir=true",
            f"dataset.root={fmnist_root}", f"hydra.run.dir={folder}")  # fmt: skip
    state = cluster.global_state  # the GCS's tables, read without a driver or a dashboard
    actors = [a for a in state.actor_table(None).values() if a["ActorClassName"] == "ClientAppActor"]
    return {"folder": folder, "actors": actors, "task_events": task_events(state)}


def task_events(state: Any) -> list[Any]:
    """Every task event the cluster's GCS holds (``ray.timeline``'s source), as ``TaskEvents`` messages."""
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    return [gcs_pb2.TaskEvents.FromString(raw) for raw in accessor.get_task_events()]


def test_the_run_completes_on_the_cluster(joined: dict[str, Any]) -> None:
    folder = joined["folder"]
    lines = read_lines(folder)
    assert [line["round"] for line in lines] == [0, 1, 2]
    for line in lines[1:]:
        assert sorted(line["sampled"]) == [0, 1, 2, 3] and line["selected"] == line["sampled"]
        assert line["failed"] == {} and line["accuracy"] is not None
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2
    assert summary["final_accuracy"] == lines[2]["accuracy"]


def test_one_client_actor_per_node_and_both_nodes_train(cluster: Any, joined: dict[str, Any]) -> None:
    from ray.core.generated import common_pb2

    nodes = sorted(node.node_id for node in cluster.list_all_nodes())
    actors = joined["actors"]
    assert sorted(actor["Address"]["NodeID"] for actor in actors) == nodes  # two actors, one on each node
    finished = common_pb2.TaskStatus.Value("FINISHED")
    created, trained = [], Counter()
    for event in joined["task_events"]:
        info, update = event.task_info, event.state_updates
        if info.func_or_class_name == "ClientAppActor.__init__":
            created.append(dict(info.required_resources))
        elif info.func_or_class_name == "ClientAppActor.run" and finished in update.state_ts_ns:
            trained[update.node_id.hex()] += 1  # a ClientApp call (a client's round) that ran to its end there
    assert created == [{"CPU": 1.0}] * 2  # engine.client_cpus reached the cluster's scheduler
    assert sorted(trained) == nodes, trained
    assert sum(trained.values()) >= 4  # at least the first round's four clients (events of the last may be cut)


def test_without_ray_address_the_same_run_starts_its_own_ray_and_matches(
    cluster: Any, joined: dict[str, Any], fmnist_root: str, tmp_path: Path
) -> None:
    # the cluster is up and wrote the address file a bare ray.init() joins (and there refuses num_cpus)
    assert Path(ray_address_file()).read_text().strip() == cluster.address
    run_cli(*SMALL, f"dataset.root={fmnist_root}", f"hydra.run.dir={tmp_path}")
    local, remote = ([untimed(line) for line in read_lines(folder)] for folder in (tmp_path, joined["folder"]))
    assert local == remote  # every metric of every round: the same seed gives the same numbers on either Ray
    assert {a["ActorID"] for a in cluster.global_state.actor_table(None).values()} == {
        a["ActorID"] for a in joined["actors"]
    }  # no actor of the local run's on the cluster


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.0.0.5", "is not HOST:PORT"),
        ("ray://10.0.0.5:10001", "without a scheme"),
        ("fd00::5:6379", "write an IPv6 address in brackets"),
        ("10.0.0.5:70000", "is not a TCP port"),
    ],
)
def test_a_malformed_ray_address_is_refused_naming_the_fix(address: str, problem: str) -> None:
    with pytest.raises(EndpointError) as err:
        Simulation(ray_address=address)
    assert problem in str(err.value) and "ray start --head --port=6379" in str(err.value)


def test_clients_that_keep_state_need_a_shared_run_folder_on_a_cluster(cluster: Any) -> None:
    engine = Simulation(ray_address=cluster.address)
    keeps = {"client": {"keep_optimizer_state": True, "momentum": 0.9}, "dp": {"mode": "off"}}
    refused = r"client.keep_optimizer_state=true keep .* engine.shared_run_dir=true, or set client.keep_optimizer"
    with pytest.raises(ValueError, match=refused):
        engine.check_run(keeps)
    engine.check_run({"client": {"keep_optimizer_state": False, "momentum": 0.9}, "dp": {"mode": "off"}})
    Simulation(ray_address=cluster.address, shared_run_dir=True).check_run(keeps)
    Simulation().check_run(keeps)  # a local Ray: one machine


def test_num_cpus_is_refused_when_joining_a_cluster() -> None:
    with pytest.raises(ValueError, match=r"engine.num_cpus=2 .*ray start --num-cpus=N.*set engine.num_cpus=null"):
        Simulation(ray_address="10.0.0.5:6379", num_cpus=2)


def test_an_unreachable_head_stops_the_run_before_the_data_is_looked_for(tmp_path: Path) -> None:
    port = closed_port()
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "scripts.run", f"engine.ray_address=127.0.0.1:{port}",
         f"dataset.root={tmp_path / 'no-data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    shown = out.stdout + out.stderr
    assert out.returncode == 2, shown
    assert f"cannot reach the Ray cluster's head at 127.0.0.1:{port} (Connection refused)" in shown
    assert f"ray start --head --port={port}" in shown
    assert "no-data" not in shown  # the empty data root was never reached
    assert time.monotonic() - start < 60
