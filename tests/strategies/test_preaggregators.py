"""Bucketing, nearest-neighbour mixing and the Composed rule."""

from __future__ import annotations

import pytest
import torch

from strategies.rules.base import Aggregate, RoundContext
from strategies.rules.krum import Krum, MultiKrum
from strategies.rules.mean import Mean
from strategies.rules.median import Median
from strategies.rules.preaggregators import (
    Bucketing,
    Composed,
    NearestNeighborMixing,
    bucketing,
    nearest_neighbor_mixing,
)


def rows(n: int, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("n", "s"), [(10, 2), (10, 3), (7, 7), (5, 1), (4, 9)])
def test_bucketing_partitions_the_rows(n: int, s: int) -> None:
    x = rows(n)
    mixed, membership = bucketing(x, s=s, generator=torch.Generator().manual_seed(1))
    assert mixed.shape == (-(-n // s), 5)
    torch.testing.assert_close(membership.sum(dim=1), torch.ones(membership.shape[0], dtype=torch.float64))
    assert ((membership > 0).sum(dim=0) == 1).all()  # every row in exactly one bucket
    torch.testing.assert_close(mixed, membership @ x)
    sizes = (membership > 0).sum(dim=1).tolist()
    assert sizes == [s] * (n // s) + ([n % s] if n % s else [])


def test_bucketing_follows_the_generator() -> None:
    x = rows(6)
    _, m = bucketing(x, s=2, generator=torch.Generator().manual_seed(4))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(4))
    for b in range(3):  # bucket b holds shuffled positions 2b, 2b+1
        assert sorted(torch.nonzero(m[b]).flatten().tolist()) == sorted(perm[2 * b : 2 * b + 2].tolist())
    _, again = bucketing(x, s=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(m, again)


def test_nnm_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    mixed, membership = nearest_neighbor_mixing(x, f=1)  # each row -> mean of its 3 nearest, itself included
    # 0: {0, 1, 2}; 1: {1, 0, 2}; 2: {2, 1, 0}; 10: {10, 2, 1}
    assert mixed.flatten().tolist() == pytest.approx([1.0, 1.0, 1.0, 13 / 3])
    torch.testing.assert_close(membership.sum(dim=1), torch.ones(4, dtype=torch.float64))
    assert bool((torch.diagonal(membership) > 0).all())


def test_nnm_includes_itself_even_among_duplicates() -> None:
    x = torch.zeros(5, 3, dtype=torch.float64)
    _, membership = nearest_neighbor_mixing(x, f=2)
    assert bool((torch.diagonal(membership) == 1 / 3).all())
    torch.testing.assert_close(membership.sum(dim=1), torch.ones(5, dtype=torch.float64))


def test_composed_maps_krum_back_to_the_bucket_it_chose() -> None:
    x = rows(6)
    x[[0, 3]] += 50.0  # two far rows
    ctx = RoundContext(generator=torch.Generator().manual_seed(8))
    result = Composed(Krum(f=0), [Bucketing(s=2)])(x, ctx)
    _, membership = bucketing(x, s=2, generator=torch.Generator().manual_seed(8))
    chosen = [b for b in range(3) if float(membership[b] @ result.weights) > 0]
    members = torch.nonzero(membership[chosen[0]]).flatten().tolist()
    assert len(chosen) == 1
    assert result.selected.tolist() == sorted(members)
    assert result.weights[members].tolist() == [0.5, 0.5]
    assert result.flagged.tolist() == []  # Krum selects a bucket; it declares nobody malicious
    torch.testing.assert_close(result.vector, x[members].mean(dim=0))


def test_composed_nnm_then_mean_is_the_plain_mean_and_flags_nothing() -> None:
    # the mean of NNM's rows is a weighted mean of the inputs; the composed weights describe it exactly
    x = rows(7)
    result = Composed(Mean(), [NearestNeighborMixing(f=2)])(x, RoundContext())
    torch.testing.assert_close(result.vector, result.weights @ x)
    assert float(result.weights.sum()) == pytest.approx(1.0)
    assert result.flagged.tolist() == []
    assert result.info["mixed_rows"] == 7


class FlagRows:
    """A stand-in detector: flags the given output rows, averages the rest."""

    detects = True

    def __init__(self, rows: list[int], active: bool = True) -> None:
        self.rows = rows
        self.active = active

    def check_clients(self, n: int) -> None:
        pass

    def __call__(self, updates: torch.Tensor, context: RoundContext | None = None) -> Aggregate:
        n = updates.shape[0]
        keep = torch.ones(n, dtype=torch.bool)
        keep[self.rows] = False
        weights = keep.to(updates.dtype) / int(keep.sum())
        return Aggregate(
            vector=weights @ updates,
            weights=weights,
            selected=torch.nonzero(keep).flatten(),
            flagged=torch.tensor(self.rows, dtype=torch.long),
            active=self.active,
        )


def test_composed_flags_a_row_only_if_all_its_outputs_are_flagged() -> None:
    x = torch.tensor([[0.0], [0.1], [0.2], [0.3], [100.0]], dtype=torch.float64)
    # NNM(f=1) mixes each row's 4 nearest rows: outputs 0-3 mix inputs {0, 1, 2, 3}, output 4 mixes {1, 2, 3, 4}.
    # A detector flagging output 4 flags input 4 (only in output 4), not inputs 1-3 (also in outputs 0-3).
    result = Composed(FlagRows([4]), [NearestNeighborMixing(f=1)])(x, RoundContext())
    assert result.flagged.tolist() == [4]
    assert float(result.weights[4]) == 0.0 and result.selected.tolist() == [0, 1, 2, 3]
    everything = Composed(FlagRows([0, 1, 2, 3]), [NearestNeighborMixing(f=1)])(x, RoundContext())
    assert everything.flagged.tolist() == [0]  # rows 1-3 also feed output 4, which was kept
    # a selection rule flags nothing, whatever it leaves out
    krum = Composed(Krum(f=1), [NearestNeighborMixing(f=1)])(x, RoundContext())
    assert krum.flagged.tolist() == [] and float(krum.weights[4]) < float(krum.weights[:4].min())
    assert Composed(Median(), [NearestNeighborMixing(f=1)])(x, RoundContext()).flagged.tolist() == []


def test_composed_passes_detects_and_active_through() -> None:
    x = rows(6)
    assert Composed(FlagRows([0]), [NearestNeighborMixing(f=1)]).detects is True
    assert Composed(Krum(f=1), [NearestNeighborMixing(f=1)]).detects is False
    resting = Composed(FlagRows([], active=False), [NearestNeighborMixing(f=1)])(x, RoundContext())
    assert resting.active is False
    assert Composed(Krum(f=1), [NearestNeighborMixing(f=1)])(x, RoundContext()).active is True  # Gram-space path


def test_composed_hides_client_identity_from_the_rule() -> None:
    seen: list[RoundContext] = []

    class Spy:
        detects = False

        def check_clients(self, n: int) -> None:
            pass

        def __call__(self, updates: torch.Tensor, context: RoundContext | None = None) -> Aggregate:
            assert context is not None
            seen.append(context)
            return Mean()(updates, context)

    ctx = RoundContext(server_round=4, client_ids=[1, 2, 3], weights=torch.ones(3) / 3)
    Composed(Spy(), [NearestNeighborMixing(f=1)])(rows(3), ctx)
    assert seen[0].client_ids is None and seen[0].weights is None and seen[0].server_round == 4


def _explicitly_mixed(rule: Krum, pre: list, x: torch.Tensor, seed: int) -> Aggregate:
    """The Composed decision computed the slow way: form the mixed rows, run the rule on them."""
    ctx = RoundContext(generator=torch.Generator().manual_seed(seed))
    mixed, membership = x, torch.eye(x.shape[0], dtype=x.dtype)
    for p in pre:
        mixed, step = p(mixed, ctx)
        membership = step @ membership
    inner = rule(mixed, ctx)
    return Aggregate(
        vector=inner.vector, weights=membership.T @ inner.weights, selected=inner.selected, flagged=inner.flagged
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "make",
    [
        lambda: (Krum(f=2), [NearestNeighborMixing(f=2)]),
        lambda: (MultiKrum(f=1), [Bucketing(s=2)]),
        lambda: (Krum(f=1), [Bucketing(s=2), NearestNeighborMixing(f=1)]),
        lambda: (MultiKrum(f=2, m=3), [NearestNeighborMixing(f=2), NearestNeighborMixing(f=2)]),
    ],
    ids=["nnm+krum", "bucketing+multikrum", "bucketing+nnm+krum", "nnm+nnm+multikrum"],
)
def test_composed_krum_without_forming_mixed_rows_equals_mixing_explicitly(make, seed: int) -> None:
    n = 12
    x = rows(n, d=40, seed=seed)
    x[:2] += 8.0  # two far rows, so the choice is not arbitrary
    rule, pre = make()
    composed = Composed(rule, pre)
    assert composed._in_gram_space()
    got = composed(x, RoundContext(generator=torch.Generator().manual_seed(seed)))
    want = _explicitly_mixed(rule, pre, x, seed)
    torch.testing.assert_close(got.vector, want.vector, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.weights, want.weights, rtol=1e-10, atol=1e-12)


def test_composed_falls_back_to_mixing_when_gram_distances_are_inaccurate() -> None:
    # A row 1e9 away drags the centre: the Gram-space distances are not trusted, rows get mixed.
    x = rows(12, d=30, seed=4).to(torch.float32)
    x[11] = 1e9
    composed = Composed(Krum(f=2), [NearestNeighborMixing(f=2)])
    assert composed._decide_in_gram_space(x, RoundContext()) is None
    got = composed(x, RoundContext())
    want = _explicitly_mixed(Krum(f=2), [NearestNeighborMixing(f=2)], x, 0)
    assert torch.equal(got.vector, want.vector)
    assert got.weights[11] == 0
