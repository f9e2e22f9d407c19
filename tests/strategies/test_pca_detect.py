"""Tolpegin et al.'s PCA defense: looks at one output row, flags a separated minority."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import yaml

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
SEPARATION = 4.0  # the noise calibration of the module docstring: noise alone stays below 2.2


def federation(n: int, flippers: list[int], seed: int = 0, shift: float = 3.0) -> torch.Tensor:
    """Noise updates; the flippers' source-class output row is pushed one way."""
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    row = slice(5 + SOURCE * FEATURES, 5 + (SOURCE + 1) * FEATURES)
    x[flippers, row] += shift
    return x


def test_flags_the_label_flippers_and_averages_the_rest() -> None:
    flippers = [1, 4, 9]
    x = federation(12, flippers)
    out = pca_detect(x, layout=LAYOUT, source=SOURCE, min_separation=SEPARATION)
    assert out.flagged.tolist() == flippers
    keep = [i for i in range(12) if i not in flippers]
    torch.testing.assert_close(out.vector, x[keep].mean(dim=0))
    assert out.info["separation"] >= 4.0


def test_only_the_source_row_matters() -> None:
    x = federation(12, [])
    x[[1, 4, 9], 5 + (SOURCE + 1) * FEATURES : 5 + (SOURCE + 2) * FEATURES] += 30.0  # another class's row
    x[[1, 4, 9], :5] += 30.0  # and another layer
    assert pca_detect(x, layout=LAYOUT, source=SOURCE, min_separation=SEPARATION).flagged.tolist() == []


def test_honest_rounds_flag_nothing() -> None:
    for seed in range(10):
        out = pca_detect(federation(20, [], seed=seed), layout=LAYOUT, source=SOURCE, min_separation=SEPARATION)
        assert out.flagged.tolist() == [], out.info


def test_before_start_round_everything_is_averaged_and_the_round_is_inactive() -> None:
    x = federation(12, [1, 4, 9])
    rule = PCADetect(source=SOURCE, start_round=10)
    assert PCADetect.detects is True
    early = rule(x, RoundContext(server_round=9))  # no layout needed yet
    assert early.flagged.tolist() == [] and early.active is False
    torch.testing.assert_close(early.vector, x.mean(dim=0))
    late = rule(x, RoundContext(server_round=10, layout=LAYOUT))
    assert late.flagged.tolist() == [1, 4, 9] and late.active is True


def test_rounds_with_too_few_stacked_rows_are_inactive() -> None:
    # 4 clients a round, min_rows 10: round 1 stacks 4, round 2 stacks 8, round 3 stacks 12 and clusters
    rule = PCADetect(source=SOURCE, start_round=1, history_rounds=5, min_rows=10)
    seen = []
    for r in (1, 2, 3):
        out = rule(federation(4, [1], seed=r), RoundContext(server_round=r, layout=LAYOUT))
        seen.append((out.active, out.info["stacked_rows"]))
        if not out.active:
            assert out.flagged.tolist() == []
            torch.testing.assert_close(out.vector, federation(4, [1], seed=r).mean(dim=0))
    assert seen == [(False, 4.0), (False, 8.0), (True, 12.0)]


def test_equal_halves_flag_nothing_and_tiny_rounds_are_inactive() -> None:
    halves = pca_detect(federation(8, [0, 1, 2, 3]), layout=LAYOUT, source=SOURCE, min_separation=SEPARATION)
    assert halves.flagged.tolist() == [] and halves.active  # it ran and found no minority
    tiny = pca_detect(federation(2, [0]), layout=LAYOUT, source=SOURCE, min_separation=SEPARATION)
    assert tiny.flagged.tolist() == [] and not tiny.active  # two rows cannot be clustered: the plain mean
    torch.testing.assert_close(tiny.vector, federation(2, [0]).mean(dim=0))


def test_the_function_has_no_default_threshold() -> None:
    assert inspect.signature(pca_detect).parameters["min_separation"].default is inspect.Parameter.empty
    conf = yaml.safe_load((Path(__file__).resolve().parents[2] / "conf" / "strategy" / "pca_detect.yaml").read_text())
    # the class default and the config's are the calibrated one (not two values drifting apart)
    assert inspect.signature(PCADetect).parameters["min_separation"].default == conf["min_separation"]


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
