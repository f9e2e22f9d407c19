"""Evaluation with BatchNorm folded into the layer before it (common.training.inference_copy)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from common.data import SPECS
from common.models import FashionMnistCnn, Mlp, resnet18
from common.training import confusion_matrix, inference_copy

SPEC = SPECS["fashion_mnist"]


def trained_statistics(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """``model`` with BatchNorm running statistics and affine parameters far from their initial values."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
        for _ in range(3):
            model(torch.rand(shape, generator=gen) * 3)
    return model


@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_cnn_computes_the_eval_mode_function_without_batchnorm(channels_last):
    torch.manual_seed(0)
    model = trained_statistics(FashionMnistCnn(), (16, 1, 28, 28))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = inference_copy(model)
    assert folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand((64, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    assert not model.training  # the model itself is only put in eval mode...
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # ...and left as it was
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_folded_resnet_matches_and_scores_the_same_confusion_matrix():
    torch.manual_seed(0)
    model = trained_statistics(resnet18(num_classes=10, in_channels=1), (8, 1, 28, 28))
    folded = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    gen = torch.Generator().manual_seed(2)
    x, y = (
        (torch.rand((48, 1, 28, 28), generator=gen) * 255).to(torch.uint8),
        torch.randint(0, 10, (48,), generator=gen),
    )
    cm, loss = confusion_matrix(model, x, y, spec=SPEC, batch_size=16)
    cm_folded, loss_folded = confusion_matrix(folded, x, y, spec=SPEC, batch_size=16)
    assert torch.equal(cm, cm_folded)
    assert loss_folded == pytest.approx(loss, rel=1e-5)


def test_a_negative_running_variance_folds_into_a_model_that_is_never_scored():
    model = FashionMnistCnn()
    with torch.no_grad():
        model.layer1[1].running_var[3] = -0.5  # what averaging a scaled update can produce
    folded = inference_copy(model)
    x = torch.full((10, 1, 28, 28), 128, dtype=torch.uint8)
    cm, loss = confusion_matrix(folded, x, torch.zeros(10, dtype=torch.long), spec=SPEC)
    assert math.isnan(loss) and int(cm.sum()) == 0


def test_models_without_batchnorm_or_not_traceable_are_evaluated_as_they_are():
    mlp = Mlp()
    assert inference_copy(mlp) is mlp and not mlp.training

    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a traced value: torch.fx cannot trace it
                x = x * 2
            return self.bn(self.conv(x)).flatten(1)

    model = DataDependent()
    assert inference_copy(model) is model and not model.training
