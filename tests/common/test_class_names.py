"""The class names people read in plots, tables and console lines."""

import pickle
import subprocess
import sys

import pytest
from torchvision import datasets

from common import classes
from common.data import CIFAR10_CLASSES, SPECS, candidate_roots, class_names, spec_of


def test_fashion_mnist_names_are_torchvisions():
    assert class_names("fashion_mnist") == tuple(datasets.FashionMNIST.classes)
    assert class_names("fashion_mnist")[6] == "Shirt" and class_names("fashion_mnist")[0] == "T-shirt/top"


def test_mnist_names_are_the_digits():
    assert datasets.MNIST.classes[6] == "6 - six"
    assert class_names("mnist") == tuple(str(d) for d in range(10))
    assert class_names("mnist") == tuple(c.split(" - ", 1)[0] for c in datasets.MNIST.classes)


def test_every_dataset_poisonlab_loads_has_its_names():
    assert set(classes.CLASS_NAMES) == set(SPECS)
    assert class_names is classes.class_names  # one function, importable from common.data as before


def test_naming_classes_imports_neither_torch_nor_torchvision():
    code = "import sys, common.classes, server.results; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_dataset_has_one_name_per_class():
    for name in ("fashion_mnist", "mnist", "cifar10"):
        names = class_names(name)
        assert len(names) == len(set(names)) == spec_of(name).num_classes
    assert class_names("cifar10")[3] == "cat"


def test_cifar10_names_match_its_batches_meta_when_on_disk():
    for root, _ in candidate_roots(None):
        meta = root / "cifar-10-batches-py" / "batches.meta"
        if meta.is_file():
            with meta.open("rb") as fh:
                assert tuple(pickle.load(fh, encoding="latin1")["label_names"]) == CIFAR10_CLASSES
            return
    pytest.skip("CIFAR-10 is not on disk")


def test_an_unknown_dataset_is_an_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="known datasets"):
        class_names("imagenet")
