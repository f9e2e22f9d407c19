"""Fixtures of the tests that run the ServerApp round loop in this process (``fake_grid.FakeGrid``)."""

from __future__ import annotations

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread, as every simulated client runs (several threads on 2 shared cores are ~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """The identity Flower gives a running ServerApp (messages built outside one need it); restored after."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
