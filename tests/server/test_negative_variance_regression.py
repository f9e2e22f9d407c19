"""Regression: a scaling attacker must not turn the global model's BatchNorm variance negative.

The case measured on real Fashion-MNIST (paper A's CNN, round 1, lr 0.01,
batch 32): the unweighted mean of two honest updates and one ``scaling``
update (boost 5) over the *whole* state (running statistics included) gives a
negative ``running_var``; the model then outputs NaN for every test image, and
``argmax`` over NaN logits used to be scored as accuracy 0.1 with every image
"predicted" as class 0 (target recall 1.0, ASR 1.0 for target 0).
"""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from attacks.update import Scaling
from common.data import SPECS, load_dataset, to_float
from common.models import FashionMnistCnn
from common.params import ModelCodec
from common.training import LocalTraining, confusion_matrix, train_epochs
from strategies.robust import RobustStrategy
from strategies.rules.mean import Mean

SPEC = SPECS["fashion_mnist"]


@pytest.fixture(scope="module")
def round_one(fmnist_root):
    """Three clients' models after one local epoch (1,200 real samples each) from the same start."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    torch.manual_seed(0)
    data = load_dataset("fashion_mnist", fmnist_root)
    start = FashionMnistCnn()
    global_state = {k: v.detach().clone() for k, v in start.state_dict().items()}
    local = []
    settings = LocalTraining(lr=0.01, momentum=0.9, batch_size=32)
    for client in range(3):
        model = FashionMnistCnn()
        model.load_state_dict(global_state)
        idx = torch.arange(client * 1200, (client + 1) * 1200)
        train_epochs(model, settings.sgd(model.parameters()), to_float(data.train_x[idx]), data.train_y[idx],
                     spec=SPEC, batch_size=32, epochs=1, generator=torch.Generator().manual_seed(client))  # fmt: skip
        local.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return data, global_state, local


def evaluate(state, data):
    model = FashionMnistCnn()
    model.load_state_dict(state)
    return confusion_matrix(model, data.test_x, data.test_y, spec=SPEC, batch_size=1000)


def test_scaling_the_whole_state_breaks_the_model_and_evaluation_refuses_to_score_it(round_one):
    data, global_state, local = round_one
    codec = ModelCodec.of(global_state, trainable=[k for k in global_state if torch.is_floating_point(global_state[k])])
    start = codec.to_vector(global_state)
    deltas = [codec.to_vector(s) - start for s in local]
    deltas[2] = Scaling(boost=5.0)(deltas[2], generator=torch.Generator())
    old_mean = codec.to_state(start + torch.stack(deltas).mean(0), codec.buffers(local[0]))
    assert float(old_mean["layer1.1.running_var"].min()) < 0  # the defect: a negative variance
    cm, loss = evaluate(old_mean, data)
    assert math.isnan(loss)  # the server records this round as diverged, never as accuracy 0.1 / ASR 1.0
    assert int(cm.sum()) == 0  # nothing was scored
    model = FashionMnistCnn().eval()
    model.load_state_dict(old_mean)
    with torch.inference_mode():
        logits = model(to_float(data.test_x[:500]))
    assert bool(logits.isnan().all()) and bool((logits.argmax(1) == 0).all())  # what used to be scored as class 0


def test_the_adapter_keeps_running_statistics_out_of_the_attack_and_the_model_finite(round_one):
    data, global_state, local = round_one
    codec = ModelCodec.of_model(FashionMnistCnn())
    assert not any("running" in name or "num_batches" in name for name in codec.layout.names)
    start = codec.to_vector(global_state)
    attacked = dict(local[2])
    delta = Scaling(boost=5.0)(codec.to_vector(local[2]) - start, generator=torch.Generator())
    attacked = dict(codec.to_state(start + delta, codec.buffers(local[2])))
    strategy = RobustStrategy(rule=Mean(), codec=codec, node_of={0: 10, 1: 11, 2: 12}, sample=lambda r: [0, 1, 2],
                              partition_sizes=[1200] * 3, train_config={})  # fmt: skip
    messages = list(strategy.configure_train(1, ArrayRecord(global_state), ConfigRecord(), grid=None))
    replies = [
        Message(RecordDict({"arrays": ArrayRecord(s), "metrics": MetricRecord({"train-loss": 1.0})}), reply_to=m)
        for m, s in zip(messages, [local[0], local[1], attacked], strict=True)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    for name in ("layer1.1.running_var", "layer2.1.running_var"):
        assert float(new[name].min()) >= 0
        expected = torch.stack([s[name] for s in local]).median(0).values  # median of three: the middle one
        assert torch.equal(new[name], expected)
    cm, loss = evaluate(new, data)
    assert math.isfinite(loss)
    assert int(cm.sum()) == len(data.test_y)
    assert int((cm.sum(0) > 0).sum()) >= 3  # real predictions, not one class for every image
