"""signSGD with majority vote (Bernstein et al., ICLR 2019) against hand-computed votes."""

from __future__ import annotations

import pytest
import torch

from strategies.rules.base import RuleConfigError
from strategies.rules.signsgd import DEFAULT_LR, SignSGDMajority, signsgd_majority


def test_majority_vote_by_hand_with_ties_and_abstentions() -> None:
    x = torch.tensor(
        [
            [1.0, -2.0, 3.0, 0.0],
            [2.0, -1.0, -4.0, 0.0],
            [-1.0, 5.0, -6.0, 0.0],
            [4.0, -3.0, 0.5, 0.0],
        ],
        dtype=torch.float64,
    )
    # votes per column: + + - + = 2 -> +1;  - - + - = -2 -> -1;  + - - + = 0 (tie) -> 0;  all abstain -> 0
    out = signsgd_majority(x, lr=0.5)
    assert out.vector.tolist() == [0.5, -0.5, 0.0, 0.0]
    assert out.info == {"lr": 0.5, "tied": 2.0}
    assert out.weights.tolist() == [0.25] * 4  # one equal vote each
    assert out.selected.tolist() == [0, 1, 2, 3] and out.flagged.tolist() == []
    assert x[:, 2].mean().item() == pytest.approx(-1.625)  # the mean follows the large values; the vote does not


def test_the_majority_beats_a_flipped_and_scaled_minority_but_not_half_or_more() -> None:
    s = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    honest = torch.stack([0.01 * s, 0.02 * s, 0.005 * s])  # agree on every sign
    for bad, expected in ((2, s), (3, torch.zeros(6, dtype=torch.float64)), (4, -s)):
        x = torch.cat([honest, (-100.0 * s).expand(bad, -1)])  # sign flipping, scaled 100x
        out = signsgd_majority(x, lr=0.001)
        # 3 honest votes against 2, 3, 4 flipped ones: follow, tie (0), flipped
        torch.testing.assert_close(out.vector, 0.001 * expected, rtol=0, atol=0)
    # what it cannot do: where the honest clients are split (margin 1), two adversaries decide
    split = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)  # honest vote +1
    assert signsgd_majority(split, lr=1.0).vector.tolist() == [1.0]
    attacked = torch.cat([split, -torch.ones(2, 1, dtype=torch.float64)])
    assert signsgd_majority(attacked, lr=1.0).vector.tolist() == [-1.0]


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_device_are_kept(dtype: torch.dtype, device: str) -> None:
    x = torch.tensor([[1.0, -1.0, 2.0], [3.0, -2.0, -2.0], [-0.5, -0.25, 1.0]], dtype=dtype, device=device)
    out = SignSGDMajority(lr=0.25)(x)
    assert out.vector.dtype == dtype and out.vector.device == x.device
    assert out.weights.dtype == dtype and out.weights.device == x.device
    assert out.selected.device == x.device and out.flagged.dtype == torch.long
    assert out.vector.cpu().tolist() == [0.25, -0.25, 0.25]


def test_vote_counts_stay_exact_in_bfloat16_with_many_clients() -> None:
    # 301 against 299: a margin of 2 among 600 votes, beyond bfloat16's exact integers (256)
    x = torch.cat([torch.full((301, 1), 1e-3), torch.full((299, 1), -1.0)]).to(torch.bfloat16)
    assert signsgd_majority(x, lr=1.0).vector.tolist() == [1.0]


def test_invariant_to_the_order_of_clients() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 50, generator=g, dtype=torch.float64)
    x[:, :10] = torch.sign(x[:, :10])  # some exact ties in the mix
    perm = torch.randperm(9, generator=g)
    a, b = signsgd_majority(x, lr=0.01), signsgd_majority(x[perm], lr=0.01)
    assert torch.equal(a.vector, b.vector)
    assert torch.equal(a.weights, b.weights[perm]) and a.info == b.info


def test_configuration() -> None:
    assert SignSGDMajority.detects is False
    assert SignSGDMajority().lr == DEFAULT_LR == 0.001
    SignSGDMajority().check_clients(1)  # one voter is still a vote, never a mean
    with pytest.raises(RuleConfigError, match="needs at least 1 reply, got n=0"):
        SignSGDMajority().check_clients(0)
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(RuleConfigError, match="lr must be"):
            SignSGDMajority(lr=bad)
