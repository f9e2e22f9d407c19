"""The poisonlab ClientApp (Flower Message API).

A client knows its partition id from its SuperNode's node config
(``partition-id``, ``num-partitions``; Flower's simulation sets them for every
virtual SuperNode, a deployment passes them with ``--node-config``). Everything
else (dataset, model, local training) comes with the server's message as the
run config. A query message enrols the client; a train message carries the
global model, and the reply carries the locally trained model and its metrics.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.config import ClientSettings, typed_section
from common.data import to_float
from common.runtime import (
    CONFIG_KEY,
    build_model,
    dataset_of,
    generator,
    parse_config,
    partitions,
    resolve_device,
    uses_channels_last,
)
from common.training import train_epochs

app = ClientApp()

OPTIMIZER_STATE = "poisonlab-optimizer"
PARTICIPATION = "poisonlab-participation"


def partition_id(context: Context) -> int:
    """This SuperNode's client id, from its node config."""
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise RuntimeError(
            'this SuperNode has no partition-id: start it with --node-config "partition-id=<i> num-partitions=<N>"'
        ) from None


@app.query()
def enrol(msg: Message, context: Context) -> Message:
    """Tell the server which client (partition) this SuperNode serves."""
    reply = ConfigRecord(
        {
            "partition-id": partition_id(context),
            "num-partitions": int(context.node_config.get("num-partitions", -1)),
        }
    )
    return Message(RecordDict({"enrolment": reply}), reply_to=msg)


def _load_optimizer_state(optimizer: torch.optim.Optimizer, context: Context) -> int:
    """Restore this client's momentum buffers; return how often it took part before."""
    participations = 0
    if PARTICIPATION in context.state:
        participations = int(context.state[PARTICIPATION]["count"])
    if OPTIMIZER_STATE in context.state:
        buffers = context.state[OPTIMIZER_STATE].to_torch_state_dict()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            if str(i) in buffers:
                optimizer.state[p]["momentum_buffer"] = buffers[str(i)].to(p.device)
    return participations


def _save_optimizer_state(optimizer: torch.optim.Optimizer, context: Context, participations: int) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    buffers = {
        str(i): optimizer.state[p]["momentum_buffer"].detach().cpu()
        for i, p in enumerate(params)
        if "momentum_buffer" in optimizer.state.get(p, {})
    }
    context.state[OPTIMIZER_STATE] = ArrayRecord(buffers)
    context.state[PARTICIPATION] = ConfigRecord({"count": participations})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's partition and reply with it."""
    cfg = parse_config(str(msg.content["config"][CONFIG_KEY]))
    server_round = int(msg.content["config"]["server-round"])
    cid = partition_id(context)
    settings = typed_section(cfg["client"], ClientSettings, "client")
    device = resolve_device(cfg["device"])

    data = dataset_of(cfg)
    idx = torch.from_numpy(partitions(cfg)[cid])
    x = to_float(data.train_x[idx]).to(device)
    y = data.train_y[idx].to(device)

    model = build_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    channels_last = uses_channels_last(model, cfg)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    participations = _load_optimizer_state(optimizer, context) if settings.keep_optimizer_state else 0
    for group in optimizer.param_groups:
        group["lr"] = settings.lr_at(participations)

    stats = train_epochs(
        model,
        optimizer,
        x,
        y,
        spec=data.spec,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        generator=generator(int(cfg["seed"]), cid, server_round, 1),
        channels_last=channels_last,
    )
    if settings.keep_optimizer_state:
        _save_optimizer_state(optimizer, context, participations + 1)

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metrics = MetricRecord({"train-loss": stats["train_loss"], "num-examples": len(y), "steps": stats["steps"]})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)
