"""Shared fixtures: the real datasets (or a skip that says why they are absent) and one torch thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from common.data import SPECS, DataMissingError, candidate_roots, prepare_dataset, user_cache_root


@cache
def _prepared(name: str) -> tuple[str | None, str]:
    """One attempt per dataset and test session: its prepared root, or why it is unavailable."""
    try:
        return str(prepare_dataset(name)), ""
    except DataMissingError as err:
        return None, str(err)


def data_root(name: str) -> str:
    """The prepared root of dataset ``name``; skips the calling test, naming the files and the roots looked in.

    The data comes from wherever a run finds it (``POISONLAB_DATA``,
    ``../shared/data`` beside the checkout, the user cache), downloaded when
    that is allowed; ``POISONLAB_OFFLINE=1`` turns the download off. Call it
    from a fixture, before any ``monkeypatch`` of the environment.
    """
    root, reason = _prepared(name)
    if root is None:
        pytest.skip(f"needs the {name} dataset: {reason}")
    return root


@pytest.fixture(scope="session")
def fmnist_root() -> str:
    """A prepared Fashion-MNIST root; every test that builds a default run (or a ``make_run`` one) needs it."""
    return data_root("fashion_mnist")


@pytest.fixture(scope="session")
def mnist_root() -> str:
    """A prepared MNIST root (the leakage tests)."""
    return data_root("mnist")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """A read-only data root holding the MNIST archives (``../shared/data``), or skip when there is none."""
    for root, _ in candidate_roots(None):
        if root != user_cache_root() and all((root / "MNIST" / f).is_file() for f in SPECS["mnist"].files):
            return root
    pytest.skip("no read-only data root with the MNIST archives (../shared/data beside the checkout, POISONLAB_DATA)")


@dataclass
class Mirror:
    """A loopback stand-in for torchvision's MNIST and CIFAR-10 download sites.

    Attributes
    ----------
    folder : Path
        What it serves (empty at first: every request is a 404).
    requests : list of str
        Every path requested, so a test sees whether (and what) a download was attempted.
    """

    folder: Path
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def mirror(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    """torchvision's MNIST mirrors and CIFAR-10 URL pointed at a loopback server: no traffic leaves the machine."""
    from torchvision import datasets

    served = Mirror(tmp_path_factory.mktemp("mirror"))

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(served.folder), **kwargs)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            served.requests.append(self.path)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/"
    monkeypatch.setattr(datasets.MNIST, "mirrors", [url])
    monkeypatch.setattr(datasets.CIFAR10, "url", url + datasets.CIFAR10.filename)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    yield served
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def one_torch_thread():
    """One torch thread, as every simulated client runs (several threads on 2 shared cores are ~10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
