"""Models: paper A's CNNs, a sigmoid LeNet for leakage work, an MLP, ResNet-18.

Every model's output layer is the last ``nn.Linear`` and is named ``fc`` (or
``fc2`` for the CIFAR-10 CNN), so defenses that inspect it (Tolpegin et al.'s
PCA defense) find it by name.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FashionMnistCnn(nn.Module):
    """Tolpegin et al. (ESORICS 2020) Fashion-MNIST CNN, 29,034 parameters.

    Conv(1->16, 5x5, pad 2) BN ReLU MaxPool2; Conv(16->32, 5x5, pad 2) BN ReLU
    MaxPool2; Linear(1568 -> 10). Returns logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.layer2 = nn.Sequential(nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(7 * 7 * 32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.layer2(self.layer1(x)), 1))


class Cifar10Cnn(nn.Module):
    """Tolpegin et al. (ESORICS 2020) CIFAR-10 CNN, 551,466 parameters.

    [Conv3x3 ReLU BN] x2 at 32, 64 and 128 channels, each pair followed by
    MaxPool2; Linear(2048 -> 128) ReLU; Linear(128 -> 10).

    Parameters
    ----------
    double_softmax : bool
        Reproduce the original code's quirk of returning softmax probabilities
        that are then fed to CrossEntropyLoss (a double softmax under which a
        suppressed class hardly recovers). Off by default: logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, double_softmax: bool = False) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout)]

        self.features = nn.Sequential(
            *block(in_channels, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128), *block(128, 128), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc1 = nn.Linear(128 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)
        self.double_softmax = double_softmax

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))
        return torch.softmax(out, dim=1) if self.double_softmax else out


class SigmoidLeNet(nn.Module):
    """LeNet with sigmoid activations, as used for gradient leakage (Zhu et al., DLG 2019).

    Three 5x5 convolutions (stride 2, 2, 1; 12 channels) with sigmoids and one
    linear layer. Smooth and twice differentiable, which gradient inversion
    needs. ``uniform_init`` draws every weight from U(-0.5, 0.5) as in DLG.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, uniform_init: bool = True
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
        )  # fmt: skip
        side = (image_size + 3) // 4
        self.fc = nn.Linear(12 * side * side, num_classes)
        if uniform_init:
            for p in self.parameters():
                nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.body(x), 1))


class Mlp(nn.Module):
    """A small multi-layer perceptron (McMahan et al. 2017's "2NN" with 200 units by default)."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: tuple[int, ...] = (200, 200)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


def resnet18(num_classes: int = 10, in_channels: int = 3, cifar_stem: bool = True) -> nn.Module:
    """torchvision's ResNet-18 (He et al. 2016), 11.2 M parameters.

    ``cifar_stem`` swaps the ImageNet stem (7x7 stride-2 conv + max-pool) for a
    3x3 stride-1 conv, the usual variant for 32x32 inputs. The output layer is
    ``fc``.
    """
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(num_classes=num_classes)
    if cifar_stem or in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 3 if cifar_stem else 7, 1 if cifar_stem else 2,
                                1 if cifar_stem else 3, bias=False)  # fmt: skip
        if cifar_stem:
            model.maxpool = nn.Identity()
    return model


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def output_layer_name(model: nn.Module) -> str:
    """State-dict name of the weight of the model's last linear layer."""
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = f"{module_name}.weight"
    if name is None:
        raise ValueError(f"{type(model).__name__} has no linear output layer")
    return name
