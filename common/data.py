"""Datasets as in-memory tensors: root resolution, offline preparation, caching.

Fashion-MNIST and MNIST are read through torchvision (MD5-checked raw files);
CIFAR-10 is fetched with torchvision's download utilities and its python-pickle
batches are decoded here. Each dataset is decoded once per process
(:func:`load_dataset` is cached) and kept as ``uint8`` tensors, so a client
indexes its partition directly instead of re-reading images every round.

The data root is resolved in this order:

1. ``dataset.root`` from the run config;
2. the ``POISONLAB_DATA`` environment variable;
3. ``../shared/data`` beside the project checkout (or the working directory),
   when present;
4. the user cache (``$XDG_CACHE_HOME/poisonlab/data``, default
   ``~/.cache/poisonlab/data``), the only place where a download is attempted.

Only the user cache is ever written to: archives found in another root (such as
the read-only ``../shared/data``) are copied into the cache and extracted there.
"""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataMissingError(FileNotFoundError):
    """The dataset is not on disk and cannot be downloaded."""


@dataclass(frozen=True)
class DatasetSpec:
    """What poisonlab knows about one dataset.

    Attributes
    ----------
    folder : str
        Sub-folder of the data root, in torchvision's layout.
    files : tuple of str
        Files that must exist under ``root/folder`` (archives or extracted).
    num_classes, channels, size : int
        Label count and image geometry.
    mean, std : tuple of float
        Per-channel normalisation applied on the fly (identity for
        Fashion-MNIST, as in Tolpegin et al.'s code: ToTensor only).
    augment : bool
        Random horizontal flip and random crop with padding 4 (CIFAR-10).
    """

    folder: str
    files: tuple[str, ...]
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False


_MNIST_FILES = (
    "raw/train-images-idx3-ubyte.gz",
    "raw/train-labels-idx1-ubyte.gz",
    "raw/t10k-images-idx3-ubyte.gz",
    "raw/t10k-labels-idx1-ubyte.gz",
)
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

SPECS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec("FashionMNIST", _MNIST_FILES, 10, 1, 28, (0.0,), (1.0,)),
    "mnist": DatasetSpec("MNIST", _MNIST_FILES, 10, 1, 28, (0.1307,), (0.3081,)),
    "cifar10": DatasetSpec(
        "cifar-10-batches-py",
        CIFAR10_BATCHES,
        10,
        3,
        32,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        augment=True,
    ),
}


@dataclass(frozen=True)
class DatasetTensors:
    """A whole dataset decoded into memory.

    Attributes
    ----------
    train_x, test_x : Tensor
        ``uint8`` images, ``(N, C, H, W)``.
    train_y, test_y : Tensor
        ``int64`` labels, ``(N,)``.
    spec : DatasetSpec
        Geometry and normalisation.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    spec: DatasetSpec


def spec_of(name: str) -> DatasetSpec:
    """Return the spec of dataset ``name`` or fail listing the known ones."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(SPECS)}") from None


def user_cache_root() -> Path:
    """The per-user cache folder where downloads and extractions go."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "poisonlab" / "data"


def candidate_roots(configured: str | None) -> list[tuple[Path, bool]]:
    """Data roots to try, in order, each with whether a download is allowed there."""
    if configured:
        return [(Path(configured).expanduser().resolve(), False)]
    env = os.environ.get("POISONLAB_DATA")
    if env:
        return [(Path(env).expanduser().resolve(), False)]
    roots: list[tuple[Path, bool]] = []
    for shared in (PROJECT_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if shared.is_dir() and (shared.resolve(), False) not in roots:
            roots.append((shared.resolve(), False))
    roots.append((user_cache_root(), True))
    return roots


def _has(root: Path, spec: DatasetSpec, extracted: bool) -> bool:
    base = root / spec.folder
    if spec.folder == "cifar-10-batches-py":
        return all((base / f).is_file() for f in spec.files)
    names = [f[: -len(".gz")] if extracted else f for f in spec.files]
    return all((base / f).is_file() for f in names)


def _torchvision_class(name: str):
    from torchvision import datasets

    return {"fashion_mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}[name]


def _prepare_mnist_like(name: str, root: Path, spec: DatasetSpec, download: bool) -> Path:
    """Return a root holding extracted, MD5-checked files, extracting into the user cache if needed."""
    if _has(root, spec, extracted=True):
        return root
    cache = user_cache_root()
    if _has(cache, spec, extracted=True):
        return cache
    if _has(root, spec, extracted=False) and root != cache:
        raw = cache / spec.folder / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for f in spec.files:
            if not (raw / Path(f).name).exists():
                shutil.copyfile(root / spec.folder / f, raw / Path(f).name)
    elif not _has(root, spec, extracted=False) and not download:
        raise _missing(name, spec, root)
    try:
        # Finds the archives already in the cache, checks their MD5 and extracts them
        # there; it only reaches the network when they are absent (download allowed).
        _torchvision_class(name)(root=str(cache), train=True, download=True)
    except Exception as err:  # network failure, bad MD5, ...
        raise _missing(name, spec, root, err) from err
    return cache


def _prepare_cifar10(root: Path, spec: DatasetSpec, download: bool) -> Path:
    """Return a root holding the extracted CIFAR-10 batches, extracting into the user cache if needed."""
    if _has(root, spec, extracted=True):
        return root
    cache = user_cache_root()
    if _has(cache, spec, extracted=True):
        return cache
    archive = root / "cifar-10-python.tar.gz"
    if not archive.is_file() and not download:
        raise _missing("cifar10", spec, root)
    try:
        from torchvision.datasets.utils import download_and_extract_archive, extract_archive

        cache.mkdir(parents=True, exist_ok=True)
        if archive.is_file():
            extract_archive(str(archive), str(cache))
        else:
            download_and_extract_archive(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                download_root=str(cache),
                md5="c58f30108f718f92721af3b95e74349a",
            )
    except Exception as err:
        raise _missing("cifar10", spec, root, err) from err
    return cache


def _missing(name: str, spec: DatasetSpec, root: Path, err: Exception | None = None) -> DataMissingError:
    expected = "\n  ".join(str(root / spec.folder / f) for f in spec.files)
    cause = f"\n(download failed: {err})" if err else ""
    return DataMissingError(
        f"dataset {name!r} not found. Expected these files:\n  {expected}\n"
        "Put them there, point dataset.root=... or POISONLAB_DATA at a folder that has them "
        f"(torchvision layout), or run once with internet access.{cause}"
    )


def prepare_dataset(name: str, configured_root: str | None = None) -> Path:
    """Resolve the data root for ``name`` and make sure its files are usable.

    Returns the root :func:`load_dataset` should read. Raises
    :class:`DataMissingError` naming the expected files when no candidate
    root has the data and a download is impossible (e.g. offline).
    """
    spec = spec_of(name)
    roots = candidate_roots(configured_root)
    for root, _ in roots:
        archive = root / "cifar-10-python.tar.gz" if name == "cifar10" else None
        if _has(root, spec, extracted=True) or _has(root, spec, extracted=False) or (archive and archive.is_file()):
            return _prepare(name, root, spec, download=False)
    root, download = roots[-1]
    if not download:
        raise _missing(name, spec, root)
    return _prepare(name, root, spec, download=True)


def _prepare(name: str, root: Path, spec: DatasetSpec, download: bool) -> Path:
    if name == "cifar10":
        return _prepare_cifar10(root, spec, download)
    return _prepare_mnist_like(name, root, spec, download)


def _read_cifar10(folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    def read(files: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for f in files:
            with open(folder / f, "rb") as fh:
                batch = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train_x, train_y = read(CIFAR10_BATCHES[:5])
    test_x, test_y = read(CIFAR10_BATCHES[5:])
    return train_x, train_y, test_x, test_y


@lru_cache(maxsize=4)
def load_dataset(name: str, root: str) -> DatasetTensors:
    """Decode dataset ``name`` from a prepared ``root`` (cached per process)."""
    spec = spec_of(name)
    if name == "cifar10":
        train_x, train_y, test_x, test_y = _read_cifar10(Path(root) / spec.folder)
    else:
        cls = _torchvision_class(name)
        train = cls(root=root, train=True, download=False)
        test = cls(root=root, train=False, download=False)
        train_x, train_y = train.data.unsqueeze(1), train.targets.long()
        test_x, test_y = test.data.unsqueeze(1), test.targets.long()
    return DatasetTensors(train_x.contiguous(), train_y.contiguous(), test_x.contiguous(), test_y.contiguous(), spec)


def to_float(x: Tensor) -> Tensor:
    """``uint8`` images to ``float32`` in [0, 1] (torchvision's ToTensor)."""
    return x.to(torch.float32).div_(255.0)


def normalize(x: Tensor, spec: DatasetSpec) -> Tensor:
    """Per-channel normalisation of a float batch in [0, 1]."""
    if all(m == 0.0 for m in spec.mean) and all(s == 1.0 for s in spec.std):
        return x
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def augment_batch(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random horizontal flip and random crop with zero padding, per sample.

    The standard CIFAR-10 augmentation (as in Tolpegin et al.'s code), applied
    to a whole batch at once with an independent draw for every sample.
    """
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator, device="cpu") < 0.5
    if bool(flip.any()):
        x = x.clone()
        x[flip.to(x.device)] = x[flip.to(x.device)].flip(-1)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols]
