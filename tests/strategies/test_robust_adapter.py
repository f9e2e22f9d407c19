"""The Flower adapter on real Flower messages: hygiene, decisions, weights, skipping."""

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from common.params import ModelCodec
from strategies.robust import RobustStrategy
from strategies.rules.krum import Krum
from strategies.rules.mean import Mean


@pytest.fixture(autouse=True)
def task_identity():
    # Messages outside a running Flower app need an identity (as Flower's own simulation sets it).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tiny_model().state_dict().items()}


def shifted(state, by: float, tracked: int):
    out = {k: (v + by if torch.is_floating_point(v) else torch.tensor(tracked)) for k, v in state.items()}
    return out


def make_strategy(rule, sizes=(100, 100, 100, 100, 100), on_failure="raise"):
    state = tiny_state()
    clients = list(range(len(sizes)))
    strategy = RobustStrategy(
        rule=rule,
        codec=ModelCodec.of_model(tiny_model()),
        node_of={c: 100 + c for c in clients},
        sample=lambda r: clients,
        partition_sizes=list(sizes),
        train_config={"poisonlab-config": "{}"},
        on_failure=on_failure,
    )
    return strategy, state


def reply(msg: Message, state=None, *, error: str | None = None, reported=1) -> Message:
    if error:
        return Message(Error(code=1, reason=error), reply_to=msg)
    metrics = MetricRecord({"train-loss": 0.5, "num-examples": reported})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


def test_bad_replies_are_rejected_and_never_reach_the_global_model():
    strategy, state = make_strategy(Mean())
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    assert [m.metadata.dst_node_id for m in messages] == [100, 101, 102, 103, 104]
    assert messages[0].content["config"]["server-round"] == 1
    nan_state = shifted(state, 1.0, 5)
    nan_state["0.weight"][0, 0] = math.nan
    wrong_shape = shifted(state, 1.0, 5)
    wrong_shape["0.bias"] = torch.zeros(3)
    wrong_dtype = shifted(state, 1.0, 5)
    wrong_dtype["0.bias"] = wrong_dtype["0.bias"].double()
    replies = [
        reply(messages[0], shifted(state, 1.0, 4)),
        reply(messages[1], shifted(state, 3.0, 8)),
        reply(messages[2], nan_state),
        reply(messages[3], wrong_shape),
        reply(messages[4], wrong_dtype),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    for key, value in state.items():
        if torch.is_floating_point(value):
            assert torch.allclose(new[key], value + 2.0), key  # mean of +1 and +3 only
    assert new["1.num_batches_tracked"].dtype == torch.long
    assert int(new["1.num_batches_tracked"]) == 6  # median of 4 and 8
    rec = strategy.records[1]
    assert sorted(rec.rejected) == [2, 3, 4]
    assert "non-finite" in rec.rejected[2] and "shape" in rec.rejected[3] and "dtype" in rec.rejected[4]
    assert rec.selected == [0, 1] and rec.valid == [0, 1]
    metrics = rec.as_metrics()
    assert metrics["flagged"] == [] and metrics["excluded"] == []  # rejected is its own field
    assert sorted(metrics["rejected"]) == ["2", "3", "4"]


def test_invalid_buffers_are_rejected_like_a_nan():
    strategy, state = make_strategy(Mean())
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    negative_var = shifted(state, 1.0, 5)
    negative_var["1.running_var"][0] = -1.25
    inf_mean = shifted(state, 1.0, 5)
    inf_mean["1.running_mean"][1] = math.inf
    good = shifted(state, 1.0, 4)
    replies = [reply(messages[0], good), reply(messages[1], negative_var), reply(messages[2], inf_mean)]
    arrays, _ = strategy.aggregate_train(1, replies)
    rec = strategy.records[1]
    assert "1.running_var: negative variance -1.25" in rec.rejected[1]
    assert "1.running_mean" in rec.rejected[2] and "non-finite" in rec.rejected[2]
    assert rec.selected == [0]
    assert torch.equal(arrays.to_torch_state_dict()["1.running_var"], state["1.running_var"] + 1.0)


def test_rules_see_trainable_parameters_only_and_buffers_take_the_median_of_the_kept_replies():
    seen = {}

    def boost_client_0(server_round, ids, deltas):
        seen["d"] = deltas.shape[1]
        out = deltas.clone()
        out[0] *= 5  # a scaling attacker acts on the parameter rows only
        return out

    strategy, state = make_strategy(Mean())
    strategy.update_hook = boost_client_0
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    replies = [reply(m, shifted(state, float(i + 1), 1)) for i, m in enumerate(messages[:3])]
    arrays, _ = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    assert seen["d"] == 3 * 2 + 2 + 2 + 2  # Linear(3, 2) weight and bias, BatchNorm weight and bias
    assert torch.allclose(new["0.bias"], state["0.bias"] + (5 + 2 + 3) / 3)
    # running statistics: median of the replies (shifted by 1, 2, 3), untouched by the boost
    assert torch.allclose(new["1.running_var"], state["1.running_var"] + 2.0)
    assert strategy.records[1].selected == [0, 1, 2]


def test_failed_and_missing_replies_are_recorded():
    strategy, state = make_strategy(Mean())
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    replies = [reply(messages[0], shifted(state, 1.0, 1)), reply(messages[1], error="client crashed")]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.records[1].failed == {
        1: "client crashed",
        2: "no reply before the round timeout",
        3: "no reply before the round timeout",
        4: "no reply before the round timeout",
    }
    assert torch.allclose(arrays.to_torch_state_dict()["0.bias"], state["0.bias"] + 1.0)


def test_weights_come_from_the_servers_partition_sizes_not_from_client_reports():
    strategy, state = make_strategy(Mean(weighted=True), sizes=(300, 100, 100, 100, 100))
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    replies = [reply(m, shifted(state, float(i), 1), reported=10**6 if i == 4 else 1) for i, m in enumerate(messages)]
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = (300 * 0 + 100 * (1 + 2 + 3 + 4)) / 700
    assert torch.allclose(arrays.to_torch_state_dict()["0.bias"], state["0.bias"] + expected)
    assert strategy.records[1].weights == pytest.approx({0: 3 / 7, 1: 1 / 7, 2: 1 / 7, 3: 1 / 7, 4: 1 / 7})


def test_rounds_that_break_the_rule_raise_or_are_skipped_on_request():
    for on_failure in ("raise", "skip"):
        strategy, state = make_strategy(Krum(f=1), on_failure=on_failure)
        messages = list(strategy.configure_train(3, ArrayRecord(state), ConfigRecord(), grid=None))
        replies = [reply(m, shifted(state, 1.0, 1)) for m in messages[:3]]  # Krum f=1 needs n > 4
        if on_failure == "raise":
            with pytest.raises(RuntimeError, match="round 3: the aggregation rule cannot run with 3 valid replies"):
                strategy.aggregate_train(3, replies)
        else:
            arrays, metrics = strategy.aggregate_train(3, replies)
            assert arrays is None and metrics is None
            assert "3 valid replies" in strategy.records[3].skipped
            assert strategy.records[3].as_metrics()["defense_active"] is False


def test_a_selection_rule_excludes_without_flagging():
    strategy, state = make_strategy(Krum(f=1))
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    replies = [reply(m, shifted(state, 100.0 if i == 4 else 0.01 * i, 1)) for i, m in enumerate(messages)]
    strategy.aggregate_train(1, replies)
    metrics = strategy.records[1].as_metrics()
    assert len(metrics["selected"]) == 1 and 4 not in metrics["selected"]
    assert sorted(metrics["selected"] + metrics["excluded"]) == [0, 1, 2, 3, 4]
    assert metrics["flagged"] == [] and metrics["detects"] is False and metrics["defense_active"] is True


def test_colluding_hook_sees_rows_sorted_by_client_id():
    seen = {}

    def hook(server_round, ids, deltas):
        seen["ids"] = ids
        return -deltas

    strategy, state = make_strategy(Mean())
    strategy.update_hook = hook
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), grid=None))
    replies = [reply(m, shifted(state, 1.0, 1)) for m in reversed(messages)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert seen["ids"] == [0, 1, 2, 3, 4]
    assert torch.allclose(arrays.to_torch_state_dict()["0.bias"], state["0.bias"] - 1.0)
