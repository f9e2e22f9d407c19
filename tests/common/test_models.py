import pytest
import torch

from common.models import Cifar10Cnn, FashionMnistCnn, Mlp, SigmoidLeNet, num_parameters, output_layer_name, resnet18


def test_paper_a_parameter_counts():
    assert num_parameters(FashionMnistCnn()) == 29_034
    assert num_parameters(Cifar10Cnn()) == 551_466


def test_resnet18_for_cifar():
    model = resnet18(num_classes=10)
    assert num_parameters(model) == 11_173_962
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("model", "shape", "layer"),
    [
        (FashionMnistCnn(), (3, 1, 28, 28), "fc.weight"),
        (Cifar10Cnn(), (3, 3, 32, 32), "fc2.weight"),
        (SigmoidLeNet(), (3, 1, 28, 28), "fc.weight"),
        (SigmoidLeNet(in_channels=3, image_size=32), (3, 3, 32, 32), "fc.weight"),
        (Mlp(), (3, 1, 28, 28), "fc.weight"),
    ],
)
def test_forward_shapes_and_output_layer(model, shape, layer):
    assert model(torch.rand(shape)).shape == (3, 10)
    assert output_layer_name(model) == layer


def test_double_softmax_only_when_asked():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    logits_model = Cifar10Cnn().eval()
    quirky = Cifar10Cnn(double_softmax=True).eval()
    quirky.load_state_dict(logits_model.state_dict())
    logits = logits_model(x)
    assert not torch.allclose(logits.sum(1), torch.ones(4))
    assert torch.allclose(quirky(x), torch.softmax(logits, 1))


def test_lenet_uniform_init():
    weights = torch.cat([p.flatten() for p in SigmoidLeNet().parameters()])
    assert weights.min() >= -0.5 and weights.max() <= 0.5 and weights.std() > 0.25
