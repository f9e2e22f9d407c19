"""A fake Flower ``Grid`` for the ServerApp round loop, in one process, and helpers to run a federation on it.

``FakeGrid`` implements Flower's abstract ``flwr.serverapp.Grid`` (what
``run_federation`` and ``Strategy.start`` use: node ids, push / pull,
``send_and_receive``) with one real ``flwr.app.Context`` per SuperNode whose
``state`` persists across rounds. It answers every message with the ClientApp's
own handlers (``scripts.apps._enrol`` for QUERY, ``scripts.apps._train`` for
TRAIN: exactly what Flower calls), on a copy of the message as a transport
would deliver it, and replies the way Flower does (``Message(..., reply_to=)``,
a message id stamped by the "SuperLink"; a handler that raises gets the ``Error``
a SuperNode sends, reason ``<class 'T'>:<'message'>``). A plan per (round, client id) can
turn a reply into an ``Error`` (a crashed client), drop it (no reply before the
round timeout) or tamper with its arrays (a malformed update).

The autouse fixtures these tests need (one torch thread, a ServerApp identity)
are in ``tests/server/conftest.py``.
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run as FlowerRun
from hydra import compose, initialize_config_module

import scripts.apps
from common.runtime import CLIENTS_KEY, ERROR_RECORD, client_key, split_client_key
from scripts.build import Run, build_run
from server.app import run_federation

#: a plan entry: drop the message, reply with an Error (its reason), or tamper with the reply's state dict
SILENT = "silent"
Tamper = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
Action = str | Error | Tamper

SMALL = [
    "model=mlp",
    "federation.num_clients=4",
    "federation.clients_per_round=4",
    "federation.num_rounds=2",
    "partition.samples_per_client=64",
    "client.batch_size=32",
    "device=cpu",
    "output.plots=false",
]


class FakeGrid(Grid):
    """A Flower ``Grid`` whose SuperNodes run the real ClientApp handlers in this process.

    Parameters
    ----------
    num_nodes : int
        SuperNodes; node ``i`` serves ``partition_ids[i]`` (default ``i``).
    plan : dict, optional
        ``(server_round, client_id) -> action`` for the clients of TRAIN messages; ``None`` in
        either place is a wildcard. An action is :data:`SILENT` (no reply), an
        ``Error`` (an error reply) or a function that rewrites the reply's
        state dict.
    partition_ids, num_partitions : optional
        The node config each SuperNode was started with (to break enrolment);
        ``num_partitions`` below the run's clients makes each node serve a
        block of them (``common.runtime.clients_of_node``).
    roles : list of str, optional
        Node ``i``'s node config ``role`` (``"malicious"``/``"honest"``), as a
        deployment starts its SuperNodes; default none (the threat model decides).
    """

    def __init__(
        self,
        num_nodes: int,
        *,
        plan: dict[tuple[int | None, int | None], Action] | None = None,
        partition_ids: list[int] | None = None,
        num_partitions: int | None = None,
        roles: list[str] | None = None,
    ) -> None:
        ids = list(range(num_nodes)) if partition_ids is None else list(partition_ids)
        total = num_nodes if num_partitions is None else num_partitions
        # node ids unrelated to client ids, listed in an order unrelated to them
        self.contexts: dict[int, Context] = {}
        for i in reversed(range(num_nodes)):
            node_id = 7_000_000_000 + 1_000_003 * i
            config: dict[str, int | str] = {"partition-id": ids[i], "num-partitions": total}
            if roles is not None:
                config["role"] = roles[i]
            self.contexts[node_id] = Context(
                run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={}
            )
        self.plan = dict(plan or {})
        self._run = FlowerRun.create_empty(run_id=1)
        self._replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        self.timeouts: list[float | None] = []

    # --- the Grid interface -------------------------------------------------------------------------

    def set_run(self, run: FlowerRun) -> None:
        self._run = run

    @property
    def run(self) -> FlowerRun:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's InMemoryGrid does
            meta = msg.metadata
            assert meta.reply_to_message_id == "" and meta.ttl > 0, f"invalid message {meta}"
            assert meta.dst_node_id in self.contexts, f"message to unknown node {meta.dst_node_id}"
            self.sent.append(msg)
            reply = self._deliver(msg)
            if reply is not None:
                self._replies[meta.message_id] = reply
            ids.append(meta.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        self.timeouts.append(timeout)
        return self.pull_messages(self.push_messages(messages))

    # --- the SuperNodes -----------------------------------------------------------------------------

    def client_of(self, node_id: int) -> int:
        return int(self.contexts[node_id].node_config["partition-id"])

    def _action(self, server_round: int, cid: int) -> Action | None:
        for key in ((server_round, cid), (None, cid), (server_round, None), (None, None)):
            if key in self.plan:
                return self.plan[key]
        return None

    def _deliver(self, msg: Message) -> Message | None:
        node_id = msg.metadata.dst_node_id
        context = self.contexts[node_id]
        delivered = copy.deepcopy(msg)  # the node works on its own copy, as after a transport
        kind = msg.metadata.message_type
        actions: dict[int, Action | None] = {}
        if kind == MessageType.TRAIN:
            server_round = int(msg.content["config"]["server-round"])
            actions = {int(c): self._action(server_round, int(c)) for c in msg.content["config"][CLIENTS_KEY]}
        if actions and all(isinstance(a, str) and a == SILENT for a in actions.values()):
            return None
        only = next(iter(actions.values())) if len(actions) == 1 else None
        if isinstance(only, Error):  # a node of one client that crashed: Flower's error reply
            reply = Message(only, reply_to=delivered)
        else:
            try:
                if kind == MessageType.QUERY:
                    reply = scripts.apps._enrol(delivered, context)
                elif kind == MessageType.TRAIN:
                    reply = scripts.apps._train(delivered, context)
                else:
                    raise ValueError(f"no handler for message type {kind!r}")
            except Exception as err:  # what Flower's ClientApp runner sends back for a raising handler
                reason = str(type(err)) + ":<'" + str(err) + "'>"  # flwr.supernode.runtime.run_clientapp
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=delivered)
            if any(a is not None for a in actions.values()) and not reply.has_error():
                reply = Message(_act_per_client(reply.content, actions), reply_to=delivered)
        assert reply.metadata.src_node_id == node_id and reply.metadata.reply_to_message_id == msg.metadata.message_id
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # set by the SuperLink on arrival
        return reply


def _act_per_client(content: RecordDict, actions: dict[int, Action | None]) -> RecordDict:
    """A group's reply after each client's planned action: dropped, an error record, or tampered arrays."""
    out = RecordDict()
    for key, record in content.items():
        record_name, cid = split_client_key(key)
        action = actions.get(cid)
        if isinstance(action, str) and action == SILENT:
            continue
        if isinstance(action, Error):
            out[client_key(ERROR_RECORD, cid)] = ConfigRecord({"reason": action.reason})
            continue
        if callable(action) and record_name == "arrays":
            record = ArrayRecord(action(record.to_torch_state_dict()))
        out[key] = record
    return out


def make_run(out_dir: Path, *overrides: str) -> Run:
    """A real, validated run built the way the runner builds it, writing into ``out_dir``."""
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, *overrides])
    run = build_run(cfg)
    run.cfg["output_dir"] = str(out_dir)
    return run


def federate(
    out_dir: Path, *overrides: str, plan=None, nodes: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any], FakeGrid]:
    """Run a federation on a fake grid; ``nodes``: fewer nodes than clients, each serving a group of them."""
    run = make_run(out_dir, *overrides)
    n = run.federation.num_clients
    grid = FakeGrid(nodes or n, plan=plan, num_partitions=nodes)
    run_federation(grid, run)
    return lines_of(out_dir), summary_of(out_dir), grid


def lines_of(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(row) for row in (out_dir / "metrics.jsonl").read_text().splitlines()]


def summary_of(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "summary.json").read_text())


def final_model(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "final_model.pt", weights_only=True)


def with_nan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in state.items()}
    first = next(iter(state))
    state[first].view(-1)[3] = math.nan
    return state


def scaled(by: float) -> Tamper:
    def tamper(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v * by if torch.is_floating_point(v) else v for k, v in state.items()}

    return tamper
