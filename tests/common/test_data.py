"""Data-root resolution, offline preparation and the per-process tensor cache."""

import pickle
import shutil

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, MNIST

from common.data import (
    DataCorruptError,
    DataMissingError,
    augment_batch,
    candidate_roots,
    corrupt_files,
    find_root,
    load_dataset,
    prepare_dataset,
    user_cache_root,
)


def test_root_order_config_then_env_then_shared_then_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("POISONLAB_OFFLINE", raising=False)
    monkeypatch.setenv("POISONLAB_DATA", str(tmp_path / "env"))
    assert candidate_roots(str(tmp_path / "cfg")) == [((tmp_path / "cfg").resolve(), False)]
    assert candidate_roots(None) == [((tmp_path / "env").resolve(), False)]
    monkeypatch.delenv("POISONLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    roots = candidate_roots(None)
    assert roots[-1] == (tmp_path / "cache" / "poisonlab" / "data", True)
    assert all(not download for _, download in roots[:-1])


def test_archives_in_a_foreign_root_are_extracted_into_the_cache_only(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    foreign = tmp_path / "foreign"
    shutil.copytree(shared_data / "MNIST", foreign / "MNIST")
    before = sorted(p.name for p in (foreign / "MNIST" / "raw").iterdir())
    root = prepare_dataset("mnist", str(foreign))
    assert root == user_cache_root()
    assert sorted(p.name for p in (foreign / "MNIST" / "raw").iterdir()) == before, "wrote into the data root"
    data = load_dataset("mnist", str(root))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(
        torch.bincount(data.test_y), torch.tensor([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    )


def test_real_fashion_mnist_has_its_known_class_balance(fmnist_root):
    data = load_dataset("fashion_mnist", fmnist_root)
    assert load_dataset("fashion_mnist", fmnist_root) is data, "decoded twice in one process"
    assert torch.equal(torch.bincount(data.train_y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(data.test_y), torch.full((10,), 1000))


def test_offline_without_data_fails_with_the_expected_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataMissingError, match="train-images-idx3-ubyte.gz"):
        prepare_dataset("fashion_mnist", str(tmp_path / "nothing"))


def test_poisonlab_offline_turns_the_only_download_off(tmp_path, monkeypatch):
    monkeypatch.delenv("POISONLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for value, allowed in (("1", False), ("true", False), ("yes", False), ("0", True), ("false", True), ("", True)):
        monkeypatch.setenv("POISONLAB_OFFLINE", value)
        assert candidate_roots(None)[-1] == (tmp_path / "cache" / "poisonlab" / "data", allowed), value


def test_missing_data_names_the_files_and_every_root_and_downloads_only_when_allowed(mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("POISONLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("POISONLAB_OFFLINE", "1")
    if find_root("cifar10") is not None:
        pytest.skip("CIFAR-10 is on this machine, so it cannot be missing")
    roots = [root for root, _ in candidate_roots(None)]
    with pytest.raises(DataMissingError) as err:
        prepare_dataset("cifar10")
    text = str(err.value)
    assert str(roots[0] / "cifar-10-batches-py" / "test_batch") in text
    assert all(f"{root}  (" in text for root in roots), "a root looked in is not named"
    assert "downloads disabled by POISONLAB_OFFLINE" in text and "download failed" not in text
    assert mirror.requests == []
    monkeypatch.delenv("POISONLAB_OFFLINE")
    with pytest.raises(DataMissingError):
        prepare_dataset("cifar10", download=False)
    assert mirror.requests == []
    with pytest.raises(DataMissingError, match="download failed: HTTP Error 404"):
        prepare_dataset("cifar10")
    assert mirror.requests and set(mirror.requests) == {f"/{CIFAR10.filename}"}


def test_a_corrupt_archive_is_named_offline_and_fetched_again_when_downloads_are_allowed(
    shared_data, mirror, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("POISONLAB_OFFLINE", "1")
    for f in (shared_data / "MNIST" / "raw").glob("*.gz"):
        shutil.copyfile(f, mirror.folder / f.name)
    foreign = tmp_path / "foreign" / "MNIST" / "raw"
    foreign.mkdir(parents=True)
    for f in (shared_data / "MNIST" / "raw").glob("*.gz"):
        shutil.copyfile(f, foreign / f.name)
    labels = foreign / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(labels.read_bytes())
    blob[100] ^= 0xFF
    labels.write_bytes(bytes(blob))
    assert list(corrupt_files("mnist", tmp_path / "foreign")) == [labels]

    with pytest.raises(DataCorruptError) as err:
        prepare_dataset("mnist", str(tmp_path / "foreign"))
    text = str(err.value)
    assert f"{labels}: md5 " in text and f"expected {dict(MNIST.resources)[labels.name]}" in text
    assert not list(user_cache_root().rglob("*-ubyte")), "extracted a corrupt dataset"
    assert mirror.requests == []

    monkeypatch.delenv("POISONLAB_OFFLINE")
    root = prepare_dataset("mnist", str(tmp_path / "foreign"))
    assert root == user_cache_root() and set(mirror.requests) == {f"/{labels.name}"}, "fetched more than the bad file"
    assert corrupt_files("mnist", root) == {}
    assert torch.equal(torch.bincount(load_dataset("mnist", str(root)).test_y)[:2], torch.tensor([980, 1135]))


def write_fake_cifar10(folder, n_per_batch: int = 20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        batch = {
            "data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            "labels": [(k + i) % 10 for i in range(n_per_batch)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    return names


def test_cifar10_batches_decode_in_python_pickle_format(tmp_path):
    write_fake_cifar10(tmp_path / "cifar-10-batches-py")
    root = prepare_dataset("cifar10", str(tmp_path))
    data = load_dataset("cifar10", str(root))
    assert data.train_x.shape == (100, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        first = pickle.load(fh)
    assert torch.equal(data.train_x[0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)))
    assert data.train_y[:3].tolist() == [0, 1, 2]
    assert data.spec.augment


def test_augmentation_draws_per_sample_and_keeps_pixels():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).repeat(50, 1, 1, 1)
    out = augment_batch(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape
    # every output pixel is a zero pad or a pixel of its own input image
    for i in range(0, 100, 17):
        vals = set(out[i].flatten().tolist()) - {0.0}
        assert vals <= set(x[i].flatten().tolist())
    assert len({tuple(out[i].flatten()[:5].tolist()) for i in range(0, 100, 2)}) > 5  # independent draws
