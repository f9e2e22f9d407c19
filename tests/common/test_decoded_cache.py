"""Datasets decoded once per machine and memory-mapped by every later process (``common.data.load_dataset``)."""

from __future__ import annotations

import os

import numpy as np
import torch

from common.data import _decode, _decoded_key, decoded_cache_root, load_dataset


def test_the_first_load_writes_the_arrays_and_later_loads_map_the_same_values(tmp_path, monkeypatch, mnist_root):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    reference = _decode("mnist", mnist_root)
    first = load_dataset.__wrapped__("mnist", mnist_root)  # decodes and writes the cache
    folder = decoded_cache_root() / _decoded_key("mnist", mnist_root)
    assert sorted(p.name for p in folder.iterdir()) == ["test_x.npy", "test_y.npy", "train_x.npy", "train_y.npy"]
    second = load_dataset.__wrapped__("mnist", mnist_root)  # maps the cache
    for got in (first, second):
        for ours, ref in zip((got.train_x, got.train_y, got.test_x, got.test_y), reference, strict=True):
            assert ours.dtype == ref.dtype and ours.shape == ref.shape and torch.equal(ours, ref)
    assert isinstance(np.load(folder / "train_x.npy", mmap_mode="c"), np.memmap)
    second.train_y[0] = 99  # copy-on-write: a process's own change never reaches the file or other processes
    assert int(load_dataset.__wrapped__("mnist", mnist_root).train_y[0]) == int(reference[1][0])


def test_the_cache_key_changes_when_the_roots_files_change(tmp_path):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    archive = raw / "train-images-idx3-ubyte"
    archive.write_bytes(b"one")
    root = str(tmp_path / "root")
    before = _decoded_key("mnist", root)
    assert _decoded_key("mnist", root) == before
    archive.write_bytes(b"other")
    os.utime(archive, ns=(1, 1))
    assert _decoded_key("mnist", root) != before
    assert _decoded_key("fashion_mnist", root) != before
