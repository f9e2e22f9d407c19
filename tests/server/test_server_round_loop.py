"""The ServerApp round loop (``server.app.run_federation``) on a fake Flower ``Grid``, in one process.

See ``fake_grid.py`` for how the fake Grid answers with the ClientApp's own
handlers. No Ray, no subprocess: real Fashion-MNIST, a tiny federation, seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from fake_grid import SILENT, FakeGrid, federate, final_model, lines_of, make_run, scaled, summary_of, with_nan
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from clients.slot_store import open_state_store
from common.training import confusion_matrix
from server.app import enrol_clients, enrol_newcomers, run_federation

# --- tests ----------------------------------------------------------------------------------------------


def test_enrolment_maps_node_ids_to_the_client_ids_of_their_node_config():
    grid = FakeGrid(4)
    node_of = enrol_clients(grid, 4, timeout=5)
    assert node_of == {grid.client_of(node): node for node in grid.get_node_ids()}
    assert sorted(node_of) == [0, 1, 2, 3] and set(node_of.values()) == set(grid.contexts)
    assert all(node != cid for cid, node in node_of.items())
    assert [m.metadata.message_type for m in grid.sent] == [MessageType.QUERY] * 4
    assert len(grid.timeouts) == 1 and 4 < grid.timeouts[0] <= 5  # one wave, within federation.connect_timeout


def test_enrolment_asks_the_supernodes_in_batches_within_one_deadline():
    grid = FakeGrid(8)
    node_of = enrol_clients(grid, 8, timeout=5, batch=3)
    assert sorted(node_of) == list(range(8))
    assert len(grid.sent) == 8 and len(grid.timeouts) == 3  # waves of 3, 3 and 2 SuperNodes
    assert all(0 < t <= 5 for t in grid.timeouts) and grid.timeouts == sorted(grid.timeouts, reverse=True)


@pytest.mark.parametrize(
    ("grid_args", "message"),
    [
        ({"partition_ids": [0, 1, 1, 3]}, "partition-id=1 is claimed by two SuperNodes"),
        ({"partition_ids": [0, 1, 2, 4]}, "has partition-id=4, num-partitions=4, but the run has "
                                          "federation.num_clients=4"),
        ({"num_partitions": 5}, "num-partitions=5, but the run has federation.num_clients=4"),
    ],
)  # fmt: skip
def test_enrolment_refuses_a_duplicated_or_out_of_range_partition_id(grid_args, message):
    with pytest.raises(RuntimeError, match=message):
        enrol_clients(FakeGrid(4, **grid_args), 4, timeout=5)


def test_enrolment_refuses_a_supernode_whose_role_contradicts_the_threat_model():
    roles = ["honest", "malicious", "honest", "honest"]
    node_of = enrol_clients(FakeGrid(4, roles=roles), 4, timeout=5, malicious={1})
    assert sorted(node_of) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match=r"serves client 1 with role='malicious', but the run's threat model makes "
                                           r"client 1 honest \(attack.malicious_clients=\[\]\)"):  # fmt: skip
        enrol_clients(FakeGrid(4, roles=roles), 4, timeout=5, malicious=set())
    with pytest.raises(RuntimeError, match=r"serves client 2 with role='honest', but .* makes client 2 malicious"):
        enrol_clients(FakeGrid(4, roles=["honest", "malicious", "honest", "honest"]), 4, timeout=5, malicious={1, 2})
    # a SuperNode started with no role (the simulation's nodes) agrees with any threat model
    assert sorted(enrol_clients(FakeGrid(4), 4, timeout=5, malicious={2})) == [0, 1, 2, 3]


def test_a_newcomer_whose_role_contradicts_the_threat_model_is_left_out():
    grid = FakeGrid(3, roles=["honest", "malicious", "honest"])
    rejoined = enrol_newcomers(grid, {}, 3, timeout=5, malicious={2})
    assert sorted(rejoined) == [0]  # client 1 says malicious, client 2 says honest: both contradict {2}
    assert sorted(enrol_newcomers(grid, {}, 3, timeout=5, malicious={1})) == [0, 1, 2]


class UnavailableAtFirst(FakeGrid):
    """The SuperLink answers the first ``times`` enrolment queries to node ``k`` with Flower's "Node Unavailable"."""

    def __init__(self, num_nodes: int, unavailable: dict[int, int]) -> None:
        super().__init__(num_nodes)
        self.unavailable = {self.node_of_partition(k): times for k, times in unavailable.items()}

    def node_of_partition(self, k: int) -> int:
        return next(node for node in self.contexts if self.client_of(node) == k)

    def _deliver(self, msg):
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type == MessageType.QUERY and self.unavailable.get(node, 0) > 0:
            self.unavailable[node] -= 1
            reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable"), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = 0  # sent by the SuperLink, not by the node
            reply.metadata.__dict__["_message_id"] = f"unavailable-{node}-{self.unavailable[node]}"
            assert reply.metadata.src_node_id == 0 and reply.metadata.reply_to_message_id == msg.metadata.message_id
            return reply
        return super()._deliver(msg)


def test_enrolment_asks_a_supernode_the_superlink_reported_unavailable_again():
    grid = UnavailableAtFirst(4, {2: 2})
    node_of = enrol_clients(grid, 4, timeout=10, retry_after=0.05)
    assert node_of == {grid.client_of(node): node for node in grid.get_node_ids()}
    asked = [m.metadata.dst_node_id for m in grid.sent]
    assert asked.count(grid.node_of_partition(2)) == 3 and len(asked) == 6  # two "unavailable", then its answer


def test_enrolment_that_stays_unavailable_fails_naming_the_supernode_and_the_reason():
    grid = UnavailableAtFirst(3, {1: 1000})
    with pytest.raises(RuntimeError, match=rf"none serves client ids \[1\]; SuperNode {grid.node_of_partition(1)} "
                                           r"answered: Error: Node Unavailable"):  # fmt: skip
        enrol_clients(grid, 3, timeout=1.0, retry_after=0.05)


def test_enrolment_fails_at_once_on_an_error_from_the_clientapp():
    grid = UnavailableAtFirst(3, {})
    grid._deliver = lambda msg: Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom"), reply_to=msg)
    with pytest.raises(RuntimeError, match="failed to enrol: boom"):
        enrol_clients(grid, 3, timeout=30, retry_after=0.05)


def test_enrolment_fails_when_supernodes_are_missing():
    with pytest.raises(
        RuntimeError,
        match=r"only 3 SuperNodes connected within 0s .* serving 3 of federation.num_clients=4 clients; "
        r"none serves client ids \[3\]",
    ):
        enrol_clients(FakeGrid(3, num_partitions=4), 4, timeout=0.01)


def test_a_clean_run_writes_every_round_and_its_outputs(tmp_path, fmnist_root):
    run = make_run(tmp_path)
    grid = FakeGrid(4)
    run_federation(grid, run)
    lines = lines_of(tmp_path)
    assert [line["round"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert line["diverged"] is False and 0.0 <= line["accuracy"] <= 1.0 and math.isfinite(line["loss"])
    for line in lines[1:]:
        assert sorted(line["sampled"]) == [0, 1, 2, 3]
        assert line["selected"] == [0, 1, 2, 3] and line["excluded"] == [] and line["flagged"] == []
        assert line["rejected"] == {} and line["failed"] == {} and line["skipped"] is None
        assert line["defense_active"] is True and line["detects"] is False
        assert line["tp"] is None and line["tpr"] is None  # FedAvg detects nothing: never scored
        assert line["malicious_in_round"] == 0
    assert lines[1]["loss"] != lines[0]["loss"] != lines[2]["loss"]

    summary = summary_of(tmp_path)
    assert summary["status"] == "complete" and summary["reason"] is None
    assert summary["rounds_completed"] == 2 and summary["num_rounds"] == 2
    assert summary["final_accuracy"] == lines[2]["accuracy"] and summary["first_diverged_round"] is None
    assert json.loads((tmp_path / "partition.json").read_text())["sizes"] == [64, 64, 64, 64]
    assert json.loads((tmp_path / "config.json").read_text())["federation"]["num_rounds"] == 2

    # final_model.pt is the round-2 global model: re-evaluated, it scores exactly what round 2 recorded
    model = run.new_model()
    model.load_state_dict(final_model(tmp_path))
    cm, loss = confusion_matrix(model, run.dataset.test_x, run.dataset.test_y, spec=run.spec)
    assert float(cm.diagonal().sum()) / float(cm.sum()) == pytest.approx(lines[2]["accuracy"])
    assert loss == pytest.approx(lines[2]["loss"], rel=1e-5)

    # the wire: one enrolment query, then per round one TRAIN message to each sampled client's own node
    assert grid.timeouts[0] <= run.federation.connect_timeout  # enrolment
    assert set(grid.timeouts[1:]) == {run.federation.round_timeout}  # every round's train (and empty evaluate)
    train = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert len(train) == 8
    for r, line in ((1, lines[1]), (2, lines[2])):
        sent = [m for m in train if m.content["config"]["server-round"] == r]
        assert sorted(grid.client_of(m.metadata.dst_node_id) for m in sent) == sorted(line["sampled"])
    # each client's state persisted across rounds in the node's state store (its momentum and participation count),
    # read back from the round before the one it trains in
    store = open_state_store(tmp_path / "checkpoint" / "clients", num_clients=4, keeps_ledger=False)
    assert [store.load(c, before_round=3)["participations"] for c in range(4)] == [2, 2, 2, 2]
    assert [store.load(c, before_round=2)["participations"] for c in range(4)] == [1, 1, 1, 1]
    assert store.load(0, before_round=1) == {}
    assert len(store.load(0, before_round=3)["momentum"]) == len(list(run.new_model().parameters()))


def test_a_reply_with_nan_is_rejected_and_never_aggregated(tmp_path, fmnist_root):
    lines, summary, _ = federate(tmp_path / "nan", plan={(None, 2): with_nan})
    for line in lines[1:]:
        assert list(line["rejected"]) == ["2"] and "non-finite" in line["rejected"]["2"]
        assert line["selected"] == [0, 1, 3] and line["failed"] == {}
        assert line["diverged"] is False
    assert summary["status"] == "complete"
    rejected = final_model(tmp_path / "nan")
    assert all(bool(torch.isfinite(v).all()) for v in rejected.values())

    # the same federation in which client 2 fails outright: the global models are identical
    _, _, _ = federate(tmp_path / "failed", plan={(None, 2): Error(ErrorCode.CLIENT_APP_CRASHED, "gone")})
    failed = final_model(tmp_path / "failed")
    assert rejected.keys() == failed.keys()
    for key in rejected:
        assert torch.equal(rejected[key], failed[key]), key


def test_a_negative_running_variance_is_rejected(tmp_path, fmnist_root):
    def negative_var(state):
        state = {k: v.clone() for k, v in state.items()}
        state["layer1.1.running_var"][0] = -0.5
        return state

    lines, summary, _ = federate(tmp_path, "model=fmnist_cnn", "federation.num_rounds=1", plan={(1, 1): negative_var})
    line = lines[1]
    assert list(line["rejected"]) == ["1"]
    assert "running_var" in line["rejected"]["1"] and "negative variance" in line["rejected"]["1"]
    assert line["selected"] == [0, 2, 3]
    assert summary["status"] == "complete"
    state = final_model(tmp_path)
    assert all(bool((state[k] >= 0).all()) for k in state if k.endswith("running_var"))


def test_failed_and_silent_clients_are_recorded_and_the_round_goes_on(tmp_path, fmnist_root):
    plan = {(1, 0): Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "CUDA out of memory"), (1, 3): SILENT}
    lines, summary, _ = federate(tmp_path, plan=plan)
    assert lines[1]["failed"] == {"0": "CUDA out of memory", "3": "no reply before the round timeout"}
    assert lines[1]["selected"] == [1, 2] and lines[1]["rejected"] == {} and lines[1]["skipped"] is None
    assert lines[1]["defense_active"] is True and lines[1]["accuracy"] is not None
    assert lines[2]["failed"] == {} and lines[2]["selected"] == [0, 1, 2, 3]
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2


KRUM = [
    "strategy=krum",
    "strategy.f=1",
    "federation.num_clients=5",
    "federation.clients_per_round=5",
    "partition.samples_per_client=48",
]
CRASH = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "crashed")


def test_a_round_the_rule_cannot_run_is_skipped_and_keeps_the_global_model(tmp_path, fmnist_root):
    lines, summary, _ = federate(tmp_path, *KRUM, "strategy.on_failure=skip", plan={(1, 4): CRASH})
    skipped = lines[1]
    assert skipped["skipped"] is not None and "4 valid replies" in skipped["skipped"]
    assert "krum" in skipped["skipped"]
    assert skipped["failed"] == {"4": "crashed"} and skipped["selected"] == []
    assert skipped["defense_active"] is False
    assert (skipped["accuracy"], skipped["loss"]) == (lines[0]["accuracy"], lines[0]["loss"])  # model unchanged
    after = lines[2]
    assert after["skipped"] is None and after["defense_active"] is True and len(after["selected"]) == 1
    assert after["loss"] != lines[0]["loss"]
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2


def test_a_round_the_rule_cannot_run_fails_the_run_when_asked_to_raise(tmp_path, fmnist_root):
    run = make_run(tmp_path, *KRUM, "strategy.on_failure=raise")
    with pytest.raises(RuntimeError, match=r"round 1: the aggregation rule cannot run with 4 valid replies"):
        run_federation(FakeGrid(5, plan={(1, 4): CRASH}), run)
    summary = summary_of(tmp_path)
    assert summary["status"] == "failed"
    assert summary["reason"].startswith("RuntimeError: round 1:") and "4 valid replies" in summary["reason"]
    assert summary["rounds_completed"] == 0
    assert [line["round"] for line in lines_of(tmp_path)] == [0]
    initial = run.new_model(seed=run.seed).state_dict()
    saved = final_model(tmp_path)
    assert all(torch.equal(saved[k], initial[k]) for k in initial)  # the initial model, never a partial one


def test_a_diverged_model_stops_the_run_by_default(tmp_path, fmnist_root):
    # every reply is the trained model times 1e30: each row and their mean are finite, the logits are not
    lines, summary, _ = federate(tmp_path, plan={(1, None): scaled(1e30)})
    assert [line["round"] for line in lines] == [0, 1]
    line = lines[1]
    assert line["diverged"] is True
    assert line["accuracy"] is None and line["loss"] is None and line["per_class_recall"] is None
    assert line["rejected"] == {} and line["selected"] == [0, 1, 2, 3]  # valid replies; the model diverged
    assert summary["status"] == "diverged" and "round 1" in summary["reason"]
    assert summary["first_diverged_round"] == 1 and summary["diverged_rounds"] == [1]
    assert summary["rounds_completed"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in final_model(tmp_path).values())


def test_a_diverged_model_with_continue_runs_every_round(tmp_path, fmnist_root):
    # After round 1 the global model gives non-finite logits, so every client trains to NaN in round 2: all
    # four replies are rejected and the round is skipped (on_failure=skip; with raise the run would stop there).
    lines, summary, _ = federate(
        tmp_path, "evaluation.on_divergence=continue", "strategy.on_failure=skip", plan={(1, None): scaled(1e30)}
    )
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert [line["diverged"] for line in lines] == [False, True, True]
    assert lines[2]["accuracy"] is None
    assert sorted(lines[2]["rejected"]) == ["0", "1", "2", "3"]
    assert all("non-finite" in reason for reason in lines[2]["rejected"].values())
    assert "0 valid replies" in lines[2]["skipped"]
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2
    assert summary["first_diverged_round"] == 1 and summary["diverged_rounds"] == [1, 2]
    assert "final_accuracy" not in summary  # no round was scored


PCA = ["strategy=pca_detect", "strategy.source=6", "attack=none"]


def test_a_detecting_rule_is_scored_only_in_rounds_it_was_active(tmp_path, fmnist_root):
    lines, _, _ = federate(tmp_path / "warmup", *PCA)  # start_round 10 > num_rounds: never active
    for line in lines[1:]:
        assert line["detects"] is True and line["defense_active"] is False
        assert line["flagged"] == [] and line["selected"] == [0, 1, 2, 3]
        for key in ("tp", "fp", "fn", "tn", "tpr", "fpr", "precision"):
            assert line[key] is None, key

    # the same rule active from round 1 on is scored: no malicious client, so every flag is a false positive
    lines, _, _ = federate(tmp_path / "active", *PCA, "strategy.start_round=1", "strategy.min_rows=4")
    for line in lines[1:]:
        assert line["detects"] is True and line["defense_active"] is True
        flagged = len(line["flagged"])
        assert (line["tp"], line["fn"], line["fp"], line["tn"]) == (0, 0, flagged, 4 - flagged)
        assert line["tpr"] is None and line["fpr"] == flagged / 4


def test_krum_keeps_a_sign_flipper_out_and_records_it_as_excluded_not_detected(tmp_path, fmnist_root):
    lines, summary, _ = federate(
        tmp_path, *KRUM, "partition.samples_per_client=300", "client.batch_size=10", "seed=1",
        "attack=sign_flip", "attack.num_malicious=1",
    )  # fmt: skip
    (bad,) = summary["malicious_clients"]
    for line in lines[1:]:
        assert line["malicious_in_round"] == 1
        assert len(line["selected"]) == 1 and bad not in line["selected"]
        assert bad in line["excluded"] and len(line["excluded"]) == 4  # Krum keeps one update, leaves out four
        # Krum selects, it does not detect: no flags, and no detection score (never a TPR of 0 or 1)
        assert line["flagged"] == [] and line["detects"] is False and line["defense_active"] is True
        assert line["tp"] is None and line["tpr"] is None and line["precision"] is None
    assert lines[2]["accuracy"] > lines[0]["accuracy"] + 0.3


class RestartingGrid(FakeGrid):
    """Client 2's SuperNode restarts after round 1 and comes back under a new node id (no authentication)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.old_node = self.new_node = None

    def get_node_ids(self):
        trained = {int(m.content["config"]["server-round"]) for m in self.sent if m.metadata.message_type == "train"}
        if self.old_node is None and 1 in trained:
            self.old_node = next(n for n, c in self.contexts.items() if int(c.node_config["partition-id"]) == 2)
            context = self.contexts.pop(self.old_node)
            self.new_node = 9_999_000_000
            self.contexts[self.new_node] = Context(run_id=1, node_id=self.new_node, node_config=context.node_config,
                                                   state=RecordDict(), run_config={})  # fmt: skip
        return super().get_node_ids()


def test_a_supernode_back_under_a_new_node_id_rejoins_as_its_client(tmp_path, fmnist_root):
    run = make_run(tmp_path, "federation.num_rounds=3")
    grid = RestartingGrid(4)
    run_federation(grid, run)
    lines = lines_of(tmp_path)
    assert all(line["failed"] == {} and line["selected"] == [0, 1, 2, 3] for line in lines[1:])
    rounds_by_node = {(m.metadata.dst_node_id, m.metadata.message_type, int(m.content["config"].get("server-round", 0)))
                      for m in grid.sent}  # fmt: skip
    assert (grid.old_node, MessageType.TRAIN, 1) in rounds_by_node
    assert (grid.new_node, MessageType.QUERY, 0) in rounds_by_node  # asked which client it serves, once
    assert {(grid.new_node, MessageType.TRAIN, r) for r in (2, 3)} <= rounds_by_node
    # its momentum came from the node's state store, not from the lost context: same model as without the restart
    steady = make_run(tmp_path / "steady", "federation.num_rounds=3")
    run_federation(FakeGrid(4), steady)
    assert [line["accuracy"] for line in lines] == [line["accuracy"] for line in lines_of(tmp_path / "steady")]
