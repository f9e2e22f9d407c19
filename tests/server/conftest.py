"""Fixtures of the tests that run the ServerApp round loop in this process (``fake_grid.FakeGrid``)."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def one_thread_per_client(one_torch_thread):
    """The in-process ClientApps train with one torch thread, as every simulated client does."""


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """The identity Flower gives a running ServerApp (messages built outside one need it); restored after."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
