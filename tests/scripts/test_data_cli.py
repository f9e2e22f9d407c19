"""``poisonlab-data``: fetch and verify the datasets; OK, MISSING or CORRUPT per dataset and the exit status."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import MNIST

from common.data import SPECS, candidate_roots, find_root
from scripts.data import main

MNIST_FILES = [Path(f).name for f in SPECS["mnist"].files]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "POISONLAB_DATA"} | env
    return subprocess.run(
        [sys.executable, "-m", "scripts.data", *args], capture_output=True, text=True, timeout=120, env=full
    )


def copy_mnist(shared_data: Path, to: Path) -> Path:
    """A writable copy of the MNIST archives under ``to/MNIST/raw``."""
    (to / "MNIST" / "raw").mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(shared_data / "MNIST" / "raw" / name, to / "MNIST" / "raw" / name)
    return to


def test_the_read_only_shared_archives_verify_ok_in_a_subprocess(shared_data, tmp_path):
    cache = tmp_path / "cache"
    out = run_cli(
        "mnist", "--root", str(shared_data), "--verify", env={"XDG_CACHE_HOME": str(cache), "POISONLAB_OFFLINE": "1"}
    )
    assert out.returncode == 0, out.stdout + out.stderr
    line = out.stdout.strip()
    assert line.split()[:3] == ["mnist", "OK", str(cache / "poisonlab" / "data" / "MNIST")]
    assert "60000 train / 10000 test samples, MD5 of 4 files ok" in line
    assert f"archives from {shared_data / 'MNIST'}" in line
    assert (cache / "poisonlab" / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_the_poisonlab_data_root_is_used_when_no_root_is_given(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POISONLAB_DATA", str(shared_data))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    main(["mnist", "--verify"])
    assert capsys.readouterr().out.split()[:3] == [
        "mnist",
        "OK",
        str(tmp_path / "cache" / "poisonlab" / "data" / "MNIST"),
    ]


def test_a_corrupted_copy_is_corrupt_with_exit_1_and_nothing_is_downloaded(
    shared_data, mirror, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("POISONLAB_OFFLINE", raising=False)
    root = copy_mnist(shared_data, tmp_path / "copy")
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    with open(labels, "r+b") as fh:
        fh.truncate(1000)
    expected_md5 = dict(MNIST.resources)[labels.name]
    for args, offline in ((["--verify"], "0"), ([], "1")):
        monkeypatch.setenv("POISONLAB_OFFLINE", offline)
        with pytest.raises(SystemExit) as exit_:
            main(["mnist", "--root", str(root), *args])
        assert exit_.value.code == 1
        out, err = capsys.readouterr()
        assert out.splitlines()[0].split() == ["mnist", "CORRUPT", str(root / "MNIST")]
        assert f"{labels}: md5 " in out and f"expected {expected_md5}" in out
        assert "1 of 1 dataset(s) not usable: mnist" in err
    assert mirror.requests == [], "a download was attempted"
    assert not (tmp_path / "cache" / "poisonlab" / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()


def test_an_empty_root_offline_is_missing_naming_the_files_and_every_root_looked_in(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "POISONLAB_OFFLINE": "1"}
    out = run_cli("mnist", "fashion_mnist", "--root", str(empty), env=env)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["mnist", "MISSING", str(empty / "MNIST")]
    for folder in ("MNIST", "FashionMNIST"):
        for name in MNIST_FILES:
            assert f"      {empty / folder / 'raw' / name}\n" in out.stdout
    assert f"      {empty}  (dataset.root or --root)" in out.stdout
    assert "POISONLAB_OFFLINE is set: no download is attempted" in out.stdout
    assert "2 of 2 dataset(s) not usable: mnist, fashion_mnist" in out.stderr

    # without --root: every root a run would look in, in order
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("POISONLAB_DATA", raising=False)
    if find_root("cifar10") is not None:
        pytest.skip("CIFAR-10 is on this machine, so it cannot be missing")
    looked = [root for root, _ in candidate_roots(None)]
    with pytest.raises(SystemExit) as exit_:
        main(["cifar10"])
    out = capsys.readouterr().out
    assert exit_.value.code == 1 and out.splitlines()[0].split()[:2] == ["cifar10", "MISSING"]
    places = [line.strip() for line in out.split("in this order:\n")[1].splitlines()[: len(looked)]]
    assert [place.split("  (")[0] for place in places] == [str(root) for root in looked]
    assert places[-1].endswith("(user cache; downloads disabled by POISONLAB_OFFLINE)")


def test_a_missing_dataset_is_fetched_into_the_given_root_only_when_downloads_are_allowed(
    shared_data, mirror, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("POISONLAB_OFFLINE", "1")
    for name in MNIST_FILES:
        shutil.copyfile(shared_data / "MNIST" / "raw" / name, mirror.folder / name)
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit):
        main(["mnist", "--root", str(fresh)])
    assert "mnist          MISSING" in capsys.readouterr().out and mirror.requests == []

    monkeypatch.delenv("POISONLAB_OFFLINE")
    main(["mnist", "--root", str(fresh)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.split()[:3] == ["mnist", "OK", str(fresh / "MNIST")] and "archives from" not in line
    assert {p.lstrip("/") for p in mirror.requests} == set(MNIST_FILES)
    assert all((fresh / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES)


def test_cifar10_batches_are_checked_against_torchvisions_checksums(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in SPECS["cifar10"].files:
        batch = {"data": np.zeros((10, 3072), dtype=np.uint8), "labels": list(range(10))}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with pytest.raises(SystemExit) as exit_:
        main(["cifar10", "--root", str(tmp_path), "--verify"])
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["cifar10", "CORRUPT", str(folder)]
    assert all(f"{folder / name}: md5 " in out for name in SPECS["cifar10"].files)


def test_an_unknown_dataset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["imagenet"])
    assert exit_.value.code == 2
    assert "unknown dataset(s) 'imagenet'; choose from fashion_mnist, mnist, cifar10 or all" in capsys.readouterr().err
