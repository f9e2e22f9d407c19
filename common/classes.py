"""The names of each dataset's classes, as people read them (plots, tables, console lines).

Kept apart from :mod:`common.data` and free of torch and torchvision, so a
process that only shows a run's progress (the ``poisonlab`` runner, the sweep
summaries) names the classes without importing either. The names are
torchvision's (``FashionMNIST.classes``; ``MNIST.classes`` shortened to their
digit) and CIFAR-10's ``batches.meta`` label names; ``tests/common/test_class_names.py``
checks them against those sources. ``metrics.jsonl`` keeps class ids.
"""

from __future__ import annotations

#: torchvision's ``datasets.FashionMNIST.classes``
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")  # fmt: skip
#: torchvision's ``datasets.MNIST.classes`` ("0 - zero", ...) shortened to their digit
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
#: CIFAR-10's label names as its ``batches.meta`` lists them (torchvision reads them from that file when
#: the data is loaded, so its ``CIFAR10`` class has no ``classes`` attribute to take them from).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": FASHION_MNIST_CLASSES,
    "mnist": MNIST_CLASSES,
    "cifar10": CIFAR10_CLASSES,
}


def class_names(name: str) -> tuple[str, ...]:
    """The names of dataset ``name``'s classes, indexed by label.

    Fashion-MNIST's are torchvision's ("T-shirt/top", ..., "Ankle boot"); MNIST's
    are its digits ("0" .. "9"); CIFAR-10's are the label names of its
    ``batches.meta`` ("airplane", ..., "truck").

    Raises
    ------
    ValueError
        For an unknown dataset (listing the known ones).
    """
    try:
        return CLASS_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {sorted(CLASS_NAMES)}") from None
