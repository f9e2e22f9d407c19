"""Tolpegin et al.'s PCA defense: looks at one output row, flags a separated minority."""

from __future__ import annotations

import torch

from strategies.rules.base import Layout, RoundContext
from strategies.rules.pca_detect import PCADetect, pca_detect, two_means

CLASSES, FEATURES = 4, 6
LAYOUT = Layout(
    names=("conv.weight", "fc.weight", "fc.bias"),
    shapes=(torch.Size([5]), torch.Size([CLASSES, FEATURES]), torch.Size([CLASSES])),
    offsets=(0, 5, 5 + CLASSES * FEATURES),
)
D = 5 + CLASSES * FEATURES + CLASSES
SOURCE = 2


def federation(n: int, flippers: list[int], seed: int = 0, shift: float = 3.0) -> torch.Tensor:
    """Noise updates; the flippers' source-class output row is pushed one way."""
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    row = slice(5 + SOURCE * FEATURES, 5 + (SOURCE + 1) * FEATURES)
    x[flippers, row] += shift
    return x


def test_flags_the_label_flippers_and_averages_the_rest() -> None:
    flippers = [1, 4, 9]
    x = federation(12, flippers)
    out = pca_detect(x, layout=LAYOUT, source=SOURCE)
    assert out.flagged.tolist() == flippers
    keep = [i for i in range(12) if i not in flippers]
    torch.testing.assert_close(out.vector, x[keep].mean(dim=0))
    assert out.info["separation"] >= 4.0


def test_only_the_source_row_matters() -> None:
    x = federation(12, [])
    x[[1, 4, 9], 5 + (SOURCE + 1) * FEATURES : 5 + (SOURCE + 2) * FEATURES] += 30.0  # another class's row
    x[[1, 4, 9], :5] += 30.0  # and another layer
    assert pca_detect(x, layout=LAYOUT, source=SOURCE).flagged.tolist() == []


def test_honest_rounds_flag_nothing() -> None:
    for seed in range(10):
        out = pca_detect(federation(20, [], seed=seed), layout=LAYOUT, source=SOURCE)
        assert out.flagged.tolist() == [], out.info


def test_before_start_round_everything_is_averaged() -> None:
    x = federation(12, [1, 4, 9])
    rule = PCADetect(source=SOURCE, start_round=10)
    early = rule(x, RoundContext(server_round=9))  # no layout needed yet
    assert early.flagged.tolist() == []
    torch.testing.assert_close(early.vector, x.mean(dim=0))
    late = rule(x, RoundContext(server_round=10, layout=LAYOUT))
    assert late.flagged.tolist() == [1, 4, 9]


def test_equal_halves_and_tiny_rounds_flag_nothing() -> None:
    assert pca_detect(federation(8, [0, 1, 2, 3]), layout=LAYOUT, source=SOURCE).flagged.tolist() == []
    assert pca_detect(federation(2, [0]), layout=LAYOUT, source=SOURCE).flagged.tolist() == []


def test_two_means_by_hand() -> None:
    p = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [10.0, 10.0], [11.0, 10.0]], dtype=torch.float64)
    labels, centres = two_means(p)
    assert labels[:3].unique().numel() == 1 and labels[3:].unique().numel() == 1 and labels[0] != labels[3]
    groups = sorted([centres[0].tolist(), centres[1].tolist()])
    assert groups[0] == [1 / 3, 1 / 3] and groups[1] == [10.5, 10.0]


def test_stacking_rounds_finds_flippers_that_one_round_alone_cannot():
    """Five clients a round, one of them shifted: alone a round is too small to split; stacked it is."""
    torch.manual_seed(0)
    features = 64
    layout = Layout(("fc.weight",), (torch.Size([3, features]),), (0,))

    def round_updates(shifted: bool) -> torch.Tensor:
        rows = torch.randn(5, features)
        if shifted:
            rows[2] += 1.5
        updates = torch.zeros(5, 3 * features)
        updates[:, features : 2 * features] = rows  # source class 1
        return updates

    for history_rounds, expect_flags in ((0, False), (20, True)):
        rule = PCADetect(source=1, start_round=1, history_rounds=history_rounds, min_rows=10)
        flagged = []
        for r in range(1, 13):
            out = rule(round_updates(shifted=r % 2 == 0), RoundContext(server_round=r, layout=layout))
            flagged.append(out.flagged.tolist())
        late = flagged[4:]
        if expect_flags:
            assert all(f == ([2] if r % 2 == 0 else []) for r, f in zip(range(5, 13), late, strict=True)), flagged
        else:
            assert all(f == [] for f in late), flagged


def test_stacking_without_attackers_flags_nobody():
    torch.manual_seed(1)
    layout = Layout(("fc.weight",), (torch.Size([3, 64]),), (0,))
    rule = PCADetect(source=0, start_round=1)
    for r in range(1, 31):
        updates = torch.zeros(5, 192)
        updates[:, :64] = torch.randn(5, 64)
        assert rule(updates, RoundContext(server_round=r, layout=layout)).flagged.numel() == 0
