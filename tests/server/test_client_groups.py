"""Nodes that serve a group of clients: one train message per node, one reply holding every client's records.

A node started with ``partition-id=k num-partitions=M`` (``M`` below the run's
``federation.num_clients``) serves a contiguous block of clients
(``common.runtime.clients_of_node``). The ServerApp sends it one message per
round listing its sampled clients; the ClientApp trains them one after another
and replies with ``<record>/<client id>`` records; the strategy unpacks them
into the same rows. So a grouped run must give exactly the numbers of a run
with one client per node, with an attack, a robust rule and momentum kept, and a
client's failure, silence or malformed update must stay that client's own.
"""

from __future__ import annotations

import pytest
import torch
from flwr.app import Error
from flwr.common.constant import ErrorCode

from common.runtime import clients_of_node
from tests.server.fake_grid import SILENT, federate, final_model, with_nan

GROUPED = ["federation.num_clients=7", "federation.clients_per_round=5", "federation.num_rounds=3",
           "partition.samples_per_client=48", "client.lr=0.05"]  # fmt: skip


@pytest.mark.parametrize(("nodes", "clients"), [(1, 1), (1, 7), (3, 7), (7, 7), (4, 10), (10, 10_000)])
def test_the_node_blocks_cover_every_client_once_and_differ_by_at_most_one(nodes, clients):
    blocks = [clients_of_node(k, nodes, clients) for k in range(nodes)]
    assert [c for block in blocks for c in block] == list(range(clients))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1 and min(map(len, blocks)) >= 1
    if nodes == clients:
        assert [list(b) for b in blocks] == [[k] for k in range(clients)]


def test_a_node_count_outside_one_to_the_clients_is_refused():
    with pytest.raises(ValueError, match="8 nodes cannot serve 7 clients"):
        clients_of_node(0, 8, 7)
    with pytest.raises(ValueError, match="node 3 is not one of the 3 nodes"):
        clients_of_node(3, 3, 7)


@pytest.mark.parametrize(
    "threat",
    [
        ["attack=label_flip", "attack.num_malicious=2", "strategy=trimmed_mean", "strategy.beta=0.2"],
        ["attack=alie", "attack.num_malicious=2", "strategy=multikrum", "strategy.f=1"],
        ["attack=scaling", "attack.num_malicious=1", "strategy=foolsgold"],
    ],
    ids=["label_flip-trimmed_mean", "alie-multikrum", "scaling-foolsgold"],
)
def test_grouped_nodes_give_the_numbers_of_one_client_per_node(tmp_path, fmnist_root, threat):
    single, _, single_grid = federate(tmp_path / "single", *GROUPED, *threat)
    grouped, summary, grid = federate(tmp_path / "grouped", *GROUPED, *threat, nodes=3)
    assert summary["status"] == "complete" and any(r["malicious_in_round"] for r in grouped[1:])
    for ours, ref in zip(grouped, single, strict=True):
        assert {k: v for k, v in ours.items() if k != "seconds"} == {k: v for k, v in ref.items() if k != "seconds"}
    for name, tensor in final_model(tmp_path / "single").items():
        assert torch.equal(final_model(tmp_path / "grouped")[name], tensor)
    # one message per node that has a sampled client, never one per client
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    per_round = [len({m.metadata.dst_node_id for m in trains if m.content["config"]["server-round"] == r})
                 for r in (1, 2, 3)]  # fmt: skip
    assert len(trains) == sum(per_round) and all(n <= 3 for n in per_round)
    assert len([m for m in single_grid.sent if m.metadata.message_type == "train"]) == 3 * 5


def test_a_group_member_that_fails_is_silent_or_sends_garbage_is_that_client_alone(tmp_path, fmnist_root):
    overrides = [*GROUPED, "federation.clients_per_round=7", "federation.num_rounds=2"]
    # nodes of 3: clients 0-1, 2-3, 4-6
    plan = {(1, 0): Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "CUDA out of memory"), (1, 5): SILENT,
            (1, 6): with_nan}  # fmt: skip
    lines, summary, _ = federate(tmp_path, *overrides, plan=plan, nodes=3)
    first = lines[1]
    assert first["failed"] == {"0": "CUDA out of memory", "5": "no reply before the round timeout"}
    assert list(first["rejected"]) == ["6"] and "non-finite" in first["rejected"]["6"]
    assert first["selected"] == [1, 2, 3, 4] and first["diverged"] is False
    assert lines[2]["failed"] == {} and lines[2]["rejected"] == {} and lines[2]["selected"] == list(range(7))
    assert summary["status"] == "complete"


def test_a_fused_group_trains_in_one_vectorised_step_and_gives_the_sequential_numbers(
    tmp_path, fmnist_root, monkeypatch
):
    import clients.app

    fused_calls: list[int] = []
    real = clients.app.train_group_epochs

    def counted(model, states, *args, **kwargs):
        fused_calls.append(len(states))
        return real(model, states, *args, **kwargs)

    monkeypatch.setattr(clients.app, "train_group_epochs", counted)  # the real function, counted
    threat = ["attack=label_flip", "attack.num_malicious=2", "strategy=trimmed_mean", "strategy.beta=0.2"]
    sequential, _, _ = federate(tmp_path / "sequential", *GROUPED, *threat, nodes=3)
    assert fused_calls == []  # client.fused=auto: not on a CPU
    fused, summary, _ = federate(tmp_path / "fused", *GROUPED, *threat, "client.fused=true", nodes=3)
    assert summary["status"] == "complete" and 0 < sum(fused_calls) <= 3 * 5 and max(fused_calls) > 1
    for ours, ref in zip(fused, sequential, strict=True):
        assert ours.get("sampled") == ref.get("sampled") and ours.get("selected") == ref.get("selected")
        assert ours["accuracy"] == pytest.approx(ref["accuracy"], abs=2e-3)
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-4)
    for name, tensor in final_model(tmp_path / "sequential").items():
        assert torch.allclose(final_model(tmp_path / "fused")[name], tensor, atol=1e-5)
