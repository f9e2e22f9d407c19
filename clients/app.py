"""The poisonlab ClientApp's work (Flower Message API): enrolment and local training.

A node knows which clients it serves from its SuperNode's node config
(``partition-id=k``, ``num-partitions=M``; Flower's simulation sets them for
every virtual SuperNode, a deployment passes them with ``--node-config``):
client ``k`` when ``M`` is the run's ``federation.num_clients`` (every
deployment), else the block :func:`common.runtime.clients_of_node` gives (the
simulation's ``engine.clients_per_node``). Everything else (dataset, model,
local training, the attack) comes with the server's message as the run config,
from which the runner's Flower app object (``scripts.apps``) builds the run's
objects once per process and passes them to :func:`train`. A query message
enrols the node (:mod:`clients.enrolment`); a train message carries the global
model and lists the round's sampled clients of the node, which train one after
another on the same code path; the reply carries each one's locally trained
model and metrics under ``<record>/<client id>`` keys, with the same records
for honest and malicious clients.

With ``dp=opacus`` every client trains with DP-SGD (``common.dp_training``) at
the round's noise multiplier, keeps its privacy ledger across the rounds it
takes part in (with its momentum, in the node's state store,
``clients.state_store``, not in Flower's context), reports its cumulative ``epsilon`` and, once
the next round would pass ``dp.epsilon_budget``, replies without an update (a
``withheld`` record). A client the server's leakage attack targets (the train
config's ``leakage-capture-steps``) copies its first local steps into a
``leakage`` record of its reply.

A malicious client poisons its own data or its own update (the trainable
parameters; its BatchNorm statistics are its honest ones). Its role comes from
its node config (``role=malicious`` or ``role=honest``) when the SuperNode was
given one (a deployment), else from the run's seeded threat model (simulation).
In a deployment a malicious client of a colluding attack computes the attack
itself, from the benign updates the round's colluders share through the
attacker service (:mod:`clients.collusion`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from attacks.threat import ThreatModel
from clients.collusion import collude
from clients.enrolment import partition_id
from clients.faults import FAULT_KEY, check_fault, faulty_reply
from clients.slot_store import StateStore, open_state_store
from clients.state_store import state_root
from common.data import to_float
from common.dp_training import sampling_plan, train_private
from common.fused_training import default_fused, fusable, train_group_epochs
from common.privacy import PrivacyLedger
from common.runtime import (
    CAPTURE_STEPS_KEY,
    CLIENTS_KEY,
    COLLUSION_REPORT_KEY,
    ERROR_RECORD,
    client_key,
    clients_of_node,
    uses_channels_last,
)
from common.streams import Stream, derived_seed, stream
from common.training import train_epochs

log = logging.getLogger("poisonlab")


def is_malicious(context: Context, threat: ThreatModel, cid: int) -> bool:
    """The node config's ``role`` when set (deployment), else the seeded threat model (simulation)."""
    role = context.node_config.get("role")
    if role is None:
        return threat.is_malicious(cid)
    if role not in ("malicious", "honest"):
        raise RuntimeError(f"node config role={role!r}: use role=malicious or role=honest")
    return role == "malicious"


_STORES: dict[tuple[str, int, bool], StateStore] = {}


def state_store(context: Context, run: Any, model: torch.nn.Module, *, keeps_ledger: bool) -> StateStore:
    """This process's store of its clients' state for the run (one per run folder, kept open).

    Momentum and participation counts go to one slot file (:class:`clients.slot_store.SlotStateStore`:
    fixed offsets, no RAM kept per client); a DP-SGD ledger, of no fixed size, to one file per client and
    round (:class:`clients.state_store.ClientStateStore`).
    """
    root = state_root(context.node_config, run.cfg["output_dir"])
    num_clients = int(run.cfg["federation"]["num_clients"])
    key = (str(root), num_clients, keeps_ledger)
    if key not in _STORES:
        while len(_STORES) >= 4:  # a process that served other runs before (tests): close their files
            old = _STORES.pop(next(iter(_STORES)))
            if hasattr(old, "close"):
                old.close()
        layout = {str(i): tuple(p.shape) for i, p in enumerate(model.parameters())}
        _STORES[key] = open_state_store(root, num_clients=num_clients, keeps_ledger=keeps_ledger, layout=layout)
    return _STORES[key]


def _load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> int:
    """Restore this client's momentum buffers from its saved state; return how often it took part before."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, buffer in saved.get("momentum", {}).items():
        optimizer.state[params[int(i)]]["momentum_buffer"] = buffer.to(params[int(i)].device)
    return int(saved.get("participations", 0))


def _optimizer_state(optimizer: torch.optim.Optimizer, participations: int) -> dict[str, Any]:
    """The momentum buffers (by parameter index) and the participation count, as the state store keeps them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    momentum = {
        str(i): optimizer.state[p]["momentum_buffer"].detach().cpu()
        for i, p in enumerate(params)
        if "momentum_buffer" in optimizer.state.get(p, {})
    }
    return {"momentum": momentum, "participations": participations}


def load_ledger(saved: dict[str, Any]) -> PrivacyLedger:
    """This client's DP-SGD history over the whole run (empty before its first private round)."""
    return PrivacyLedger.from_lists(saved["ledger"]) if "ledger" in saved else PrivacyLedger()


class StepCapture:
    """Type-2 leakage observer: copies of the first ``limit`` non-empty local steps (parameters, gradient, batch)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.steps: list[tuple[int, list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]] = []

    def wants(self, step: int, batch_size: int) -> bool:
        return batch_size > 0 and len(self.steps) < self.limit

    def record(self, step, params, grads, images, labels) -> None:
        self.steps.append((step, [p.cpu() for p in params], [g.cpu() for g in grads], images.cpu(), labels.cpu()))

    def as_record(self) -> ArrayRecord:
        """``s<k>.p<i>``, ``s<k>.g<i>``: parameter and gradient ``i`` at captured step ``k``; ``s<k>.x``, ``.y``,
        ``.step``: its batch (for scoring only) and its index in the round."""
        out: dict[str, torch.Tensor] = {}
        for k, (step, params, grads, images, labels) in enumerate(self.steps):
            out.update({f"s{k}.p{i}": p for i, p in enumerate(params)})
            out.update({f"s{k}.g{i}": g for i, g in enumerate(grads)})
            out[f"s{k}.x"], out[f"s{k}.y"], out[f"s{k}.step"] = images, labels, torch.tensor([step])
        return ArrayRecord(out)


def _withheld(reason: str, metrics: dict[str, float]) -> RecordDict:
    """A reply without an update (the client's privacy budget is spent): recorded, never aggregated."""
    return RecordDict({"withheld": ConfigRecord({"reason": reason}), "metrics": MetricRecord(metrics)})


def group_clients(msg: Message, context: Context, num_clients: int) -> list[int]:
    """The clients this train message asks this node to train, each checked to be one the node serves.

    A node started with ``partition-id=k num-partitions=M`` serves the block
    :func:`common.runtime.clients_of_node` gives (one client when ``M`` is the
    run's ``federation.num_clients``); the message lists the round's sampled
    clients of that block (``clients``).
    """
    node = partition_id(context)
    num_nodes = int(context.node_config.get("num-partitions", num_clients))
    served = clients_of_node(node, num_nodes, num_clients)
    config = msg.content["config"]
    asked = [int(c) for c in config[CLIENTS_KEY]] if CLIENTS_KEY in config else [served.start]
    stray = [c for c in asked if c not in served]
    if stray or not asked:
        raise RuntimeError(
            f"this node (partition-id={node}, num-partitions={num_nodes}) serves clients {served.start}.."
            f"{served.stop - 1}, but the server asked it to train {asked}"
        )
    return asked


def train(msg: Message, context: Context, run: Any) -> Message:
    """Train the received global model on each client the message lists and reply (``run``: a ``scripts.build.Run``).

    The reply holds each client's records under ``<record>/<client id>``
    (:func:`common.runtime.client_key`). A node of one client fails as a
    whole (Flower's error reply); in a group, a client that fails is reported
    in its own ``error/<client id>`` record and the others' updates still go.
    """
    if FAULT_KEY in context.node_config:  # before the training it would waste
        check_fault(str(context.node_config[FAULT_KEY]))
    clients = group_clients(msg, context, int(run.cfg["federation"]["num_clients"]))
    global_state = msg.content["arrays"].to_torch_state_dict()
    # one model object for the group (each client starts from the global state); DP-SGD wraps its own
    model = run.new_model() if run.dp_sgd is None else None
    if fuses(msg, run, model, clients):
        per_client = train_fused(msg, context, run, clients, global_state, model)
    else:
        per_client = {}
        for cid in clients:
            try:
                per_client[cid] = train_client(msg, context, run, cid, global_state, model)
            except Exception as err:
                if len(clients) == 1:
                    raise
                log.exception("client %d failed", cid)
                per_client[cid] = RecordDict({ERROR_RECORD: ConfigRecord({"reason": f"{type(err).__name__}: {err}"})})
    content = RecordDict()
    for cid, records in per_client.items():
        for name, record in records.items():
            content[client_key(name, cid)] = record
    return Message(content, reply_to=msg)


def client_data(
    context: Context, run: Any, cid: int, server_round: int
) -> tuple[torch.Tensor, torch.Tensor, str | None]:  # fmt: skip
    """Client ``cid``'s training data on the device (poisoned when it attacks with data), and its attack kind."""
    data, seed = run.dataset, run.seed
    idx = torch.from_numpy(run.partitions[cid])
    x, y = to_float(data.train_x[idx]), data.train_y[idx]
    threat, attack = run.threat, run.attack
    attacking = attack is not None and is_malicious(context, threat, cid) and threat.active(server_round)
    kind = run.attack_kind if attacking else None
    if kind == "data":
        rank = threat.attacker_rank(cid) if threat.is_malicious(cid) else 0
        x, y = attack(x, y, attacker_rank=rank, generator=stream(Stream.DATA_POISONING, seed, cid, server_round))
    return x.to(run.device), y.to(run.device), kind


def client_reply(
    context: Context, run: Any, cid: int, server_round: int, global_state: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor], kind: str | None, metrics: dict[str, float],
) -> RecordDict:  # fmt: skip
    """Client ``cid``'s reply records for its trained ``state``, with its update attack or collusion applied."""
    attack, seed = run.attack, run.seed
    if kind == "update":
        codec = run.codec
        start = codec.to_vector(global_state)
        noise = stream(Stream.UPDATE_POISONING, seed, cid, server_round)
        delta = attack(codec.to_vector(state) - start, generator=noise)
        state = dict(codec.to_state(start + delta, codec.buffers(state)))
    report = None
    if kind == "colluding" and run.colluders_on_clients:  # a deployment: this client computes the attack itself
        state, report = collude(run, context, cid=cid, server_round=server_round, global_state=global_state,
                                state=state)  # fmt: skip
    record = MetricRecord(metrics)
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": record})
    if FAULT_KEY in context.node_config:  # a SuperNode started to send malformed replies (clients.faults)
        content = faulty_reply(str(context.node_config[FAULT_KEY]), state, record)
    if report is not None:
        content[COLLUSION_REPORT_KEY] = report
    return content


def fuses(msg: Message, run: Any, model: torch.nn.Module | None, clients: list[int]) -> bool:
    """Whether this message's group trains in one vectorised step (``client.fused``, :mod:`common.fused_training`)."""
    setting = run.client.fused
    wanted = setting is True or (setting == "auto" and default_fused(run.device))
    config = msg.content["config"]
    capture = any(int(config.get(client_key(CAPTURE_STEPS_KEY, c), 0)) > 0 for c in clients)
    return wanted and len(clients) > 1 and model is not None and run.dp_sgd is None and not capture and fusable(model)


def train_fused(
    msg: Message, context: Context, run: Any, clients: list[int], global_state: dict[str, torch.Tensor],
    model: torch.nn.Module,
) -> dict[int, RecordDict]:  # fmt: skip
    """Train the group ``clients`` in one vectorised step (:func:`common.fused_training.train_group_epochs`).

    Each client draws its batches from its own stream, loads and saves its
    momentum as :func:`train_client` does, and is poisoned and replies the
    same way; only the arithmetic is batched (equal up to float rounding).
    """
    server_round = int(msg.content["config"]["server-round"])
    settings, seed = run.client, run.seed
    store = state_store(context, run, model, keeps_ledger=False)
    prepared = [client_data(context, run, cid, server_round) for cid in clients]
    saved = [store.load(cid, server_round) if settings.keep_optimizer_state else {} for cid in clients]
    participations = [int(s.get("participations", 0)) for s in saved]
    model.to(run.device)
    results = train_group_epochs(
        model, [global_state] * len(clients), [s.get("momentum") for s in saved], [x for x, _, _ in prepared],
        [y for _, y, _ in prepared], [settings.lr_at(p) for p in participations], momentum=settings.momentum,
        weight_decay=settings.weight_decay, spec=run.dataset.spec, batch_size=settings.batch_size,
        epochs=settings.epochs, local_steps=settings.local_steps,
        generators=[stream(Stream.CLIENT_BATCHES, seed, cid, server_round) for cid in clients],
    )  # fmt: skip
    replies = {}
    for cid, (_, y, kind), done, before in zip(clients, prepared, results, participations, strict=True):
        if settings.keep_optimizer_state:
            momentum = {i: b.detach().cpu().contiguous() for i, b in done.momentum.items()}
            store.save(cid, server_round, {"momentum": momentum, "participations": before + 1})
        state = {k: v.detach().cpu().contiguous() for k, v in done.state.items()}
        metrics = {"train-loss": done.stats["train_loss"], "num-examples": len(y), "steps": done.stats["steps"]}
        replies[cid] = client_reply(context, run, cid, server_round, global_state, state, kind, metrics)
    return replies


def train_client(
    msg: Message, context: Context, run: Any, cid: int, global_state: dict[str, torch.Tensor],
    model: torch.nn.Module | None = None,
) -> RecordDict:  # fmt: skip
    """Train ``global_state`` on client ``cid``'s partition; its reply records (``arrays``, ``metrics``, ...).

    ``model``: a model object to train in (its weights, buffers and gradients
    are reset to the global state first); ``None``: a new one.
    """
    server_round = int(msg.content["config"]["server-round"])
    settings, device, seed = run.client, run.device, run.seed
    data = run.dataset
    x, y, kind = client_data(context, run, cid, server_round)

    if model is None:
        model = run.new_model()
    for param in model.parameters():
        param.grad = None
    model.load_state_dict(global_state)
    channels_last = uses_channels_last(model, settings.channels_last)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = settings.sgd(model.parameters())
    dp, extra = run.dp_sgd, {}
    store = state_store(context, run, model, keeps_ledger=dp is not None)
    saved = store.load(cid, server_round) if settings.keep_optimizer_state or dp is not None else {}
    new_state: dict[str, Any] = {}
    participations = _load_optimizer_state(optimizer, saved) if settings.keep_optimizer_state else 0
    for group in optimizer.param_groups:
        group["lr"] = settings.lr_at(participations)

    capture_steps = int(msg.content["config"].get(client_key(CAPTURE_STEPS_KEY, cid), 0))
    capture = StepCapture(capture_steps) if capture_steps > 0 else None
    batches = stream(Stream.CLIENT_BATCHES, seed, cid, server_round)
    loop = {"spec": data.spec, "batch_size": settings.batch_size, "epochs": settings.epochs, "generator": batches,
              "channels_last": channels_last, "local_steps": settings.local_steps, "observer": capture}  # fmt: skip
    if dp is None:
        stats = train_epochs(model, optimizer, x, y, **loop)
    else:
        ledger = load_ledger(saved)
        sigma = dp.schedule.sigma(server_round)
        q, steps = sampling_plan(len(y), settings.batch_size, settings.epochs, settings.local_steps)
        epsilon = ledger.epsilon_after(sigma, q, steps, dp.delta)  # what this client reports if it trains
        if dp.epsilon_budget is not None and epsilon > dp.epsilon_budget:
            spent = ledger.epsilon(dp.delta)
            reason = (f"privacy budget: epsilon {spent:.3f} would exceed dp.epsilon_budget={dp.epsilon_budget} "
                      f"after this round's {steps} steps at sigma {sigma:.3f}")  # fmt: skip
            return _withheld(reason, {"epsilon": spent, "num-examples": len(y)})
        noise = torch.Generator(device=device).manual_seed(derived_seed(seed, cid, server_round, Stream.DP_NOISE))
        stats = train_private(model, optimizer, x, y, dp=dp, sigma=sigma, noise_generator=noise, **loop)
        ledger.add(sigma, q, steps)
        new_state["ledger"] = ledger.as_lists()
        extra = {"epsilon": epsilon, "sigma": sigma, "clip-norm": stats["clip_norm"]}
    if settings.keep_optimizer_state:
        new_state.update(_optimizer_state(optimizer, participations + 1))
    if new_state:
        store.save(cid, server_round, new_state)

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metrics = {"train-loss": stats["train_loss"], "num-examples": len(y), "steps": stats["steps"], **extra}
    content = client_reply(context, run, cid, server_round, global_state, state, kind, metrics)
    if capture is not None:
        content["leakage"] = capture.as_record()
    return content
