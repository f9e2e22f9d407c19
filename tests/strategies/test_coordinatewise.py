"""The coordinate-wise kernels (median, trimmed mean, Bulyan's second stage) against a plain
per-column reference, on data full of ties, on both backends (numpy on CPU, torch elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.rules import _coordinatewise as cw


def reference(column: np.ndarray, kind: str, param: int) -> tuple[float, np.ndarray]:
    """(aggregate, per-row slots) of one column, straight from the definitions.

    Kept slots go to values; rows holding an equal value share that value's slots equally.
    """
    m = len(column)
    order = np.sort(column)
    slots = np.zeros(m)
    if kind == "bulyan":
        beta = param
        med = float(np.median(column))
        dist = np.abs(column - med)
        reach = np.sort(dist)[beta - 1]
        near, at = dist < reach, dist == reach
        free = beta - near.sum()
        slots[near] = 1.0
        slots[at] = free / at.sum()
        value = (column[near].sum() + free * column[at].mean()) / beta
        return value, slots / beta
    if kind == "median":
        positions = [m // 2] if m % 2 else [m // 2 - 1, m // 2]
        value = float(np.median(column))
    else:  # trimmed mean, param = cut
        positions = list(range(param, m - param))
        value = float(order[param : m - param].mean())
    for position in positions:
        holders = column == order[position]
        slots[holders] += 1.0 / holders.sum()
    return value, slots / len(positions)


def run(kind: str, x: torch.Tensor, param: int, rows: torch.Tensor | None = None):
    if kind == "median":
        return cw.coordinate_median(x)
    if kind == "trimmed":
        return cw.coordinate_trimmed_mean(x, param)
    return cw.mean_closest_to_median(x, rows if rows is not None else torch.arange(x.shape[0]), param)


def tied(n: int, d: int, seed: int) -> torch.Tensor:
    """Small integers (ties everywhere), a constant column and a two-valued column."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, d), generator=g).to(torch.float64)
    x[:, 0] = 2.0
    x[:, 1] = (torch.arange(n) % 2).to(torch.float64)
    return x


# trimmed cut 3 keeps 1 (n = 7) or 2 (n = 8) values
CASES = [("median", 0), ("trimmed", 1), ("trimmed", 2), ("trimmed", 3), ("bulyan", 3), ("bulyan", 1)]


@pytest.fixture(params=["numpy", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(cw, "_BLOCK_ELEMENTS", 64)  # many blocks, so the block loop is exercised
    if request.param == "torch":  # the path GPUs take, run here on the CPU
        monkeypatch.setattr(cw, "_numpy_backend", lambda device: False)
    return request.param


@pytest.mark.parametrize("n", [7, 8])
@pytest.mark.parametrize(("kind", "param"), CASES)
def test_kernels_match_the_definition_under_ties(backend: str, kind: str, param: int, n: int) -> None:
    for seed in range(3):
        x = tied(n, 40, seed) if seed < 2 else torch.randn(n, 40, generator=torch.Generator().manual_seed(seed))
        x = x.to(torch.float64)
        vector, shares = run(kind, x, param)
        want = [reference(col, kind, param) for col in x.numpy().T]
        np.testing.assert_allclose(vector.numpy(), [v for v, _ in want], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(shares.numpy(), np.mean([s for _, s in want], axis=0), rtol=1e-12, atol=1e-12)
        assert float(shares.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize(("kind", "param"), CASES)
def test_kernels_do_not_depend_on_row_order_even_with_ties(backend: str, kind: str, param: int) -> None:
    x = tied(9, 30, seed=5)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    vector, shares = run(kind, x, param)
    pvector, pshares = run(kind, x[perm], param)
    assert torch.equal(vector, pvector)
    torch.testing.assert_close(pshares, shares[perm], rtol=0, atol=1e-15)


@pytest.mark.parametrize("d", [1, 3, 500])
@pytest.mark.parametrize(("kind", "param"), CASES)
def test_kernels_leave_the_input_untouched(kind: str, param: int, d: int) -> None:
    # The CPU kernel partitions blocks in place: it must work on copies, even when a block's
    # transpose is already contiguous (d = 1).
    x = torch.randn(8, d, generator=torch.Generator().manual_seed(d), dtype=torch.float32)
    before = x.clone()
    run(kind, x, param)
    run(kind, x, param, rows=torch.tensor([6, 0, 3, 5, 1, 7, 2]))
    assert torch.equal(x, before)


def test_bulyan_stage_uses_only_the_given_rows_in_their_order() -> None:
    x = torch.randn(9, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = torch.tensor([8, 2, 5, 0, 7])
    vector, shares = cw.mean_closest_to_median(x, rows, 3)
    want_vector, want_shares = cw.mean_closest_to_median(x[rows].clone(), torch.arange(5), 3)
    assert torch.equal(vector, want_vector) and torch.equal(shares, want_shares)


def test_an_excluded_infinite_value_does_not_poison_the_bulyan_sum() -> None:
    # numpy path multiplies values by the kept mask; an excluded Inf must not turn the sum into NaN
    x = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [4.0, 3.0], [float("inf"), 4.0]], dtype=torch.float64)
    vector, _ = cw.mean_closest_to_median(x, torch.arange(5), 3)
    assert vector.tolist() == [3.0, 2.0]
