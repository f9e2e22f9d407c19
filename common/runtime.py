"""What every process of a run shares: the run-config key, the device, the memory format."""

from __future__ import annotations

import torch
from torch import nn

#: the Flower run-config key (and train-message config key) that carries the resolved run config as JSON
CONFIG_KEY = "poisonlab-config"


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when this process can see a GPU, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={requested} but no CUDA device is visible to this process; use device=auto")
    return device


def uses_channels_last(model: nn.Module, enabled: bool) -> bool:
    """Channels-last (``client.channels_last``) only pays off for convolutional models."""
    return enabled and any(isinstance(m, nn.Conv2d) for m in model.modules())
