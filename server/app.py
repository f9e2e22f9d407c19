"""The poisonlab ServerApp (Flower Message API).

One run: enrol the SuperNodes (which client id each serves), build the global
model and the strategy (a rule inside ``RobustStrategy``), then run
``strategy.start`` with central evaluation of the global model after every
round, appending one line per round to ``metrics.jsonl``. At the end it writes
``summary.json`` and the plots.

Deployments load ``server.app:app``, which reads the resolved config from the
Flower run config (key ``poisonlab-config``); the simulation engine builds the
same app around the config with :func:`build_server_app`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from attacks.configured import bind_to_population, build_attack, build_threat, kind_of
from attacks.data import Backdoor, backdoor_test_set
from attacks.threat import ThreatModel
from common.data import to_float
from common.params import ModelCodec
from common.partition import class_counts
from common.runtime import (
    CONFIG_KEY,
    build_model,
    dataset_of,
    generator,
    partitions,
    resolve_device,
    uses_channels_last,
)
from common.training import confusion_matrix
from server.evaluate import detection_scores, metrics_from_confusion, targeted_metrics
from server.results import RunRecorder, write_plots, write_summary
from strategies.robust import RobustStrategy, build_rule

log = logging.getLogger("poisonlab")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Deployment entry point: the resolved config comes as Flower run config."""
    if CONFIG_KEY not in context.run_config:
        raise RuntimeError(
            f"run config has no {CONFIG_KEY!r}: submit runs with `poisonlab engine=deployment` "
            "(or flwr run --run-config with the resolved poisonlab config)"
        )
    run_federation(grid, json.loads(str(context.run_config[CONFIG_KEY])))


def build_server_app(cfg: dict[str, Any]) -> ServerApp:
    """A ServerApp bound to ``cfg`` (used by the simulation engine, in-process)."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg)

    return bound


def enrol_clients(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Wait for ``num_clients`` SuperNodes and learn which client id each one serves.

    Returns client id -> node id. Fails if a SuperNode is missing, a partition
    id is claimed twice or out of range, or the node config disagrees with the
    run's ``federation.num_clients``.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(nodes)} of federation.num_clients={num_clients} SuperNodes connected "
                f"within {timeout:.0f}s (federation.connect_timeout)"
            )
        time.sleep(0.5)
    query = RecordDict({"config": ConfigRecord({"ask": "enrolment"})})
    replies = grid.send_and_receive(
        [Message(query, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes], timeout=timeout
    )
    node_of: dict[int, int] = {}
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"SuperNode {reply.metadata.src_node_id} failed to enrol: {reply.error.reason}")
        info = reply.content["enrolment"]
        cid, claimed_n = int(info["partition-id"]), int(info["num-partitions"])
        if claimed_n not in (-1, num_clients) or not 0 <= cid < num_clients:
            raise RuntimeError(
                f"SuperNode {reply.metadata.src_node_id} has partition-id={cid}, num-partitions={claimed_n}, "
                f"but the run has federation.num_clients={num_clients}"
            )
        if cid in node_of:
            raise RuntimeError(f"partition-id={cid} is claimed by two SuperNodes")
        node_of[cid] = reply.metadata.src_node_id
    if len(node_of) != num_clients:
        missing = sorted(set(range(num_clients)) - set(node_of))
        raise RuntimeError(f"no SuperNode enrolled for client ids {missing[:20]}")
    return node_of


def threat_sampler(threat: ThreatModel, per_round: int, seed: int):
    """Each round's participants: the threat model's sampling (uniform without an attack), seeded."""

    def sample(server_round: int) -> list[int]:
        return threat.sample_round(server_round, per_round, generator(seed, server_round, 2))

    return sample


def colluding_hook(threat: ThreatModel, attack: Any, seed: int):
    """Server-side wrapper of an omniscient colluding attack (simulation only).

    In rounds of the attack window it replaces the rows of the malicious
    participants with what the attack computes from the round's honest rows.
    """

    def hook(server_round: int, client_ids: list[int], deltas: torch.Tensor) -> torch.Tensor:
        bad = [i for i, c in enumerate(client_ids) if threat.is_malicious(c)]
        good = [i for i, c in enumerate(client_ids) if not threat.is_malicious(c)]
        if not bad or not good or not threat.active(server_round):
            return deltas
        poisoned = attack(deltas[good], len(bad), generator=generator(seed, server_round, 5))
        out = deltas.clone()
        out[bad] = poisoned.to(deltas.dtype)
        return out

    return hook


def root_set_update(cfg: dict[str, Any], codec: ModelCodec, root_size: int, seed: int):
    """FLTrust's server update: local training of the global model on a clean root set.

    The root set is a seeded random draw of ``root_size`` training samples (Cao et
    al. sample it from the training distribution); the server trains on it
    with the clients' own local-training settings and returns the delta.
    """
    from common.config import ClientSettings, typed_section
    from common.training import train_epochs

    data = dataset_of(cfg)
    settings = typed_section(cfg["client"], ClientSettings, "client")
    idx = torch.randperm(len(data.train_y), generator=generator(seed, 6))[:root_size]
    x, y = to_float(data.train_x[idx]), data.train_y[idx]
    calls = [0]

    def update(global_state: dict[str, torch.Tensor]) -> torch.Tensor:
        calls[0] += 1
        model = build_model(cfg)
        model.load_state_dict(global_state)
        optimizer = settings.sgd(model.parameters())
        train_epochs(model, optimizer, x, y, spec=data.spec, batch_size=settings.batch_size,
                     epochs=settings.epochs, generator=generator(seed, calls[0], 7))  # fmt: skip
        return codec.to_vector(model.state_dict()) - codec.to_vector(global_state)

    return update


def write_partition_summary(out_dir: Path, cfg: dict[str, Any]) -> list[int]:
    """Per-client class counts of the partition; returns each client's size."""
    data = dataset_of(cfg)
    parts = partitions(cfg)
    counts = class_counts(data.train_y.numpy(), parts, data.spec.num_classes)
    sizes = [int(len(p)) for p in parts]
    (out_dir / "partition.json").write_text(
        json.dumps({"sizes": sizes, "class_counts": counts.tolist()}, separators=(",", ":")) + "\n"
    )
    return sizes


def run_federation(grid: Grid, cfg: dict[str, Any]) -> None:
    """Run one configured federation on ``grid`` and write its outputs."""
    out_dir = Path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    seed = int(cfg["seed"])
    fed = cfg["federation"]
    random.seed(seed)
    np.random.seed(seed)

    device = resolve_device(cfg["device"])
    data = dataset_of(cfg)
    model = build_model(cfg, seed=seed)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    channels_last = uses_channels_last(model, cfg)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    codec = ModelCodec.of(initial_state)
    sizes = write_partition_summary(out_dir, cfg)

    attack = build_attack(cfg["attack"])
    threat = build_threat(cfg["attack"], int(fed["num_clients"]), seed)
    malicious = set(threat.malicious)
    colluding = attack is not None and kind_of(attack) == "colluding"

    rule = build_rule(cfg["strategy"])
    needs_root = getattr(rule, "needs_server_update", False)
    root_size = int(cfg["strategy"].get("root_size", 0))

    node_of = enrol_clients(grid, int(fed["num_clients"]), float(fed["connect_timeout"]))
    strategy = RobustStrategy(
        rule=rule,
        codec=codec,
        node_of=node_of,
        sample=threat_sampler(threat, int(fed["clients_per_round"]), seed),
        partition_sizes=sizes,
        train_config={CONFIG_KEY: json.dumps(cfg)},
        on_failure=cfg["strategy"].get("on_failure", "raise"),
        update_hook=colluding_hook(threat, bind_to_population(attack, threat), seed) if colluding else None,
        generator=generator(seed, 3),
        server_update=root_set_update(cfg, codec, root_size, seed) if needs_root else None,
    )
    recorder = RunRecorder(out_dir, int(fed["num_rounds"]))
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    final: dict[str, Any] = {"state": initial_state}
    triggered = None
    if isinstance(attack, Backdoor):
        tx, ty = backdoor_test_set(to_float(data.test_x), data.test_y, attack)
        triggered = (tx.to(device), ty.to(device))
    eval_kwargs = {
        "spec": data.spec,
        "batch_size": int(cfg["evaluation"]["batch_size"] or (4096 if device.type == "cuda" else 256)),
        "channels_last": channels_last,
        "device": device,
    }

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        final["state"] = arrays.to_torch_state_dict()
        model.load_state_dict(final["state"])
        cm, loss = confusion_matrix(model, test_x, test_y, **eval_kwargs)
        line = {"round": server_round, **metrics_from_confusion(cm), "loss": loss}
        if attack is not None and hasattr(attack, "source") and hasattr(attack, "target"):
            line.update(targeted_metrics(line["per_class_recall"], attack.source, attack.target))
        if triggered is not None:
            tcm, _ = confusion_matrix(model, *triggered, **eval_kwargs)
            line["asr"] = float(tcm[:, attack.target].sum()) / max(int(tcm.sum()), 1)
        if server_round > 0:
            rec = strategy.last
            line.update(rec.as_metrics())
            line["malicious_in_round"] = len(set(rec.sampled) & malicious)
            line.update(detection_scores(rec.replied, line["flagged"], malicious))
        recorder.record(line)
        return MetricRecord({"accuracy": line["accuracy"], "loss": loss})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_state),
        num_rounds=int(fed["num_rounds"]),
        timeout=float(fed["round_timeout"]),
        evaluate_fn=evaluate,
    )
    torch.save(final["state"], out_dir / "final_model.pt")
    write_summary(
        out_dir,
        {
            "num_clients": fed["num_clients"],
            "clients_per_round": fed["clients_per_round"],
            "malicious_clients": sorted(malicious),
        },
    )
    if cfg["output"].get("plots", True):
        write_plots(out_dir)
