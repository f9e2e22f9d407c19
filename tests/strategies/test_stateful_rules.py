"""Rules with memory across rounds: centered clipping's centre, FoolsGold's per-client history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies.rules.base import RoundContext
from strategies.rules.centered_clipping import CenteredClipping, centered_clipping
from strategies.rules.foolsgold import FoolsGold, foolsgold, foolsgold_weights


def test_centered_clipping_starts_at_zero_then_follows_the_last_aggregate() -> None:
    rule = CenteredClipping(tau=1.0)
    first = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    a = rule(first)
    assert a.vector.tolist() == pytest.approx([0.45, 0.6])  # as around zero
    second = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    b = rule(second)
    expected = centered_clipping(second, tau=1.0, center=torch.tensor([0.45, 0.6]))
    torch.testing.assert_close(b.vector, expected.vector)
    rule.reset()
    torch.testing.assert_close(rule(second).vector, centered_clipping(second, tau=1.0).vector)


def test_centered_clipping_refuses_a_model_of_another_size() -> None:
    rule = CenteredClipping(tau=1.0)
    rule(torch.ones(3, 4))
    with pytest.raises(ValueError, match="d=5 but the stored centre has d=4"):
        rule(torch.ones(3, 5))


def reference_foolsgold(grads: np.ndarray) -> np.ndarray:
    """The published FoolsGold weighting (DistributedML/FoolsGold), loops and all, in numpy."""
    n = grads.shape[0]
    unit = grads / np.maximum(np.linalg.norm(grads, axis=1, keepdims=True), 1e-300)
    cs = unit @ unit.T - np.eye(n)
    maxcs = np.max(cs, axis=1)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if maxcs[i] < maxcs[j]:
                cs[i][j] = cs[i][j] * maxcs[i] / maxcs[j]
    wv = 1 - np.max(cs, axis=1)
    wv[wv > 1] = 1
    wv[wv < 0] = 0
    wv = wv / np.max(wv)
    wv[wv == 1] = 0.99
    with np.errstate(divide="ignore"):
        wv = np.log(wv / (1 - wv)) + 0.5
    wv[(np.isinf(wv) + wv > 1)] = 1
    wv[wv < 0] = 0
    return wv


def test_foolsgold_two_sybils_get_nothing() -> None:
    # sybils (1, 0) twice: cosine 1 with each other -> weight 0; the honest (0, 1) is pardoned -> 1
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = foolsgold(x)
    assert out.weights.tolist() == [0.0, 0.0, 1.0]
    assert out.vector.tolist() == [0.0, 1.0]
    assert out.flagged.tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_foolsgold_weights_equal_the_reference_code(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((9, 12))
    h[:3] = h[0] + 0.05 * rng.standard_normal((3, 12))  # three near-identical sybils
    ours = foolsgold_weights(torch.from_numpy(h)).numpy()
    np.testing.assert_allclose(ours, reference_foolsgold(h), rtol=1e-9, atol=1e-12)


def test_foolsgold_keys_history_by_client_id() -> None:
    g = torch.Generator().manual_seed(0)
    r1 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    r2 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    rule = FoolsGold()
    rule(r1, RoundContext(server_round=1, client_ids=[7, 8, 9, 10]))
    got = rule(r2, RoundContext(server_round=2, client_ids=[10, 7, 11]))
    history = torch.stack([r1[3] + r2[0], r1[0] + r2[1], r2[2]])  # client 11 is new
    expected = foolsgold(r2, history=history)
    torch.testing.assert_close(got.vector, expected.vector)
    torch.testing.assert_close(got.weights, expected.weights)


def test_foolsgold_without_ids_uses_each_round_alone() -> None:
    g = torch.Generator().manual_seed(1)
    rule = FoolsGold()
    rule(torch.randn(4, 6, generator=g, dtype=torch.float64), RoundContext(server_round=1))
    r2 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rule(r2, RoundContext(server_round=2)).vector, foolsgold(r2).vector)


def test_foolsgold_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="duplicate client ids"):
        FoolsGold()(torch.ones(2, 3), RoundContext(client_ids=[4, 4]))
