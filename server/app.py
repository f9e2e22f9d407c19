"""The poisonlab ServerApp's work (Flower Message API): one run from enrolment to ``summary.json``.

One run: enrol the SuperNodes (which client id each serves), build the global
model and the strategy (a rule inside ``RobustStrategy``), then run
``strategy.start`` with central evaluation of the global model after every
round, appending one line per round to ``metrics.jsonl`` (and, with
``output.tensorboard=true``, TensorBoard scalars to ``tensorboard/``). At the end
(also when the run diverges or fails) it writes the plots, then ``summary.json``
with the run's status, last and atomically: its presence means the run folder
is complete.

:func:`run_federation` takes the run's objects (a ``scripts.build.Run``: the
resolved config, dataset, partitions, model factory, codec, rule, attack and
threat model, each built once per process). Flower's app objects live with the
runner (``scripts.apps``), which builds that object from the run config.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from attacks import Backdoor, CollusionInfeasible, backdoor_test_set
from attacks.threat import ThreatModel
from common.data import to_float
from common.partition import class_counts
from common.runtime import CONFIG_KEY, clients_of_node, uses_channels_last
from common.streams import Stream, stream
from common.training import confusion_matrix, inference_copy, step_batches, train_on_batches
from server.checkpoint import load_checkpoint, restore, save_checkpoint, server_state, truncate_metrics
from server.collusion import ReportedCollusion, observers
from server.evaluate import detection_scores, metrics_from_confusion, targeted_metrics
from server.leakage import LeakageAttack
from server.results import METRICS_FILE, RunRecorder, write_plots, write_summary
from strategies.robust import RobustStrategy

log = logging.getLogger("poisonlab")


def enrolment_queries(nodes: list[int]) -> list[Message]:
    """One enrolment question per node: which client (partition) do you serve?"""
    query = RecordDict({"config": ConfigRecord({"ask": "enrolment"})})
    return [Message(query, message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]


def role_mismatch(reply: Message, cid: int, malicious: Collection[int] | None) -> str | None:
    """Why the role a SuperNode was started with contradicts the run's threat model (``None``: it agrees).

    A SuperNode started with no role (simulation) agrees with any threat
    model: its ClientApp asks the threat model. ``malicious``: the run's
    malicious client ids (``None``: not checked).
    """
    role = str(reply.content["enrolment"].get("role", ""))
    if malicious is None or role == "" or (role == "malicious") == (cid in malicious):
        return None
    wanted = "malicious" if cid in malicious else "honest"
    return (
        f"SuperNode {reply.metadata.src_node_id} serves client {cid} with role={role!r}, but the run's threat model "
        f"makes client {cid} {wanted} (attack.malicious_clients={sorted(malicious)}): start that SuperNode with "
        f"role=\"{wanted}\", or give the run '+attack.malicious_clients=[...]' listing the SuperNodes started malicious"
    )


def enrolled_block(reply: Message, num_clients: int) -> tuple[int, int] | None:
    """``(partition id k, node count M)`` of an enrolment reply, ``None`` unless ``0 <= k < M <= num_clients``.

    ``num-partitions=-1`` (not given) counts as ``num_clients``: one client per node.
    """
    info = reply.content["enrolment"]
    part, claimed_n = int(info["partition-id"]), int(info["num-partitions"])
    nodes = num_clients if claimed_n == -1 else claimed_n
    return (part, nodes) if 0 <= part < nodes <= num_clients else None


def enrol_clients(
    grid: Grid, num_clients: int, timeout: float, batch: int = 0, malicious: Collection[int] | None = None,
    retry_after: float = 5.0,
) -> dict[int, int]:  # fmt: skip
    """Wait for the SuperNodes of all ``num_clients`` clients and learn which clients each one serves.

    A SuperNode started with ``partition-id=k num-partitions=M`` serves the
    block of clients :func:`common.runtime.clients_of_node` gives: client
    ``k`` when ``M`` is ``num_clients`` (every deployment), a group of clients
    when the simulation runs fewer nodes than clients
    (``engine.clients_per_node``). SuperNodes are asked as they connect,
    ``batch`` at a time (``federation.enrol_batch``; 0: all at once): in a
    deployment each question starts a ClientApp process on its SuperNode (a
    light one: enrolment imports Flower only), so a batch bounds how many run
    at once. A SuperNode the SuperLink reports unavailable (Flower's "Node
    Unavailable": it missed its heartbeats, e.g. while its machine was busy
    starting the federation) is asked again ``retry_after`` seconds later,
    within the same deadline; any other error fails the enrolment at once.
    Returns client id -> node id. Fails if the clients are not all served
    within ``timeout`` (naming the SuperNodes that failed and why), a
    partition id is claimed twice or out of range,
    the SuperNodes disagree on ``num-partitions``, or a SuperNode's role
    contradicts the run's ``malicious`` clients (a malicious SuperNode the run
    would score as honest, or the reverse).
    """
    deadline = time.monotonic() + timeout
    node_of: dict[int, int] = {}
    asked: set[int] = set()
    claimed: dict[int, int] = {}  # partition id -> node
    num_nodes: int | None = None
    failed: dict[int, str] = {}  # node -> why its last answer was an error
    retry_at: dict[int, float] = {}
    while len(node_of) < num_clients:
        now = time.monotonic()
        new = [n for n in grid.get_node_ids() if n not in asked and retry_at.get(n, 0.0) <= now]
        if not new:
            if now > deadline:
                missing = sorted(set(range(num_clients)) - set(node_of))
                errors = "".join(f"; SuperNode {n} answered: {why}" for n, why in list(failed.items())[:5])
                raise RuntimeError(
                    f"only {len(asked | set(failed))} SuperNodes connected within {timeout:.0f}s "
                    f"(federation.connect_timeout), serving {len(node_of)} of federation.num_clients={num_clients} "
                    f"clients; none serves client ids {missing[:20]}{errors}"
                )
            time.sleep(0.5)
            continue
        asked.update(new)
        size = batch if batch > 0 else len(new)
        for start in range(0, len(new), size):
            wave = enrolment_queries(new[start : start + size])
            for reply in grid.send_and_receive(wave, timeout=max(1.0, deadline - time.monotonic())):
                node = reply.metadata.src_node_id
                if reply.has_error():  # from the node or from the SuperLink: matched to the query it answers
                    target = {m.metadata.message_id: m.metadata.dst_node_id for m in wave}
                    node = target.get(reply.metadata.reply_to_message_id, node)
                    if reply.error.code != ErrorCode.NODE_UNAVAILABLE:
                        raise RuntimeError(f"SuperNode {node} failed to enrol: {reply.error.reason}")
                    log.warning("SuperNode %d did not enrol (%s); asking it again in %.0fs", node,
                                reply.error.reason, retry_after)  # fmt: skip
                    failed[node] = reply.error.reason
                    asked.discard(node)
                    retry_at[node] = time.monotonic() + retry_after
                    continue
                failed.pop(node, None)
                if (block := enrolled_block(reply, num_clients)) is None:
                    info = reply.content["enrolment"]
                    raise RuntimeError(
                        f"SuperNode {node} has partition-id={info['partition-id']}, num-partitions="
                        f"{info['num-partitions']}, but the run has federation.num_clients={num_clients} (node k of M "
                        "serves a block of the clients: 0 <= k < M <= federation.num_clients)"
                    )
                part, nodes = block
                if num_nodes is not None and nodes != num_nodes:
                    raise RuntimeError(
                        f"SuperNode {node} has num-partitions={nodes}, another one num-partitions={num_nodes}: "
                        "start every SuperNode of the federation with the same num-partitions"
                    )
                num_nodes = nodes
                if part in claimed:
                    raise RuntimeError(f"partition-id={part} is claimed by two SuperNodes")
                claimed[part] = node
                for cid in clients_of_node(part, nodes, num_clients):
                    if (mismatch := role_mismatch(reply, cid, malicious)) is not None:
                        raise RuntimeError(mismatch)
                    node_of[cid] = node
    return node_of


def enrol_newcomers(
    grid: Grid, node_of: dict[int, int], num_clients: int, timeout: float, malicious: Collection[int] | None = None
) -> dict[int, int]:
    """Client id -> node id of SuperNodes that connected since enrolment (a restarted SuperNode rejoining).

    A SuperNode that restarts with its registered key (authentication on)
    keeps its node id; without authentication it comes back under a new one.
    Each round the ServerApp asks any node it does not know which client it
    serves, and sends that client's next messages there. A newcomer that fails
    to answer, claims an id outside the federation or has a role that
    contradicts the run's ``malicious`` clients is left out (logged); the round
    goes on.
    """
    known = set(node_of.values())
    new = [n for n in grid.get_node_ids() if n not in known]
    if not new:
        return {}
    replies = grid.send_and_receive(enrolment_queries(new), timeout=timeout)
    rejoined: dict[int, int] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("SuperNode %d connected after enrolment but did not enrol: %s", node, reply.error.reason)
            continue
        if (block := enrolled_block(reply, num_clients)) is None:
            info = reply.content["enrolment"]
            log.warning("SuperNode %d connected after enrolment with partition-id=%s num-partitions=%s: not a node "
                        "of this run", node, info["partition-id"], info["num-partitions"])  # fmt: skip
            continue
        clients = clients_of_node(*block, num_clients)
        if mismatch := next(filter(None, (role_mismatch(reply, cid, malicious) for cid in clients)), None):
            log.warning("left out: %s", mismatch)
            continue
        for cid in clients:
            log.info("client %d rejoined on SuperNode %d (was %s)", cid, node, node_of.get(cid))
            rejoined[cid] = node
    return rejoined


def threat_sampler(threat: ThreatModel, per_round: int, seed: int):
    """Each round's participants: the threat model's sampling (uniform without an attack), seeded."""

    def sample(server_round: int) -> list[int]:
        return threat.sample_round(server_round, per_round, stream(Stream.ROUND_SAMPLING, seed, server_round))

    return sample


class ColludingAttackers:
    """Server-side wrapper of a colluding attack (simulation only; a deployment's colluders: ``server.collusion``).

    In rounds of the attack window it replaces the rows of the malicious
    participants with what the attack computes from what the colluders know
    (the attack's ``knowledge``): the round's honest rows (``"omniscient"``,
    the default), or only the malicious participants' own rows
    (``"partial"``). A malicious client of a colluding attack trains honestly,
    so its row is its benign update until the attack replaces it.

    ``notes[round]`` records each round in which malicious clients took part
    inside the window, as the ``collusion`` entry of ``metrics.jsonl``:
    ``knowledge``, ``attackers`` (malicious participants), ``known_updates``
    (how many benign updates the attack was computed from), ``formed`` and
    ``reason``. When the attack cannot be formed (it raises
    :class:`attacks.CollusionInfeasible`, e.g. Fang et al.'s Krum attack with
    ``n <= 2c + 2`` replies, no honest reply to learn from, or, with partial
    knowledge, a standard deviation over a single colluder), the malicious
    participants send their benign updates that round, ``formed`` is false and
    ``reason`` says why; the run goes on.
    """

    def __init__(self, threat: ThreatModel, attack: Any, seed: int) -> None:
        self.threat, self.attack, self.seed = threat, attack, seed
        self.knowledge: str = getattr(attack, "knowledge", "omniscient")
        self.notes: dict[int, dict[str, Any]] = {}

    def __call__(self, server_round: int, client_ids: list[int], deltas: torch.Tensor) -> torch.Tensor:
        bad = [i for i, c in enumerate(client_ids) if self.threat.is_malicious(c)]
        good = [i for i, c in enumerate(client_ids) if not self.threat.is_malicious(c)]
        if not bad or not self.threat.active(server_round):
            return deltas
        known = bad if self.knowledge == "partial" else good
        note: dict[str, Any] = {"knowledge": self.knowledge, "attackers": len(bad), "known_updates": len(known),
                                "formed": True, "reason": None}  # fmt: skip
        self.notes[server_round] = note
        try:
            if not known:
                raise CollusionInfeasible("no honest reply this round to compute the attack from")
            poisoned = self.attack(deltas[known], len(bad), generator=stream(Stream.COLLUDING, self.seed, server_round))
        except CollusionInfeasible as err:
            note["formed"] = False
            note["reason"] = f"{type(self.attack).__name__} not formed, attackers sent honest updates: {err}"
            log.warning("round %d: %s", server_round, note["reason"])
            return deltas
        out = deltas.clone()
        out[bad] = poisoned.to(deltas.dtype)
        return out


class RootSetTrainer:
    """FLTrust's server update (Cao et al., NDSS 2021): local training of the global model on a clean root set.

    The root set is a seeded random draw of ``root_size`` training samples (Cao
    et al. sample it from the training distribution). As in the paper, the
    server takes the **same number of local iterations as a client**
    (``client.local_steps`` when set, else ``ceil(median partition size /
    batch_size) * epochs`` steps, cycling over
    the root set in fresh orders) with the clients' optimizer settings and
    their learning-rate schedule at the participation count a client has on
    average by this round (``(round - 1) * clients_per_round // num_clients``);
    with ``client.keep_optimizer_state`` it keeps its momentum across rounds,
    like a client that takes part every round. Returns the parameter delta.
    """

    def __init__(self, run: Any) -> None:
        data, settings = run.dataset, run.client
        idx = torch.randperm(len(data.train_y), generator=stream(Stream.ROOT_SET, run.seed))[: run.adapter.root_size]
        self.x, self.y = to_float(data.train_x[idx]).to(run.device), data.train_y[idx].to(run.device)
        self.run, self.settings = run, settings
        median_size = statistics.median(run.partition_sizes)
        self.steps = settings.local_steps or math.ceil(median_size / settings.batch_size) * settings.epochs
        self.momentum: dict[int, torch.Tensor] = {}

    def __call__(self, global_state: dict[str, torch.Tensor], server_round: int) -> torch.Tensor:
        run, settings = self.run, self.settings
        fed = run.federation
        model = run.new_model()
        model.load_state_dict(global_state)
        model.to(run.device)
        participations = (server_round - 1) * fed.clients_per_round // fed.num_clients
        optimizer = settings.sgd(model.parameters(), participations)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            if i in self.momentum:
                optimizer.state[p]["momentum_buffer"] = self.momentum[i]
        generator = stream(Stream.ROOT_TRAINING, run.seed, server_round)
        batches = step_batches(len(self.y), settings.batch_size, self.steps, generator)
        train_on_batches(model, optimizer, self.x, self.y, batches, spec=run.spec, generator=generator)
        if settings.keep_optimizer_state:
            self.momentum = {
                i: optimizer.state[p]["momentum_buffer"] for i, p in enumerate(params) if p in optimizer.state
            }
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return run.codec.to_vector(state) - run.codec.to_vector(global_state)


class RunDiverged(RuntimeError):
    """The global model gave non-finite logits or loss and ``evaluation.on_divergence=stop``."""


def write_partition_summary(out_dir: Path, run: Any) -> None:
    """Per-client sample and class counts of the partition (``partition.json``)."""
    counts = class_counts(run.dataset.train_y.numpy(), run.partitions, run.spec.num_classes)
    (out_dir / "partition.json").write_text(
        json.dumps({"sizes": run.partition_sizes, "class_counts": counts.tolist()}, separators=(",", ":")) + "\n"
    )


def is_targeted(attack: Any) -> bool:
    """An attack with a source and a target class (label flipping): scored by source / target / other recall."""
    return attack is not None and hasattr(attack, "source") and hasattr(attack, "target")


def finite_or_none(value: float) -> float | None:
    """A privacy figure as JSON can hold it: an infinite epsilon (no noise) is written as null."""
    return value if math.isfinite(value) else None


def diverged_line(server_round: int, attack: Any, backdoor: bool) -> dict[str, Any]:
    """A round whose global model is not finite: every score null, never computed from NaN logits."""
    line: dict[str, Any] = {"round": server_round, "diverged": True, "accuracy": None, "loss": None,
                            "per_class_recall": None, "per_class_precision": None, "confusion": None}  # fmt: skip
    if is_targeted(attack):
        line.update(source_recall=None, target_recall=None, other_recall=None)
    if backdoor:
        line["asr"] = None
    return line


def run_federation(grid: Grid, run: Any) -> None:
    """Run one configured federation on ``grid`` and write its outputs (``run``: a ``scripts.build.Run``)."""
    cfg = run.cfg
    out_dir = Path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    resuming = bool(cfg.get("resume"))
    if not resuming:  # a resumed run keeps the config.json it was started with
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    seed, fed = run.seed, run.federation
    random.seed(seed)
    np.random.seed(seed)
    extra = {"num_clients": fed.num_clients, "clients_per_round": fed.clients_per_round,
             "num_rounds": fed.num_rounds, "malicious_clients": sorted(run.threat.malicious)}  # fmt: skip
    recorder = None
    try:
        checkpoint = load_checkpoint(out_dir, cfg) if resuming else None
        if checkpoint is not None:
            truncate_metrics(out_dir / METRICS_FILE, checkpoint["round"])
            (out_dir / "summary.json").unlink(missing_ok=True)
        recorder = RunRecorder(out_dir, fed.num_rounds, cfg=cfg, tensorboard=run.output.tensorboard,
                               append=checkpoint is not None)  # fmt: skip
        status, reason = _run_rounds(grid, run, out_dir, recorder, checkpoint), None
    except RunDiverged as err:
        status, reason = "diverged", str(err)
    except BaseException as err:
        write_summary(out_dir, {**extra, "status": "failed", "reason": f"{type(err).__name__}: {err}"})
        raise
    finally:
        if recorder is not None:
            recorder.close()
    if run.output.plots:
        write_plots(out_dir, cfg)
    # the last output: once summary.json is there, the run folder is complete (the engines stop on it)
    write_summary(out_dir, {**extra, "status": status, "reason": reason})


def _run_rounds(
    grid: Grid, run: Any, out_dir: Path, recorder: RunRecorder, checkpoint: dict[str, Any] | None = None
) -> str:
    cfg, seed, fed, device = run.cfg, run.seed, run.federation, run.device
    data = run.dataset
    model = run.new_model(seed=seed)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    channels_last = uses_channels_last(model, run.client.channels_last)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    write_partition_summary(out_dir, run)

    attack, threat = run.attack, run.threat
    malicious = set(threat.malicious)
    # a colluding attack: the simulation's server-side wrapper, or (a deployment) the colluders' own reports
    on_clients = run.colluders_on_clients
    colluders = ColludingAttackers(threat, attack, seed) if run.attack_kind == "colluding" and not on_clients else None
    reported = ReportedCollusion(threat, attack.knowledge) if on_clients else None
    rule = run.rule
    leakage = LeakageAttack(run, out_dir) if run.leakage is not None else None
    enrol_batch = fed.enrol_batch if fed.enrol_batch is not None else 2 * (os.cpu_count() or 1)
    node_of = enrol_clients(grid, fed.num_clients, fed.connect_timeout, enrol_batch, malicious)
    strategy = RobustStrategy(
        rule=rule,
        codec=run.codec,
        node_of=node_of,
        sample=threat_sampler(threat, fed.clients_per_round, seed),
        partition_sizes=run.partition_sizes,
        train_config={CONFIG_KEY: json.dumps(cfg)},
        on_failure=run.adapter.on_failure,
        update_hook=colluders,
        generator=stream(Stream.RULE, seed),
        rejoin=lambda g, known: enrol_newcomers(g, known, fed.num_clients, min(fed.round_timeout, 60.0), malicious),
        server_update=RootSetTrainer(run) if getattr(rule, "needs_server_update", False) else None,
        client_config=leakage.client_config if leakage is not None else None,
        observer=observers(
            leakage.observe if leakage is not None else None, reported.observe if reported is not None else None
        ),
    )
    epsilon_of: dict[int, float] = {}  # each client's latest cumulative DP-SGD epsilon
    root_trainer = strategy.server_update
    done = 0  # rounds completed before this process (a resumed run)
    if checkpoint is not None:
        done = checkpoint["round"]
        restore(checkpoint, rule=rule, generator=strategy.generator)
        initial_state = checkpoint["global_state"]
        epsilon_of.update(checkpoint["extra"]["epsilon_of"])
        if root_trainer is not None:
            root_trainer.momentum = checkpoint["extra"]["root_momentum"]
        if leakage is not None:
            leakage.results = checkpoint["extra"]["leakage_results"]
        strategy.round_offset = done
        log.info("resuming after round %d of %d (Flower counts this attempt's rounds from 1)", done, fed.num_rounds)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    final: dict[str, Any] = {"state": initial_state}
    triggered = None
    if isinstance(attack, Backdoor):
        tx, ty = backdoor_test_set(to_float(data.test_x), data.test_y, attack)
        triggered = (tx.to(device), ty.to(device))
    eval_kwargs = {
        "spec": run.spec,
        "batch_size": run.evaluation.batch_size or (4096 if device.type == "cuda" else 256),
        "channels_last": channels_last,
        "device": device,
    }

    def checkpoint_round(server_round: int) -> None:
        extra = {"epsilon_of": dict(epsilon_of), "root_momentum": getattr(root_trainer, "momentum", None),
                 "leakage_results": leakage.results if leakage is not None else None}  # fmt: skip
        save_checkpoint(out_dir, server_state(server_round=server_round, cfg=cfg, global_state=final["state"],
                                              rule=rule, generator=strategy.generator, extra=extra))  # fmt: skip

    def evaluate(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round = flower_round + done
        final["state"] = arrays.to_torch_state_dict()
        if done and flower_round == 0:
            return None  # the checkpoint's model: its round is in metrics.jsonl already
        model.load_state_dict(final["state"])
        evaluated = inference_copy(model) if run.evaluation.fold_batchnorm else model
        cm, loss = confusion_matrix(evaluated, test_x, test_y, **eval_kwargs)
        if math.isfinite(loss):
            line = {"round": server_round, "diverged": False, **metrics_from_confusion(cm), "loss": loss}
            if is_targeted(attack):
                line.update(targeted_metrics(line["per_class_recall"], attack.source, attack.target))
            if triggered is not None:
                tcm, _ = confusion_matrix(evaluated, *triggered, **eval_kwargs)
                line["asr"] = float(tcm[:, attack.target].sum()) / max(int(tcm.sum()), 1)
        else:
            line = diverged_line(server_round, attack, triggered is not None)
        if server_round > 0:
            rec = strategy.records[server_round]
            line.update(rec.as_metrics())
            line["malicious_in_round"] = len(set(rec.sampled) & malicious)
            line["collusion"] = colluders.notes.get(server_round) if colluders is not None else None
            if reported is not None:
                line["collusion"] = reported.note(server_round, rec.valid)
            scored = rec.detects and rec.active and rec.skipped is None
            line.update(detection_scores(rec.valid, rec.flagged, malicious, scored=scored))
            if run.dp_sgd is not None:
                epsilon_of.update(rec.epsilon)
                line["epsilon"] = {str(c): finite_or_none(e) for c, e in sorted(rec.epsilon.items())}
                line["epsilon_max"] = finite_or_none(max(epsilon_of.values(), default=0.0))
            if run.central_dp is not None:
                line["central_epsilon"] = finite_or_none(getattr(rule, "epsilon", math.inf))
            if leakage is not None:
                line["leakage"] = leakage.run_round(server_round)
        recorder.record(line)
        if server_round > 0 and run.output.checkpoint:
            checkpoint_round(server_round)
        if line["diverged"] and run.evaluation.on_divergence == "stop":
            raise RunDiverged(
                f"round {server_round}: the global model gives non-finite logits or loss "
                "(evaluation.on_divergence=stop; set continue to go on)"
            )
        return None if line["diverged"] else MetricRecord({"accuracy": line["accuracy"], "loss": loss})

    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_state),
            num_rounds=fed.num_rounds - done,
            timeout=fed.round_timeout,
            evaluate_fn=evaluate,
        )
    finally:
        torch.save(final["state"], out_dir / "final_model.pt")
    return "complete"
