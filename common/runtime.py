"""What both apps build from a validated run config, cached per process.

The ServerApp and every ClientApp receive the same resolved config (a plain
dict, carried as JSON) and derive the same things from it: the dataset tensors,
the partition, the model architecture, the device and per-client random
generators. Anything expensive is computed once per process.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from common.data import DatasetTensors, load_dataset, spec_of

CONFIG_KEY = "poisonlab-config"


@lru_cache(maxsize=8)
def parse_config(text: str) -> dict[str, Any]:
    """Decode the JSON run config (cached: every message carries the same string)."""
    return json.loads(text)


def dataset_of(cfg: dict[str, Any]) -> DatasetTensors:
    """The run's dataset, decoded once per process."""
    return load_dataset(cfg["dataset"]["name"], cfg["dataset"]["root"])


def build_model(cfg: dict[str, Any], seed: int | None = None) -> nn.Module:
    """The configured model: initialised from ``seed`` when given, else a copy of a cached template.

    Clients overwrite every weight with the global model at once, so they take a
    deep copy of one template per process instead of paying for Hydra's
    instantiation on every message.
    """
    if seed is None:
        return copy.deepcopy(_template(json.dumps(cfg["model"], sort_keys=True), cfg["dataset"]["name"]))
    torch.manual_seed(seed)
    return _instantiate_model(cfg["model"], cfg["dataset"]["name"])


def _instantiate_model(section: dict[str, Any], dataset: str) -> nn.Module:
    from common.config import instantiate_component

    spec = spec_of(dataset)
    return instantiate_component(
        section, "model", num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.size
    )


@lru_cache(maxsize=4)
def _template(model_json: str, dataset: str) -> nn.Module:
    return _instantiate_model(json.loads(model_json), dataset)


@lru_cache(maxsize=8)
def _partitions(dataset: str, root: str, partition_json: str, num_clients: int, seed: int) -> list[np.ndarray]:
    from common.config import instantiate_component

    partitioner = instantiate_component(json.loads(partition_json), "partition")
    labels = load_dataset(dataset, root).train_y.numpy()
    return partitioner(labels, num_clients, seed)


def partitions(cfg: dict[str, Any]) -> list[np.ndarray]:
    """Index arrays of every client's training samples (cached per process)."""
    return _partitions(
        cfg["dataset"]["name"],
        cfg["dataset"]["root"],
        json.dumps(cfg["partition"], sort_keys=True),
        int(cfg["federation"]["num_clients"]),
        int(cfg["seed"]),
    )


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when this process can see a GPU, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={requested} but no CUDA device is visible to this process; use device=auto")
    return device


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from the run seed and identifiers (client, round, purpose)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derived_seed`."""
    return torch.Generator().manual_seed(derived_seed(*parts))


def uses_channels_last(model: nn.Module, cfg: dict[str, Any]) -> bool:
    """Channels-last only pays off for convolutional models."""
    return bool(cfg["client"].get("channels_last", False)) and any(isinstance(m, nn.Conv2d) for m in model.modules())
