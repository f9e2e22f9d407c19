import numpy as np
import pytest

from common.partition import Dirichlet, IidEqual, Shards, class_counts


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(123)
    return np.repeat(np.arange(10), 600)[rng.permutation(6000)]


@pytest.mark.parametrize(
    "partitioner", [IidEqual(), IidEqual(samples_per_client=100), Dirichlet(alpha=0.3), Shards(shards_per_client=2)]
)
def test_partitions_are_disjoint_reproducible_and_seeded(labels, partitioner):
    parts = partitioner(labels, 20, seed=7)
    assert len(parts) == 20
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "a sample was given to two clients"
    assert joined.min() >= 0 and joined.max() < len(labels)
    again = partitioner(labels, 20, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partitioner(labels, 20, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_equal_is_complete_and_equal(labels):
    parts = IidEqual()(labels, 50, seed=0)
    assert {len(p) for p in parts} == {120}
    assert sorted(np.concatenate(parts).tolist()) == list(range(6000))


def test_dirichlet_is_complete(labels):
    parts = Dirichlet(alpha=0.5)(labels, 10, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(6000))


def test_dirichlet_skew_responds_to_alpha(labels):
    def mean_max_share(alpha: float) -> float:
        counts = class_counts(labels, Dirichlet(alpha=alpha, min_size=1)(labels, 20, seed=0), 10)
        return float((counts.max(axis=1) / counts.sum(axis=1)).mean())

    skewed, balanced = mean_max_share(0.05), mean_max_share(100.0)
    assert skewed > 0.6, skewed
    assert balanced < 0.2, balanced


def test_shards_give_few_classes(labels):
    counts = class_counts(labels, Shards(shards_per_client=2)(labels, 30, seed=1), 10)
    assert ((counts > 0).sum(axis=1) <= 3).all()  # 2 shards, a shard may straddle a class border
    assert counts.sum() == 30 * 2 * (6000 // 60)


def test_bad_partition_arguments():
    with pytest.raises(ValueError, match="alpha must be > 0, got -1"):
        Dirichlet(alpha=-1)
    with pytest.raises(ValueError, match="exceeds the 6000"):
        IidEqual(samples_per_client=1000)(np.zeros(6000, dtype=int), 7, seed=0)
    with pytest.raises(ValueError, match="cannot split 5 samples among 6 clients"):
        IidEqual()(np.zeros(5, dtype=int), 6, seed=0)
