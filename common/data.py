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
the read-only ``../shared/data``) are copied into the cache, checked against
torchvision's published MD5s and extracted there.

``POISONLAB_OFFLINE=1`` turns every download off (runs, ``poisonlab-data``):
missing data then fails at once with the files expected and every root looked
in, instead of waiting on the network. ``poisonlab-data`` fetches and verifies
the datasets ahead of time on a machine that has internet access.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# the class names live in common.classes (no torch, for processes that only show results); kept importable here
from common.classes import CIFAR10_CLASSES as CIFAR10_CLASSES
from common.classes import class_names as class_names

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataMissingError(FileNotFoundError):
    """The dataset is not on disk and cannot be downloaded."""


class DataCorruptError(DataMissingError):
    """A dataset file is on disk but its MD5 differs from torchvision's, and no fresh copy may be downloaded."""


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
    roots.append((user_cache_root(), not offline()))
    return roots


def offline() -> bool:
    """Whether ``POISONLAB_OFFLINE`` forbids every download (any value but empty, ``0``, ``false``, ``no``)."""
    return os.environ.get("POISONLAB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def expected_md5(name: str) -> dict[str, str]:
    """torchvision's published MD5 of each file of dataset ``name``, keyed by its path under a data root."""
    from torchvision import datasets

    if name == "cifar10":
        cls = datasets.CIFAR10
        batches = {f"{cls.base_folder}/{f}": md5 for f, md5 in cls.train_list + cls.test_list}
        return {cls.filename: cls.tgz_md5, **batches}
    spec = spec_of(name)
    return {f"{spec.folder}/raw/{f}": md5 for f, md5 in _torchvision_class(name).resources}


def corrupt_files(name: str, root: Path) -> dict[Path, str]:
    """The files of dataset ``name`` under ``root`` whose MD5 is not torchvision's (absent files are not listed).

    Returns
    -------
    dict
        Each bad file and a sentence with its MD5 and the expected one.
    """
    from torchvision.datasets.utils import calculate_md5

    bad: dict[Path, str] = {}
    for rel, md5 in expected_md5(name).items():
        path = root / rel
        if path.is_file() and (actual := calculate_md5(path)) != md5:
            bad[path] = f"md5 {actual}, expected {md5}"
    return bad


def _corrupt(name: str, bad: dict[Path, str]) -> DataCorruptError:
    listed = "\n  ".join(f"{path}: {why}" for path, why in bad.items())
    return DataCorruptError(
        f"dataset {name!r} is corrupt: these files do not match torchvision's checksums:\n  {listed}\n"
        "Replace them with intact copies (delete the ones in the user cache and run `poisonlab-data` "
        "with internet access to fetch them again)."
    )


def find_root(name: str, configured_root: str | None = None) -> Path | None:
    """The first candidate root holding dataset ``name`` (extracted or as archives), or None."""
    spec = spec_of(name)
    for root, _ in candidate_roots(configured_root):
        archive = root / "cifar-10-python.tar.gz" if name == "cifar10" else None
        if _has(root, spec, extracted=True) or _has(root, spec, extracted=False) or (archive and archive.is_file()):
            return root
    return None


def _has(root: Path, spec: DatasetSpec, extracted: bool) -> bool:
    base = root / spec.folder
    if spec.folder == "cifar-10-batches-py":
        return all((base / f).is_file() for f in spec.files)
    names = [f[: -len(".gz")] if extracted else f for f in spec.files]
    return all((base / f).is_file() for f in names)


def _torchvision_class(name: str):
    from torchvision import datasets

    return {"fashion_mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}[name]


def _atomic_copy(src: Path, dst: Path, opener=open) -> None:
    """Write ``dst`` from ``src`` (read through ``opener``) via a temporary file, so no reader sees half a file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex}.part")
    try:
        with opener(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _prepare_mnist_like(name: str, root: Path, spec: DatasetSpec, download: bool, configured: str | None) -> Path:
    """Return a root holding extracted files, extracting MD5-checked archives into the user cache if needed."""
    if _has(root, spec, extracted=True):
        return root
    cache = user_cache_root()
    if _has(cache, spec, extracted=True):
        return cache
    source = root if root != cache and _has(root, spec, extracted=False) else cache
    bad = corrupt_files(name, source)
    if source != cache:  # copy the intact archives; a download may replace the others
        for f in spec.files:
            if root / spec.folder / f not in bad:
                _atomic_copy(root / spec.folder / f, cache / spec.folder / f)
    if _has(cache, spec, extracted=False) and not bad:
        for f in spec.files:
            _atomic_copy(cache / spec.folder / f, cache / spec.folder / f.removesuffix(".gz"), opener=gzip.open)
        return cache
    if not download:
        raise _corrupt(name, bad) if bad else _missing(name, spec, configured)
    try:
        _download(name, cache)  # fetches the archives that are absent or fail their MD5
    except Exception as err:  # network failure, bad MD5, ...
        raise _missing(name, spec, configured, err) from err
    return cache


def _prepare_cifar10(root: Path, spec: DatasetSpec, download: bool, configured: str | None) -> Path:
    """Return a root holding the extracted CIFAR-10 batches, extracting into the user cache if needed."""
    if _has(root, spec, extracted=True):
        return root
    cache = user_cache_root()
    if _has(cache, spec, extracted=True):
        return cache
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity, extract_archive

    archive = root / CIFAR10.filename
    if archive.is_file() and check_integrity(str(archive), CIFAR10.tgz_md5):
        cache.mkdir(parents=True, exist_ok=True)
        extract_archive(str(archive), str(cache))
        return cache
    if not download and archive.is_file():
        raise _corrupt("cifar10", corrupt_files("cifar10", root))
    if not download:
        raise _missing("cifar10", spec, configured)
    try:
        _download("cifar10", cache)
    except Exception as err:
        raise _missing("cifar10", spec, configured, err) from err
    return cache


def _download(name: str, root: Path) -> None:
    """Fetch ``name`` into ``root`` with torchvision, which keeps the files whose MD5 is right and extracts."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else _torchvision_class(name)
    root.mkdir(parents=True, exist_ok=True)
    cls(root=str(root), train=True, download=True)


def fetch_dataset(name: str, root: Path) -> None:
    """Download dataset ``name`` into ``root`` (torchvision's layout), for machines that will run offline.

    Files already there with torchvision's MD5 are kept; the archives are
    extracted beside them, so ``root`` can serve as ``dataset.root`` or
    ``POISONLAB_DATA`` afterwards.

    Raises
    ------
    DataMissingError
        When ``POISONLAB_OFFLINE`` is set or the download fails (naming the expected files).
    """
    spec = spec_of(name)
    if offline():
        raise _missing(name, spec, str(root))
    try:
        _download(name, Path(root))
    except Exception as err:
        raise _missing(name, spec, str(root), err) from err


def _origin(root: Path, configured: str | None) -> str:
    """Where a candidate root comes from, for error messages."""
    if configured:
        return "dataset.root or --root"
    if root == user_cache_root():
        return "user cache" + ("; downloads disabled by POISONLAB_OFFLINE" if offline() else "")
    if os.environ.get("POISONLAB_DATA"):
        return "POISONLAB_DATA"
    return "shared data beside the checkout"


def _missing(name: str, spec: DatasetSpec, configured: str | None, err: Exception | None = None) -> DataMissingError:
    roots = [root for root, _ in candidate_roots(configured)]
    expected = [str(roots[0] / spec.folder / f) for f in spec.files]
    if name == "cifar10":
        expected.append(f"(or the archive {roots[0] / 'cifar-10-python.tar.gz'})")
    files, looked = "\n  ".join(expected), "\n  ".join(f"{root}  ({_origin(root, configured)})" for root in roots)
    cause = f"\n(download failed: {err})" if err else ""
    return DataMissingError(
        f"dataset {name!r} not found. Expected these files:\n  {files}\n"
        f"or the same files under one of the data roots looked in, in this order:\n  {looked}\n"
        "Put them there, point dataset.root=... or POISONLAB_DATA at a folder that has them (torchvision layout), "
        "or run `poisonlab-data` on a machine with internet access and copy its data folder here"
        + (" (POISONLAB_OFFLINE is set: no download is attempted)." if offline() else ".")
        + cause
    )


def prepare_dataset(name: str, configured_root: str | None = None, *, download: bool = True) -> Path:
    """Resolve the data root for ``name`` and make sure its files are usable.

    Parameters
    ----------
    name : str
        A dataset of :data:`SPECS`.
    configured_root : str, optional
        ``dataset.root``; when given, the only root looked in (besides the user cache for extraction).
    download : bool
        False never reaches the network, as ``POISONLAB_OFFLINE=1`` does.

    Returns
    -------
    Path
        The root :func:`load_dataset` should read.

    Raises
    ------
    DataMissingError
        Naming the expected files and every root looked in, when no candidate
        root has the data and a download is impossible (offline, or not allowed).
    DataCorruptError
        When the files found fail torchvision's MD5 and no fresh copy may be downloaded.
    """
    spec = spec_of(name)
    allowed = download and not offline()
    root = find_root(name, configured_root)
    if root is not None:
        return _prepare(name, root, spec, allowed, configured_root)
    cache, can_download = candidate_roots(configured_root)[-1]
    if not (can_download and allowed):
        raise _missing(name, spec, configured_root)
    return _prepare(name, cache, spec, True, configured_root)


def _prepare(name: str, root: Path, spec: DatasetSpec, download: bool, configured: str | None) -> Path:
    if name == "cifar10":
        return _prepare_cifar10(root, spec, download, configured)
    return _prepare_mnist_like(name, root, spec, download, configured)


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


def decoded_cache_root() -> Path:
    """Where decoded datasets are kept as ``.npy`` files (beside the user data cache)."""
    return user_cache_root().parent / "decoded"


def _decoded_key(name: str, root: str) -> str:
    """A folder name for ``name`` decoded from ``root``: changes when the root or any of its files changes."""
    folder = Path(root) / spec_of(name).folder
    stamp = [str(folder.resolve())]
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            info = path.stat()
            stamp.append(f"{path.name}:{info.st_size}:{info.st_mtime_ns}")
    return f"{name}-{hashlib.sha1('|'.join(stamp).encode()).hexdigest()[:16]}"


_PARTS = ("train_x", "train_y", "test_x", "test_y")


def _decode(name: str, root: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    spec = spec_of(name)
    if name == "cifar10":
        train_x, train_y, test_x, test_y = _read_cifar10(Path(root) / spec.folder)
    else:
        cls = _torchvision_class(name)
        train = cls(root=root, train=True, download=False)
        test = cls(root=root, train=False, download=False)
        train_x, train_y = train.data.unsqueeze(1), train.targets.long()
        test_x, test_y = test.data.unsqueeze(1), test.targets.long()
    return train_x.contiguous(), train_y.contiguous(), test_x.contiguous(), test_y.contiguous()


@lru_cache(maxsize=4)
def load_dataset(name: str, root: str) -> DatasetTensors:
    """Dataset ``name`` from a prepared ``root``, decoded once per machine and memory-mapped (cached per process).

    The first process to load a dataset decodes it and keeps the arrays as
    ``.npy`` files in :func:`decoded_cache_root` (written atomically, keyed by
    the root's path and its files' sizes and times); every later process
    (the ServerApp, each client actor or ClientApp process) maps them
    copy-on-write instead of decoding the archives again, and processes on
    one machine share the pages. Where the cache cannot be written, the
    dataset is decoded in memory as before.
    """
    spec = spec_of(name)
    folder = decoded_cache_root() / _decoded_key(name, root)
    if not all((folder / f"{part}.npy").is_file() for part in _PARTS):
        tensors = _decode(name, root)
        try:
            partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
            partial.mkdir(parents=True, exist_ok=True)
            for part, tensor in zip(_PARTS, tensors, strict=True):
                np.save(partial / f"{part}.npy", tensor.numpy())
            try:
                partial.rename(folder)
            except OSError:  # another process got there first: its files are the same
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            return DatasetTensors(*tensors, spec)
    arrays = [torch.from_numpy(np.load(folder / f"{part}.npy", mmap_mode="c")) for part in _PARTS]
    return DatasetTensors(*arrays, spec)


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
