"""Round time of poisonlab against a minimal plain Flower app doing the same work.

Paper A's round (Tolpegin et al., ESORICS 2020, Fashion-MNIST): 50 clients, 5
sampled per round, IID equal partitions of 1,200 samples, ``FashionMnistCnn``,
1 local epoch, batch 4, SGD lr 0.001 momentum 0.9 with each client's momentum
kept across its participations, unweighted mean of the client models, central
evaluation on the 10,000 test images every round. Each sitting runs three apps,
back to back:

* plain Flower with a plain PyTorch loop: the ServerApp and ClientApp of this
  file, written with Flower's Message API only (``flwr.serverapp.ServerApp``,
  Flower's built-in ``flwr.serverapp.strategy.FedAvg`` with central evaluation
  through its ``evaluate_fn``, ``flwr.clientapp.ClientApp`` keeping its momentum
  buffers in ``context.state``), none of poisonlab's server, clients or
  strategies, and the local and test loops a PyTorch user writes: torchvision's
  dataset as tensors, a shuffling ``DataLoader``, NCHW, ``torch.no_grad``
  evaluation in batches of 256. This is the app a study would otherwise be
  written as, and the one poisonlab's round must not be slower than;
* the same plain Flower app running poisonlab's local and test loops
  (``common.training.train_epochs``, and ``confusion_matrix`` of the model's
  ``inference_copy``, channels-last, on poisonlab's memory-mapped data). Both
  sides then do identical arithmetic, so poisonlab's ratio to it is what
  poisonlab's server, clients and strategy cost on top of Flower, about 1
  within the noise;
* poisonlab: ``python -m scripts.run federation.num_rounds=R`` (the default run).

It prints, as a Markdown table, the steady-state seconds per round (median over
rounds 2..R, then over the sittings), poisonlab's ratio to each app in each
sitting, the start-up, round 0, the peak RSS and PSS sums of each run's
process tree and the accuracy after R rounds. ``--loops`` picks the plain
app's loops, ``--repeat`` the number of sittings.

How the plain app runs
----------------------
Exactly the way poisonlab's default engine (:class:`scripts.engines.Simulation`)
runs its own apps, so that the two differ only in the apps: a SuperLink started
with ``--simulation`` on a free loopback port, the app submitted with
``flwr run --stream`` and followed until its ServerApp writes ``summary.json``,
then every process of the run stopped, all through poisonlab's
:class:`scripts.flower_run.FlowerSession` (same SuperLink flags, same
submission, same stop). Only the submitted app differs: a folder holding a
``pyproject.toml`` and a copy of this file, which Flower packs into a FAB and
loads from there in the simulation process and in the Ray actors. The Ray
settings are those of ``conf/engine/simulation.yaml`` as the engine turns them
into Flower's federation config (backend ``ray``, ``client_cpus`` CPUs per
actor, as many actors as the CPUs allow, Ray's log level and object store
cap), except that the plain app always has one virtual SuperNode per client
(poisonlab's ``engine.clients_per_node=auto`` also gives 50 for this round on
two cores or more). ``flwr.simulation.run_simulation`` was not used: it runs
the ServerApp in the calling process without a SuperLink or ``flwr run``, a
path poisonlab never takes, so its start-up and process layout would not be
comparable.

The plain app runs in a process of its own (``--plain-run-dir``), timed from
its start to its end as poisonlab's process is, so start-up covers the same
things for both, and every run's process tree is sampled for its memory the
same way (``bench_federation.run_sampled``, every 0.5 s), so the sampler's own
cost weighs on every app alike.

How the times are taken
-----------------------
The same way for both: the ServerApp appends one line per round to
``metrics.jsonl`` with the ``time.perf_counter`` seconds since the previous
line, written when that round's central evaluation ends. A round's seconds
thus cover sampling, the clients' training, the transfers, the aggregation and
the central evaluation. Round 0 runs from the ServerApp's start to the end of
the initial model's evaluation (data, model, and for poisonlab its enrolment of
the SuperNodes). Start-up is the process's wall time minus every recorded
round, round 0 included: launching Python, the SuperLink, Ray and its actors,
and the teardown after the last round.

What is the same and what is not
--------------------------------
Same data (the same Fashion-MNIST files, read by torchvision or by
``common.data``), partitions (``common.partition.IidEqual``, seed 0), initial
model (``torch.manual_seed(0)`` then ``FashionMnistCnn``), local work (one
epoch of batch-4 SGD, each client's momentum kept) and central evaluation
(batches of 256 on CPU, 4,096 on CUDA). The loops differ as said above: the
plain loop is what poisonlab is compared against; poisonlab's own loops differ
from it by their channels-last memory format (``client.channels_last``) and
index batches (no ``DataLoader``), together about 20 % less time per client
on one CPU thread, and by evaluating the global model with its BatchNorm
folded into the convolutions (``evaluation.fold_batchnorm``,
``common.training.inference_copy``). ``FedAvg`` weights each model by its
``num-examples``; every client reports its 1,200 samples, so that is the
unweighted mean. The two sample different
clients (``FedAvg`` draws with Python's ``random``, seeded here with the run's
seed; poisonlab with its own generator), so the accuracies are in the same
range but not equal. poisonlab's client learning rate decays after a client's
10th participation (``client.lr_step``), which a client reaches after about
100 rounds; the plain app keeps it fixed.

Run: ``python benchmarks/bench_plain_flower.py [--rounds 6] [--repeat 3]``.
Timings on a shared machine vary by +-15 %: compare the ratios, taken in one
sitting.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.utils.data import DataLoader, TensorDataset

from common.data import load_dataset, prepare_dataset, spec_of, to_float
from common.models import FashionMnistCnn
from common.partition import IidEqual
from common.runtime import resolve_device
from common.training import confusion_matrix, inference_copy, train_epochs

ROOT = Path(__file__).resolve().parents[1]
DATASET = "fashion_mnist"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LAUNCH = "launch.json"
MODULE = Path(__file__).stem

#: paper A's setup, the plain app's Flower run config (``out-dir`` and ``data-root`` are set per run)
PAPER_A: dict[str, Any] = {
    "num-rounds": 6,
    "num-clients": 50,
    "clients-per-round": 5,
    "seed": 0,
    "lr": 0.001,
    "momentum": 0.9,
    "batch-size": 4,
    "epochs": 1,
    "loop": "plain",
    "out-dir": "",
    "data-root": "",
}

# --------------------------------------------------------------------------------------------------------------
# The plain Flower app
# --------------------------------------------------------------------------------------------------------------

server_app = ServerApp()
client_app = ClientApp()

#: the two local loops the plain app can run (run config ``loop``)
LOOPS = ("plain", "poisonlab")


@lru_cache(maxsize=2)
def client_partitions(root: str, num_clients: int, seed: int) -> tuple[np.ndarray, ...]:
    """Every client's training indices (IID, equal sizes), computed once per process."""
    labels = load_dataset(DATASET, root).train_y.numpy()
    return tuple(IidEqual()(labels, num_clients, seed))


@lru_cache(maxsize=4)
def torchvision_split(root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as a plain PyTorch user loads it: torchvision's dataset, images as floats in [0, 1], NCHW.

    Read once per process (the ServerApp, each Ray actor). Fashion-MNIST needs
    no normalisation beyond ``ToTensor``'s scaling (as in Tolpegin et al.'s code).
    """
    ds = torchvision.datasets.FashionMNIST(root, train=train, download=False)
    return ds.data.unsqueeze(1).float().div(255.0), ds.targets


def batch_seed(seed: int, cid: int, server_round: int) -> int:
    """The seed of client ``cid``'s batch order in ``server_round``, derived from the run's seed."""
    return int(np.random.SeedSequence((seed, cid, server_round)).generate_state(1, dtype=np.uint64)[0] >> 1)


def plain_local_training(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
    batch_size: int, epochs: int, generator: torch.Generator,
) -> float:  # fmt: skip
    """The textbook local loop: a shuffling ``DataLoader`` over the client's tensors, NCHW; its mean loss."""
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(yb), seen + len(yb)
    return total / max(seen, 1)


@torch.no_grad()
def plain_evaluation(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """The textbook test loop: accuracy and mean cross-entropy in batches, NCHW."""
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        loss += float(torch.nn.functional.cross_entropy(logits, y[start : start + batch_size], reduction="sum"))
        correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    return correct / len(y), loss / len(y)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch on this node's partition from the received global model; reply with the trained model.

    Each virtual SuperNode is one client (``partition-id``). Its SGD momentum
    buffers stay in ``context.state`` between its participations. The run
    config's ``loop`` picks the local loop: ``plain`` (:func:`plain_local_training`
    on torchvision's tensors) or ``poisonlab`` (``common.training.train_epochs``
    on poisonlab's memory-mapped data, channels-last, as poisonlab's clients).
    """
    cfg = context.run_config
    cid, num_clients = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    server_round = int(msg.content["config"]["server-round"])
    device = resolve_device("auto")
    poisonlab_loops = str(cfg["loop"]) == "poisonlab"
    idx = torch.from_numpy(client_partitions(str(cfg["data-root"]), num_clients, int(cfg["seed"]))[cid])
    if poisonlab_loops:
        data = load_dataset(DATASET, str(cfg["data-root"]))
        x, y = to_float(data.train_x[idx]).to(device), data.train_y[idx].to(device)
    else:
        train_x, train_y = torchvision_split(str(cfg["data-root"]), True)
        x, y = train_x[idx].to(device), train_y[idx].to(device)

    model = FashionMnistCnn()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.to(device, memory_format=torch.channels_last if poisonlab_loops else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg["lr"]), momentum=float(cfg["momentum"]))
    if "momentum" in context.state:
        saved = context.state["momentum"].to_torch_state_dict()
        for name, param in model.named_parameters():
            optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(saved[name])
    generator = torch.Generator().manual_seed(batch_seed(int(cfg["seed"]), cid, server_round))
    batch_size, epochs = int(cfg["batch-size"]), int(cfg["epochs"])
    if poisonlab_loops:
        stats = train_epochs(model, optimizer, x, y, spec=spec_of(DATASET), batch_size=batch_size, epochs=epochs,
                             generator=generator, channels_last=True)  # fmt: skip
        train_loss = stats["train_loss"]
    else:
        train_loss = plain_local_training(model, optimizer, x, y, batch_size=batch_size, epochs=epochs,
                                          generator=generator)  # fmt: skip
    buffers = {name: optimizer.state[p]["momentum_buffer"] for name, p in model.named_parameters()}
    context.state["momentum"] = ArrayRecord({name: b.detach().cpu().contiguous() for name, b in buffers.items()})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metrics = MetricRecord({"train-loss": train_loss, "num-examples": len(y)})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


class RoundLog:
    """Appends one line per evaluated round to ``metrics.jsonl``: its ``perf_counter`` seconds, accuracy and loss.

    Parameters
    ----------
    out_dir : Path
        The run folder.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / METRICS
        self.path.write_text("")
        self.last = time.perf_counter()

    def record(self, server_round: int, accuracy: float, loss: float) -> None:
        """Write the line of ``server_round`` (seconds since the previous line)."""
        now = time.perf_counter()
        line = {"round": server_round, "seconds": round(now - self.last, 4), "accuracy": accuracy, "loss": loss,
                "time": time.time()}  # fmt: skip
        self.last = now
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")


@server_app.main()
def serve(grid: Grid, context: Context) -> None:
    """Flower's FedAvg over paper A's setup, the global model evaluated centrally every round.

    Writes ``metrics.jsonl`` as the rounds end, then ``summary.json`` (also when
    the run fails, with ``status: failed``).
    """
    cfg = context.run_config
    out_dir = Path(str(cfg["out-dir"]))
    log = RoundLog(out_dir)
    try:
        seed, num_clients = int(cfg["seed"]), int(cfg["num-clients"])
        random.seed(seed)  # FedAvg samples the nodes with Python's random
        device = resolve_device("auto")
        poisonlab_loops = str(cfg["loop"]) == "poisonlab"
        if poisonlab_loops:
            data = load_dataset(DATASET, str(cfg["data-root"]))
            test_x, test_y = data.test_x.to(device), data.test_y.to(device)
        else:
            test_x, test_y = (t.to(device) for t in torchvision_split(str(cfg["data-root"]), False))
        torch.manual_seed(seed)
        model = FashionMnistCnn().to(device)
        initial = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        if poisonlab_loops:
            model.to(memory_format=torch.channels_last)
        batch_size = 4096 if device.type == "cuda" else 256

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            if poisonlab_loops:
                cm, loss = confusion_matrix(inference_copy(model), test_x, test_y, spec=spec_of(DATASET),
                                            batch_size=batch_size, channels_last=True, device=device)  # fmt: skip
                accuracy = float(cm.diag().sum()) / max(int(cm.sum()), 1)
            else:
                accuracy, loss = plain_evaluation(model, test_x, test_y, batch_size)
            log.record(server_round, accuracy, loss)
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        strategy = FedAvg(
            fraction_train=int(cfg["clients-per-round"]) / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=int(cfg["clients-per-round"]),
            min_available_nodes=num_clients,
        )
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(cfg["num-rounds"]),
                                evaluate_fn=evaluate)  # fmt: skip
        last = result.evaluate_metrics_serverapp[int(cfg["num-rounds"])]
        summary = {"status": "complete", "accuracy": float(last["accuracy"])}
    except Exception as err:
        (out_dir / SUMMARY).write_text(json.dumps({"status": "failed", "reason": f"{type(err).__name__}: {err}"}))
        raise
    (out_dir / SUMMARY).write_text(json.dumps(summary))


# --------------------------------------------------------------------------------------------------------------
# Launching and timing
# --------------------------------------------------------------------------------------------------------------


def app_pyproject(run_config: dict[str, Any]) -> str:
    """The ``pyproject.toml`` of the submitted app: this file's two apps and the run config keys."""
    from scripts.flower_run import flower_app_pyproject

    return flower_app_pyproject("plainflower", "1.0.0", "Paper A round as a plain Flower app (FedAvg)", MODULE,
                                run_config)  # fmt: skip


def run_plain_app(folder: Path) -> None:
    """Run the plain Flower app into ``folder`` as poisonlab's simulation engine runs its own apps.

    ``folder/launch.json`` holds the run config, the federation config and the
    environment of the SuperLink (see :func:`launch_settings`).
    """
    from scripts.flower_run import FlowerSession, free_port, toml_value

    launch = json.loads((folder / LAUNCH).read_text())

    class PlainFlowerSession(FlowerSession):
        """poisonlab's session with this file's app staged instead of poisonlab's."""

        def stage(self, cfg: dict[str, Any]) -> tuple[Path, Path]:
            app = self.folder / "app"
            app.mkdir(exist_ok=True)
            (app / "pyproject.toml").write_text(app_pyproject(cfg))
            shutil.copyfile(Path(__file__).resolve(), app / f"{MODULE}.py")
            run_config = self.folder / "run-config.toml"
            run_config.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in cfg.items()))
            return app, run_config

    def progress(line: dict[str, Any]) -> None:
        print(f"  plain Flower round {line['round']}: {line['seconds']:.2f}s  acc {line['accuracy']:.4f}", flush=True)

    host = "127.0.0.1"
    with PlainFlowerSession(folder, host=host, port=free_port(host), env=launch["env"]) as session:
        session.start_superlink(simulation=True)
        session.run(launch["run_config"], timeout=launch["timeout"], on_round=progress,
                    federation_config=launch["federation_config"])  # fmt: skip


def launch_settings(rounds: int, folder: Path, loop: str) -> dict[str, Any]:
    """The plain app's run config, and the Ray settings of poisonlab's default engine (``conf/engine/simulation.yaml``).

    Returns the run config (with local loop ``loop``), Flower's federation
    config (one virtual SuperNode per client), the SuperLink's environment, the
    run's timeout and how many SuperNodes poisonlab itself uses for this round.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import conf

    engine = instantiate(OmegaConf.load(Path(conf.__file__).parent / "engine" / "simulation.yaml"))
    n, k = int(PAPER_A["num-clients"]), int(PAPER_A["clients-per-round"])
    federation_config = {**engine.federation_config(n, k), "num-supernodes": n}
    root = prepare_dataset(DATASET)
    load_dataset(DATASET, str(root))  # decoded once on this machine before any run is timed
    run_config = {**PAPER_A, "num-rounds": rounds, "loop": loop, "out-dir": str(folder.resolve()),
                  "data-root": str(root)}  # fmt: skip
    return {"run_config": run_config, "federation_config": federation_config, "env": engine.ray_env(),
            "timeout": float(engine.timeout), "poisonlab_supernodes": engine.num_nodes(n, k),
            "actors": engine.workers}  # fmt: skip


def run_plain(rounds: int, folder: Path, loop: str) -> dict[str, Any]:
    """Time the plain Flower app with local loop ``loop`` in a process of its own (memory sampled as poisonlab's)."""
    from bench_federation import run_sampled

    folder.mkdir(parents=True, exist_ok=True)
    launch = launch_settings(rounds, folder, loop)
    (folder / LAUNCH).write_text(json.dumps(launch))
    fed = launch["federation_config"]
    print(f"  plain Flower ({loop} loop): {fed['num-supernodes']} SuperNodes, backend {fed['backend']}, "
          f"{fed['client-resources-num-cpus']} CPU per client actor, {launch['actors']} actors "
          f"(poisonlab: {launch['poisonlab_supernodes']} SuperNodes)", flush=True)  # fmt: skip
    run = run_sampled([sys.executable, str(Path(__file__).resolve()), "--plain-run-dir", str(folder)],
                      folder / METRICS)  # fmt: skip
    if run.returncode != 0:
        stream = folder / "flower" / "stream.log"
        tail = "\n".join(stream.read_text(errors="replace").splitlines()[-40:]) if stream.exists() else ""
        raise RuntimeError(f"the plain Flower app failed (exit {run.returncode}):\n{run.output[-2000:]}\n"
                           f"Flower's log ends with:\n{tail}")  # fmt: skip
    lines = [json.loads(x) for x in (folder / METRICS).read_text().splitlines()]
    return {**timing(lines, run.wall), "peak_mb": run.peak_mb, "peak_pss_mb": run.peak_pss_mb}


def timing(lines: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Round times, round 0, start-up (wall time minus every recorded round) and final accuracy of a run."""
    rounds = [x["seconds"] for x in lines if x["round"] > 0]
    round0 = sum(x["seconds"] for x in lines if x["round"] == 0)
    return {"rounds": rounds, "wall": wall, "round0": round0, "startup": wall - sum(rounds) - round0,
            "accuracy": lines[-1]["accuracy"]}  # fmt: skip


#: the table's rows: run key and its label
APPS = {
    "plain": "plain Flower, plain PyTorch loop",
    "plain-poisonlab-loop": "plain Flower, poisonlab's loop (Flower's cost alone)",
    "poisonlab": "poisonlab (default config)",
}


def sitting(rounds: int, loops: list[str], tmp: Path) -> dict[str, dict[str, Any]]:
    """One run of each app, back to back: the plain app with each of ``loops``, then poisonlab."""
    results: dict[str, dict[str, Any]] = {}
    for loop in loops:
        key = "plain" if loop == "plain" else "plain-poisonlab-loop"
        results[key] = run_plain(rounds, tmp / f"plain_{loop}", loop)
    from bench_federation import run_poisonlab

    ours = run_poisonlab([f"federation.num_rounds={rounds}"], tmp / "poisonlab")
    ours["round0"] = ours["wall"] - ours["startup"] - sum(ours["rounds"])
    results["poisonlab"] = ours
    for key, res in results.items():
        print(f"  {APPS[key]}: rounds {' '.join(f'{t:.2f}' for t in res['rounds'])}", flush=True)
    return results


def main() -> None:
    """Time the plain Flower app and poisonlab, and print the table (or, with ``--plain-run-dir``, run the app)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="sittings, each running every app once in turn; the table gives medians over them",
    )
    parser.add_argument(
        "--loops",
        nargs="+",
        choices=LOOPS,
        default=list(LOOPS),
        help="the plain app's local loops to run (default: both)",
    )
    parser.add_argument("--plain-run-dir", type=Path, default=None,
                        help="only run the plain Flower app into this folder, which holds its launch.json "
                             "(how the benchmark starts it in a process of its own)")  # fmt: skip
    args = parser.parse_args()
    if args.plain_run_dir is not None:
        run_plain_app(args.plain_run_dir)
        return
    if args.rounds < 2:
        parser.error(f"--rounds must be >= 2 (round 1 warms the actors and is left out), got {args.rounds}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_federation import steady

    print(f"== paper A Fashion-MNIST round, {args.rounds} rounds, {args.repeat} sitting(s): "
          f"plain Flower ({', '.join(args.loops)} loop), then poisonlab ==", flush=True)  # fmt: skip
    sittings = []
    for k in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"sitting {k + 1}", flush=True)
            sittings.append(sitting(args.rounds, args.loops, Path(tmp)))
    keys = list(sittings[0])
    per_round = {key: [steady(s[key]["rounds"]) for s in sittings] for key in keys}
    ratios = {key: [ours / theirs for ours, theirs in zip(per_round["poisonlab"], per_round[key], strict=True)]
              for key in keys}  # fmt: skip

    def med(key: str, field: str) -> float:
        return statistics.median(s[key][field] for s in sittings)

    print(
        "\n| app | s/round (median, rounds 2..R) | poisonlab / this app | start-up s | round 0 s "
        "| peak RSS sum MiB | peak PSS sum MiB | accuracy after R rounds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key in keys:
        ratio = " ".join(f"{r:.2f}" for r in ratios[key])
        print(f"| {APPS[key]} | {statistics.median(per_round[key]):.2f} | {ratio} | {med(key, 'startup'):.1f} "
              f"| {med(key, 'round0'):.1f} | {med(key, 'peak_mb'):.0f} | {med(key, 'peak_pss_mb'):.0f} "
              f"| {med(key, 'accuracy'):.4f} |")  # fmt: skip
    print(
        "\nper-round figures: the median over rounds 2..R of each run, then over the sittings; the ratio column "
        "gives poisonlab's round over this app's, one figure per sitting. start-up: process wall time minus every "
        "recorded round (launch, SuperLink, Ray, actors, teardown); round 0: the ServerApp's start to the initial "
        "model's evaluation (poisonlab's includes its enrolment)."
    )


if __name__ == "__main__":
    main()
