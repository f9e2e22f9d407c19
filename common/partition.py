"""Seeded, disjoint partitioners of a training set into client shards.

Each partitioner is a small configured callable ``(labels, num_clients, seed)
-> list of index arrays``; the same arguments always give the same partition,
on the server (which derives example weights from it) and on every client
(which trains on its own part).
"""

from __future__ import annotations

import numpy as np


def _check(num_clients: int, n: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"cannot split {n} samples among {num_clients} clients")


class IidEqual:
    """IID equal split (Tolpegin et al., ESORICS 2020: 1,200 Fashion-MNIST samples each).

    Shuffle the training set with the seed and give every client the same number
    of samples: ``samples_per_client`` if set, else ``len(labels) // num_clients``.
    Samples beyond ``num_clients * samples_per_client`` are left unused.
    """

    def __init__(self, *, samples_per_client: int | None = None) -> None:
        if samples_per_client is not None and samples_per_client < 1:
            raise ValueError(f"partition.samples_per_client must be >= 1, got {samples_per_client}")
        self.samples_per_client = samples_per_client

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        n = len(labels)
        _check(num_clients, n)
        per = self.samples_per_client or n // num_clients
        if per * num_clients > n:
            raise ValueError(
                f"partition.samples_per_client={per} x {num_clients} clients = {per * num_clients} "
                f"exceeds the {n} training samples"
            )
        order = np.random.default_rng(seed).permutation(n)
        return [np.sort(order[i * per : (i + 1) * per]) for i in range(num_clients)]


class Dirichlet:
    """Label skew by a Dirichlet prior (Hsu et al. 2019).

    For every class, its samples are split among the clients in proportions drawn
    from ``Dir(alpha * 1)``; small ``alpha`` gives clients few dominant classes,
    large ``alpha`` approaches IID. The draw is repeated (same seed stream) until
    every client holds at least ``min_size`` samples.
    """

    def __init__(self, *, alpha: float, min_size: int = 10, max_tries: int = 100) -> None:
        if not alpha > 0:
            raise ValueError(f"partition.alpha must be > 0, got {alpha}")
        if min_size < 0:
            raise ValueError(f"partition.min_size must be >= 0, got {min_size}")
        self.alpha, self.min_size, self.max_tries = float(alpha), int(min_size), int(max_tries)

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        labels = np.asarray(labels)
        _check(num_clients, len(labels))
        rng = np.random.default_rng(seed)
        classes = np.unique(labels)
        for _ in range(self.max_tries):
            parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for c in classes:
                idx = rng.permutation(np.flatnonzero(labels == c))
                shares = rng.dirichlet(np.full(num_clients, self.alpha))
                cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
                for client, chunk in enumerate(np.split(idx, cuts)):
                    parts[client].append(chunk)
            out = [np.sort(np.concatenate(p)) for p in parts]
            if min(len(p) for p in out) >= self.min_size:
                return out
        raise ValueError(
            f"Dirichlet(alpha={self.alpha}) could not give each of {num_clients} clients "
            f"min_size={self.min_size} samples in {self.max_tries} tries; raise alpha or lower min_size"
        )


class Shards:
    """Pathological non-IID shards (McMahan et al. 2017).

    Sort the samples by label, cut them into ``num_clients * shards_per_client``
    equal shards and deal ``shards_per_client`` random shards to each client, so a
    client sees about that many classes. Leftover samples are unused.
    """

    def __init__(self, *, shards_per_client: int = 2) -> None:
        if shards_per_client < 1:
            raise ValueError(f"partition.shards_per_client must be >= 1, got {shards_per_client}")
        self.shards_per_client = int(shards_per_client)

    def __call__(self, labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
        labels = np.asarray(labels)
        num_shards = num_clients * self.shards_per_client
        _check(num_shards, len(labels))
        rng = np.random.default_rng(seed)
        # Stable sort by label, ties broken by a seeded shuffle.
        shuffled = rng.permutation(len(labels))
        by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
        size = len(labels) // num_shards
        shards = by_label[: size * num_shards].reshape(num_shards, size)
        deal = rng.permutation(num_shards).reshape(num_clients, self.shards_per_client)
        return [np.sort(shards[row].ravel()) for row in deal]


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """``(num_clients, num_classes)`` matrix of per-client label counts."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
