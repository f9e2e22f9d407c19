"""``finite_or_raise``: an update with any NaN or Inf is rejected, every finite one passes (its sum may overflow)."""

import pytest
import torch

from common.params import UpdateRejected, finite_or_raise


@pytest.mark.parametrize(
    ("bad", "count"),
    [
        ({3: float("nan")}, 1),
        ({0: float("inf")}, 1),
        ({7: float("-inf")}, 1),
        ({1: float("inf"), 2: float("-inf")}, 2),  # opposite infinities: their sum is NaN, not a finite number
        ({5: float("nan"), 9: float("inf")}, 2),
    ],
)
def test_any_nan_or_inf_is_rejected_with_its_count(bad, count):
    vector = torch.randn(1000)
    for i, value in bad.items():
        vector[i] = value
    with pytest.raises(UpdateRejected, match=f"^{count} non-finite values"):
        finite_or_raise(vector)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_finite_values_pass_even_when_their_sum_overflows(dtype):
    huge = torch.full((64,), torch.finfo(dtype).max, dtype=dtype)
    assert not torch.isfinite(huge.sum())
    finite_or_raise(huge)
    finite_or_raise(torch.cat([huge, -huge]))
    finite_or_raise(torch.randn(10_000).to(dtype))


def test_an_empty_vector_is_finite():
    finite_or_raise(torch.zeros(0))
