"""The one Flower strategy around any aggregation rule.

``RobustStrategy`` turns the round's replies into update deltas (local model
minus global model, flattened), rejects replies that cannot be trusted (errors,
wrong tensor names, shapes or dtypes, NaN/Inf), runs the configured rule (with
its pre-aggregators) and applies the aggregated delta to the global model. It
records every round's decision (selected, flagged, rejected and failed clients,
weights) in ``records[server_round]`` for the harness, which scores it against
the truth; the strategy itself never learns who is malicious. Deltas hold the
trainable parameters only; buffers (BatchNorm statistics) are checked and
combined by their median over the replies the rule kept (see ``common.params``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from common.params import ModelCodec, UpdateRejected, finite_or_raise
from common.runtime import CLIENTS_KEY, ERROR_RECORD, client_key, split_client_key
from strategies.client_errors import failure_entry, strip_ansi
from strategies.rules.base import RoundContext, RuleConfigError

log = logging.getLogger("poisonlab")

UpdateHook = Callable[[int, list[int], Tensor], Tensor]
#: ``observer(server_round, client_id, reply content, delta or None, global state)`` for every reply that arrived
ReplyObserver = Callable[[int, int, RecordDict, Tensor | None, dict[str, Tensor]], None]


@dataclass
class RoundRecord:
    """What happened to one round's replies (client ids, not node ids).

    ``rejected`` are malformed replies (wrong tensors, NaN/Inf, invalid
    buffers), never aggregated; ``withheld`` replied on purpose without an
    update (a client whose privacy budget is spent), with its reason; ``excluded`` are valid replies the rule left
    out of its aggregate (e.g. every row Krum did not select); ``flagged`` are
    replies a detecting rule declared malicious. ``active`` is false when the
    rule ran as something else than itself this round (e.g. the PCA defense
    before its start round); ``detects`` says whether the rule detects at all.
    """

    sampled: list[int] = field(default_factory=list)
    replied: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    withheld: dict[int, str] = field(default_factory=dict)
    epsilon: dict[int, float] = field(default_factory=dict)
    valid: list[int] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)
    weights: dict[int, float] = field(default_factory=dict)
    skipped: str | None = None
    active: bool = True
    detects: bool = False
    train_loss: float | None = None
    info: dict[str, float] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, Any]:
        """The fields that go into ``metrics.jsonl``."""
        return {
            "sampled": self.sampled,
            "selected": self.selected,
            "excluded": self.excluded,
            "flagged": self.flagged,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "failed": {str(k): v for k, v in self.failed.items()},
            "withheld": {str(k): v for k, v in self.withheld.items()},
            "skipped": self.skipped,
            "defense_active": self.active and self.skipped is None,
            "detects": self.detects,
            "train_loss": self.train_loss,
            "aggregation": {k: (v if math.isfinite(v) else None) for k, v in self.info.items()},
        }


class RobustStrategy(Strategy):
    """Any aggregation rule as a Flower strategy (Message API).

    Parameters
    ----------
    rule : callable
        ``rule(deltas, RoundContext) -> Aggregate`` (see ``strategies.rules.base``).
    codec : ModelCodec
        Layout of the global model, used to flatten and to check replies.
    node_of : dict
        Client id (partition id) -> Flower node id, from the enrollment handshake.
    sample : callable
        ``sample(server_round) -> list of client ids`` to train this round.
    partition_sizes : list of int
        Examples per client, as the server computed them (weights for weighted rules).
    train_config : dict
        Scalars sent to every client with the model (the run config among them).
    on_failure : {"raise", "skip"}
        What to do when a round cannot satisfy the rule (e.g. too few valid replies).
    update_hook : callable, optional
        ``hook(server_round, client_ids, deltas) -> deltas``, applied before the rule
        (the simulation's omniscient colluding attackers).
    generator : torch.Generator, optional
        Randomness for noise-adding rules.
    server_update : callable, optional
        ``server_update(global_state, server_round) -> (d,) delta``: the server's own update on
        its clean root set, for rules with ``needs_server_update`` (FLTrust).
    client_config : callable, optional
        ``client_config(server_round, client_id, sampled) -> dict``: extra config for one client's
        message (e.g. the leakage attack asking a client to capture its local steps).
    observer : callable, optional
        Sees every reply that arrived (see :data:`ReplyObserver`): a curious server's view.
    rejoin : callable, optional
        ``rejoin(grid, node_of) -> {client id: node id}``, asked before every round: clients
        whose SuperNode came back under a new node id (a restart), whose messages go there.
    """

    def __init__(
        self,
        *,
        rule: Callable[..., Any],
        codec: ModelCodec,
        node_of: dict[int, int],
        sample: Callable[[int], list[int]],
        partition_sizes: list[int],
        train_config: dict[str, Any],
        on_failure: str = "raise",
        update_hook: UpdateHook | None = None,
        generator: torch.Generator | None = None,
        server_update: Callable[[dict[str, Tensor], int], Tensor] | None = None,
        client_config: Callable[[int, int, list[int]], dict[str, Any]] | None = None,
        observer: ReplyObserver | None = None,
        rejoin: Callable[[Grid, dict[int, int]], dict[int, int]] | None = None,
    ) -> None:
        if getattr(rule, "needs_server_update", False) and server_update is None:
            raise ValueError(f"{type(rule).__name__} needs the server's root-set update (server_update)")
        self.rule = rule
        self.codec = codec
        self.node_of = node_of
        #: node id -> the clients this round's message to it lists (a node may serve a group of clients)
        self.asked: dict[int, list[int]] = {}
        self._sent: list[Message] = []  # this round's messages (Flower stamps their ids on push)
        self.sample = sample
        self.partition_sizes = partition_sizes
        self.train_config = train_config
        self.on_failure = on_failure
        self.update_hook = update_hook
        self.generator = generator
        self.server_update = server_update
        self.client_config = client_config
        self.observer = observer
        self.rejoin = rejoin
        self.global_state: dict[str, Tensor] | None = None
        self.records: dict[int, RoundRecord] = {}
        #: rounds completed before Flower's round 1 (a resumed run): Flower's round ``k`` is round ``k + offset``
        self.round_offset = 0

    def summary(self) -> None:
        log.info("RobustStrategy: rule=%s, on_failure=%s", type(self.rule).__name__, self.on_failure)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model to the round's clients, chosen by ``sample``."""
        server_round += self.round_offset
        if self.rejoin is not None:
            for cid, node in self.rejoin(grid, dict(self.node_of)).items():
                self.node_of[cid] = node
        self.global_state = arrays.to_torch_state_dict()
        clients = self.sample(server_round)
        self.records[server_round] = RoundRecord(
            sampled=list(clients), detects=bool(getattr(self.rule, "detects", False))
        )
        base = {**self.train_config, **dict(config), "server-round": server_round}
        self.asked = {}
        for c in clients:  # one message per node, listing its sampled clients in sampling order
            self.asked.setdefault(self.node_of[c], []).append(c)
        messages = []
        for node, cids in self.asked.items():
            node_config: dict[str, Any] = {**base, CLIENTS_KEY: cids}
            for c in cids:
                extra = self.client_config(server_round, c, list(clients)) if self.client_config else {}
                node_config.update({client_key(key, c): value for key, value in extra.items()})
            record = RecordDict({"arrays": arrays, "config": ConfigRecord(node_config)})
            messages.append(Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node))
        self._sent = messages
        return messages

    def _per_client(self, server_round: int, msg: Message) -> dict[int, RecordDict]:
        """A reply's records by client (``<record>/<client id>`` keys), only of clients its node was asked for.

        A node asked for one client may also reply with plain keys (``arrays``,
        ``metrics``): a ClientApp of one client per node.
        """
        node = msg.metadata.src_node_id
        asked = self.asked.get(node, [])
        if len(asked) == 1 and not any(split_client_key(key) for key in msg.content):
            return {asked[0]: msg.content}
        out: dict[int, RecordDict] = {}
        for key, record in msg.content.items():
            parsed = split_client_key(key)
            if parsed is None or parsed[1] not in asked:
                log.warning("round %d: node %d sent record %r, not one of a client it was asked to train %s",
                            server_round, node, key, asked)  # fmt: skip
                continue
            out.setdefault(parsed[1], RecordDict())[parsed[0]] = record
        return {c: out[c] for c in asked if c in out}

    def _replies_by_client(self, server_round: int, replies: Iterable[Message]) -> Iterable[tuple[int, RecordDict]]:
        """``(client id, its records)`` of every client a reply speaks for; an error fails all its message asked for.

        An error reply may come from the node or from the SuperLink itself (a
        node that stopped sending heartbeats: Flower's "Node Unavailable"), so
        it is matched to the message it answers, not to its sender.
        """
        clients_of_message = {m.metadata.message_id: self.asked[m.metadata.dst_node_id] for m in self._sent
                              if m.metadata.message_id}  # fmt: skip
        for msg in replies:
            if msg.has_error():
                error = ConfigRecord({"reason": str(msg.error.reason), "code": int(msg.error.code)})
                cids = clients_of_message.get(msg.metadata.reply_to_message_id)
                for cid in self.asked.get(msg.metadata.src_node_id, []) if cids is None else cids:
                    yield cid, RecordDict({ERROR_RECORD: error})
                continue
            yield from self._per_client(server_round, msg).items()

    def _decode(self, content: RecordDict, global_vec: Tensor, out: Tensor) -> tuple[list[Tensor], float | None]:
        """Check a reply and write its delta (its parameters minus ``global_vec``) into ``out``; its buffers and loss.

        ``out`` is written only once every check has passed.
        """
        if "arrays" not in content:
            raise UpdateRejected("reply carries no 'arrays' record")
        state = content["arrays"].to_torch_state_dict()
        self.codec.check(state)
        vec = self.codec.to_vector(state)
        finite_or_raise(vec)
        buffers = self.codec.buffers(state)
        self.codec.check_buffers(buffers)
        loss = None
        if "metrics" in content and "train-loss" in content["metrics"]:
            loss = float(content["metrics"]["train-loss"])
        torch.sub(vec, global_vec, out=out)
        return buffers, loss

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, run the rule, return the new global model."""
        server_round += self.round_offset
        assert self.global_state is not None, "configure_train must run first"
        rec = self.records[server_round]
        global_vec = self.codec.to_vector(self.global_state)
        # each valid delta goes straight into its row (sampled clients in id order): no second copy to stack
        row_of = {cid: i for i, cid in enumerate(sorted(rec.sampled))}
        rows = torch.empty((len(row_of), self.codec.layout.size), dtype=torch.float32)
        valid: dict[int, tuple[int, list[Tensor]]] = {}
        losses: list[float] = []
        for cid, content in self._replies_by_client(server_round, replies):
            if ERROR_RECORD in content:
                error = content[ERROR_RECORD]
                reason = str(error["reason"])
                rec.failed[cid] = failure_entry(reason)
                code = f" (Flower error code {error['code']})" if "code" in error else ""
                log.warning("round %d: client %d failed: %s%s; its full reason:\n%s",
                            server_round, cid, rec.failed[cid], code, strip_ansi(reason))  # fmt: skip
                continue
            rec.replied.append(cid)
            if "metrics" in content and "epsilon" in content["metrics"]:
                rec.epsilon[cid] = float(content["metrics"]["epsilon"])
            if "withheld" in content and "arrays" not in content:
                rec.withheld[cid] = str(content["withheld"].get("reason", "no reason given"))
                log.info("round %d: client %d sent no update: %s", server_round, cid, rec.withheld[cid])
                continue
            try:
                buffers, loss = self._decode(content, global_vec, out=rows[row_of[cid]])
            except (UpdateRejected, KeyError, TypeError, ValueError) as err:
                delta = None
                rec.rejected[cid] = str(err)
                log.warning("round %d: rejected the update of client %d: %s", server_round, cid, err)
            else:
                delta = rows[row_of[cid]]
                valid[cid] = (row_of[cid], buffers)
                if loss is not None:
                    losses.append(loss)
            if self.observer is not None:
                self.observer(server_round, cid, content, delta, self.global_state)
        for cid in sorted(set(rec.sampled) - set(rec.replied) - set(rec.failed)):
            rec.failed[cid] = "no reply before the round timeout"
        rec.train_loss = sum(losses) / len(losses) if losses else None
        ids = sorted(valid)
        rec.valid = ids
        try:
            self.rule.check_clients(len(ids))
        except RuleConfigError as err:
            return self._cannot_aggregate(server_round, f"{len(ids)} valid replies: {err}")
        at = [valid[c][0] for c in ids]
        matrix = rows if at == list(range(len(rows))) else rows[torch.tensor(at, dtype=torch.long)]
        del rows
        if self.update_hook is not None:
            matrix = self.update_hook(server_round, ids, matrix)
        sizes = torch.tensor([float(self.partition_sizes[c]) for c in ids])
        context = RoundContext(
            server_round=server_round,
            weights=sizes / sizes.sum(),
            layout=self.codec.layout,
            global_vector=global_vec,
            generator=self.generator,
            server_update=self.server_update(self.global_state, server_round) if self.server_update else None,
            client_ids=ids,
        )
        result = self.rule(matrix, context)
        if not bool(torch.isfinite(result.vector).all()):
            return self._cannot_aggregate(server_round, "the rule's aggregate is not finite (NaN/Inf)")
        selected = result.selected.tolist()
        rec.selected = [ids[i] for i in selected]
        kept = set(rec.selected)
        rec.excluded = [c for c in ids if c not in kept]
        rec.flagged = [ids[i] for i in result.flagged.tolist()]
        rec.active = bool(getattr(result, "active", True))
        rec.weights = {ids[i]: float(w) for i, w in enumerate(result.weights.tolist())}
        rec.info = {k: float(v) for k, v in result.info.items()}
        buffers = [valid[ids[i]][1] for i in selected] or [valid[c][1] for c in ids]
        new_state = self.codec.to_state(global_vec + result.vector, ModelCodec.combine_buffers(buffers))
        return ArrayRecord(new_state), MetricRecord({"num-valid": len(ids)})

    def _cannot_aggregate(self, server_round: int, reason: str) -> tuple[ArrayRecord | None, None]:
        if self.on_failure == "skip":
            self.records[server_round].skipped = reason
            log.warning("round %d skipped (strategy.on_failure=skip): %s", server_round, reason)
            return None, None
        raise RuntimeError(
            f"round {server_round}: the aggregation rule cannot run with {reason}. "
            "Set strategy.on_failure=skip to skip such rounds instead."
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates centrally."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None
