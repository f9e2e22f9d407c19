"""Fused group training (vmap over stacked parameters) against the sequential loop, client by client."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from common.data import SPECS
from common.fused_training import default_fused, fusable, train_group_epochs, train_group_fused
from common.models import Cifar10Cnn, FashionMnistCnn
from common.streams import Stream, stream
from common.training import LocalTraining, epoch_batches, train_epochs
from scripts.config import instantiate_component

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
SEED, ROUND = 7, 3
SIZES = [37, 64, 50, 9, 23]  # ragged: 3, 4, 4, 1 and 2 batches of 16, most with a smaller last one
LRS = [0.05, 0.05, 0.02, 0.1, 0.05]


def make_model(name: str, spec) -> nn.Module:
    """The configured model, built by the factory the runs use (``conf/model/<name>.yaml``)."""
    section = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    return instantiate_component(
        section, "model", num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.size
    )


def client_setup(name: str, spec, fresh: bool = False):
    """Five clients: shards of different sizes, two start states, prior momentum on some (one partial).

    ``fresh``: no client has momentum buffers yet (everyone's first participation).
    """
    torch.manual_seed(0)
    template = make_model(name, spec)
    global_state = {k: v.clone() for k, v in template.state_dict().items()}
    other = {k: v + 0.01 * torch.randn_like(v) for k, v in global_state.items()}
    states = [global_state, global_state, other, global_state, global_state]
    names = [n for n, _ in template.named_parameters()]
    shapes = [p.shape for p in template.parameters()]
    prior = [{str(i): 0.1 * torch.randn(s) for i, s in enumerate(shapes)} for _ in range(2)]
    momenta = [None, prior[0], {}, {int(i): b for i, b in prior[1].items()}, {"0": 0.1 * torch.randn(shapes[0])}]
    if fresh:
        momenta = [None] * len(SIZES)
    xs = [torch.rand(n, spec.channels, spec.size, spec.size) for n in SIZES]
    ys = [torch.randint(0, spec.num_classes, (n,)) for n in SIZES]
    return template, names, states, momenta, xs, ys


def sequential(name, spec, state, saved, x, y, lr, settings, cid, channels_last):
    """One client's training as ``clients.app.train`` runs it (momentum restored into ``LocalTraining.sgd``)."""
    model = make_model(name, spec)
    model.load_state_dict(state)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = settings.sgd(model.parameters())
    params = list(model.parameters())
    for i, buffer in (saved or {}).items():
        optimizer.state[params[int(i)]]["momentum_buffer"] = buffer.clone()
    for group in optimizer.param_groups:
        group["lr"] = lr
    loop = {"batch_size": settings.batch_size, "epochs": settings.epochs, "local_steps": settings.local_steps}
    generator = stream(Stream.CLIENT_BATCHES, SEED, cid, ROUND)
    stats = train_epochs(model, optimizer, x, y, spec=spec, generator=generator, channels_last=channels_last, **loop)
    momentum = {
        str(i): optimizer.state[p]["momentum_buffer"].detach()
        for i, p in enumerate(params)
        if "momentum_buffer" in optimizer.state.get(p, {})
    }
    return {n: p.detach() for n, p in model.named_parameters()}, momentum, stats


def max_differences(name, spec, settings, *, chunk_size=None, channels_last=False, fresh=False):
    """Largest differences of weights and momentum buffers, fused against sequential, over all clients."""
    template, names, states, momenta, xs, ys = client_setup(name, spec, fresh)
    generators = [stream(Stream.CLIENT_BATCHES, SEED, cid, ROUND) for cid in range(len(SIZES))]
    fused = train_group_epochs(template, states, momenta, xs, ys, LRS, momentum=settings.momentum,
                               weight_decay=settings.weight_decay, spec=spec, batch_size=settings.batch_size,
                               epochs=settings.epochs, generators=generators, local_steps=settings.local_steps,
                               chunk_size=chunk_size)  # fmt: skip
    weight_diff, momentum_diff = 0.0, 0.0
    for cid, result in enumerate(fused):
        params, momentum, stats = sequential(name, spec, states[cid], momenta[cid], xs[cid], ys[cid], LRS[cid],
                                             settings, cid, channels_last)  # fmt: skip
        assert result.stats["steps"] == stats["steps"]
        assert result.stats["train_loss"] == pytest.approx(stats["train_loss"], rel=1e-5)
        assert sorted(result.state) == sorted(names)
        assert sorted(result.momentum) == sorted(momentum)
        for n in names:
            weight_diff = max(weight_diff, float((result.state[n] - params[n]).abs().max()))
        for i, buffer in momentum.items():
            momentum_diff = max(momentum_diff, float((result.momentum[i] - buffer).abs().max()))
    return weight_diff, momentum_diff


SGD = LocalTraining(lr=0.05, momentum=0.9, weight_decay=1e-2, batch_size=16, epochs=1)
STEPS = LocalTraining(lr=0.05, momentum=0.9, weight_decay=1e-2, batch_size=16, local_steps=5)
PLAIN = LocalTraining(lr=0.05, momentum=0.0, weight_decay=0.0, batch_size=16, epochs=1)
TWO_EPOCHS = LocalTraining(lr=0.05, momentum=0.9, weight_decay=1e-2, batch_size=16, epochs=2)


@pytest.mark.parametrize(
    ("name", "dataset", "settings", "options"),
    [
        ("mlp", "mnist", TWO_EPOCHS, {}),
        ("mlp", "mnist", STEPS, {}),
        ("mlp", "mnist", PLAIN, {}),
        ("mlp", "mnist", SGD, {"fresh": True}),
        ("mlp", "mnist", SGD, {"chunk_size": 2}),
        ("lenet", "cifar10", SGD, {"channels_last": True}),
        ("lenet", "cifar10", STEPS, {}),
    ],
    ids=["mlp-epochs", "mlp-local-steps", "mlp-plain-sgd", "mlp-first-participation", "mlp-chunked",
         "lenet-augmented-channels-last", "lenet-augmented-local-steps"],
)  # fmt: skip
def test_fused_equals_sequential(name, dataset, settings, options):
    weight_diff, momentum_diff = max_differences(name, SPECS[dataset], settings, **options)
    print(f"{name} {options}: max |fused - sequential| weights {weight_diff:.2e}, momentum {momentum_diff:.2e}")
    assert weight_diff < 1e-5 and momentum_diff < 1e-5


def test_clients_out_of_batches_stop_and_keep_their_momentum():
    spec = SPECS["mnist"]
    template, _, states, momenta, xs, ys = client_setup("mlp", spec)
    generators = [torch.Generator().manual_seed(k) for k in range(len(SIZES))]
    batches = [epoch_batches(len(ys[0]), 16, 1, generators[0]), iter([])] + [
        epoch_batches(len(y), 16, 1, g) for y, g in zip(ys[2:], generators[2:], strict=True)
    ]
    fused = train_group_fused(template, states, momenta, xs, ys, batches, LRS, momentum=0.9, weight_decay=0.0,
                              spec=spec, generators=generators)  # fmt: skip
    idle = fused[1]
    assert idle.stats == {"train_loss": 0.0, "steps": 0.0}
    assert all(torch.equal(idle.state[n], states[1][n]) for n in idle.state)
    assert sorted(idle.momentum) == sorted(momenta[1]) and all(
        torch.equal(idle.momentum[i], momenta[1][i]) for i in idle.momentum
    )
    assert fused[0].stats["steps"] == 3.0 and sorted(fused[0].momentum) == [str(i) for i in range(6)]


def test_fusable_only_without_buffers_batch_statistics_or_randomness():
    assert fusable(make_model("mlp", SPECS["mnist"])) and fusable(make_model("lenet", SPECS["cifar10"]))
    assert not fusable(FashionMnistCnn()) and not fusable(Cifar10Cnn())
    assert not fusable(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)))
    assert not fusable(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    frozen = nn.Linear(4, 4)
    frozen.bias.requires_grad_(False)
    assert not fusable(frozen)
    spec = SPECS["fashion_mnist"]
    with pytest.raises(ValueError, match="cannot be fused"):
        train_group_fused(FashionMnistCnn(), [FashionMnistCnn().state_dict()], [None], [torch.rand(4, 1, 28, 28)],
                          [torch.zeros(4, dtype=torch.long)], [iter([])], [0.1], momentum=0.9, weight_decay=0.0,
                          spec=spec, generators=[torch.Generator()])  # fmt: skip


def test_fused_by_default_on_cuda_only():
    assert default_fused("cuda") and default_fused(torch.device("cuda", 0))
    assert not default_fused("cpu") and not default_fused(torch.device("cpu"))
