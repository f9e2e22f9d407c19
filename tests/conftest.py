"""Shared fixtures: the offline data root and small real federations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.data import candidate_roots, prepare_dataset


@pytest.fixture(scope="session")
def fmnist_root() -> str:
    """A prepared Fashion-MNIST root (from ../shared/data through the user cache)."""
    return str(prepare_dataset("fashion_mnist"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only shared data folder, or skip when this checkout has none beside it."""
    for root, download in candidate_roots(None):
        if not download and (root / "FashionMNIST" / "raw").is_dir():
            return root
    pytest.skip("../shared/data is not beside this checkout")


@pytest.fixture
def one_torch_thread():
    """One torch thread, as every simulated client runs (several threads on 2 shared cores are ~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
