"""Data poisoning: label flipping and backdoor triggers."""

from __future__ import annotations

import pytest
import torch

from attacks.backdoor import DBA, BadNets, Blended, backdoor_test_set
from attacks.label_flip import TargetedLabelFlip, UntargetedLabelFlip


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int = 40, c: int = 3, hw: int = 8, num_classes: int = 10, seed: int = 0):
    g = _gen(seed)
    x = torch.rand(n, c, hw, hw, generator=g) * 0.5  # never 1.0, so a white trigger is visible
    y = torch.arange(n) % num_classes
    return x, y


# ------------------------------------------------------------- label flips


def test_targeted_flip_relabels_every_source_sample_and_nothing_else() -> None:
    x, y = _data()
    x0, y0 = x.clone(), y.clone()
    xp, yp = TargetedLabelFlip(source=5, target=3)(x, y, attacker_rank=0, generator=_gen())
    assert torch.equal(yp[y0 == 5], torch.full(((y0 == 5).sum(),), 3))
    assert torch.equal(yp[y0 != 5], y0[y0 != 5])
    assert torch.equal(xp, x0) and xp is not x
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched


@pytest.mark.parametrize(("num_source", "share", "expected"), [(8, 0.5, 4), (7, 0.5, 4), (10, 0.25, 3), (9, 0.0, 0)])
def test_targeted_flip_share_flips_rounded_half_up_count_of_source(
    num_source: int, share: float, expected: int
) -> None:
    y = torch.tensor([2] * num_source + [0, 1, 3, 3])
    x = torch.zeros(len(y), 1, 2, 2)
    _, yp = TargetedLabelFlip(source=2, target=7, share=share)(x, y, attacker_rank=0, generator=_gen())
    changed = yp != y
    assert int(changed.sum()) == expected
    assert torch.all(y[changed] == 2) and torch.all(yp[changed] == 7)


def test_targeted_flip_subset_depends_on_the_generator_only() -> None:
    x, y = _data(n=100)
    attack = TargetedLabelFlip(source=1, target=2, share=0.5)
    a = attack(x, y, attacker_rank=0, generator=_gen(1))[1]
    b = attack(x, y, attacker_rank=3, generator=_gen(1))[1]
    c = attack(x, y, attacker_rank=0, generator=_gen(2))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"source": 3, "target": 3}, "source=3, target=3"),
        ({"source": 1, "target": 3, "share": 1.5}, r"share=1\.5"),
        ({"source": 1, "target": 3, "share": -0.1}, r"share=-0\.1"),
        ({"source": -1, "target": 3}, "source=-1"),
    ],
)
def test_targeted_flip_config_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        TargetedLabelFlip(**kwargs)


def test_untargeted_default_permutation_reverses_classes() -> None:
    x, y = _data(n=30)
    _, yp = UntargetedLabelFlip(num_classes=10, mode="permutation")(x, y, attacker_rank=0, generator=_gen())
    assert torch.equal(yp, 9 - y)


def test_untargeted_custom_permutation() -> None:
    y = torch.tensor([0, 1, 2, 2, 1])
    x = torch.zeros(5, 1, 1, 1)
    attack = UntargetedLabelFlip(num_classes=3, mode="permutation", permutation=[1, 2, 0])
    _, yp = attack(x, y, attacker_rank=0, generator=_gen())
    assert yp.tolist() == [1, 2, 0, 0, 2]


def test_untargeted_random_changes_every_label_uniformly_over_the_others() -> None:
    n = 9000
    y = torch.zeros(n, dtype=torch.long)
    x = torch.zeros(n, 1, 1, 1)
    _, yp = UntargetedLabelFlip(num_classes=4)(x, y, attacker_rank=0, generator=_gen())
    assert torch.all(yp != 0) and torch.all(yp < 4)
    counts = torch.bincount(yp, minlength=4)[1:].float() / n
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=4 * (2 / 9 / n) ** 0.5)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_classes": 3, "mode": "permutation", "permutation": [0, 0, 1]}, r"\[0, 0, 1\]"),
        ({"num_classes": 3, "permutation": [1, 2, 0]}, "mode='random'"),
        ({"num_classes": 3, "mode": "shuffle"}, "mode='shuffle'"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_untargeted_config_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        UntargetedLabelFlip(**kwargs)


def test_untargeted_rejects_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        UntargetedLabelFlip(num_classes=3)(
            torch.zeros(2, 1, 1, 1), torch.tensor([0, 5]), attacker_rank=0, generator=_gen()
        )


# --------------------------------------------------------------- backdoors


def test_badnets_stamps_bottom_right_square_and_leaves_the_rest() -> None:
    x, _ = _data(n=4, hw=8)
    out = BadNets(target=0, share=0.1).stamp(x)
    assert torch.all(out[:, :, 5:8, 5:8] == 1.0)
    untouched = torch.ones(8, 8, dtype=torch.bool)
    untouched[5:8, 5:8] = False
    assert torch.equal(out[:, :, untouched], x[:, :, untouched])


def test_badnets_checker_top_left_with_margin() -> None:
    x = torch.full((2, 1, 6, 6), 0.5)
    out = BadNets(target=0, share=0.1, size=2, position="top_left", pattern="checker", margin=1).stamp(x)
    assert out[0, 0, 1:3, 1:3].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    rest = torch.ones(6, 6, dtype=torch.bool)
    rest[1:3, 1:3] = False
    assert torch.all(out[:, :, rest] == 0.5)


def test_badnets_trigger_that_does_not_fit_is_an_error() -> None:
    with pytest.raises(ValueError, match="5x5 trigger with margin 0 does not fit a 4x4"):
        BadNets(target=0, share=0.1, size=5).stamp(torch.zeros(1, 1, 4, 4))


def test_blended_is_a_convex_mix_with_a_fixed_seeded_pattern() -> None:
    x, _ = _data(n=3)
    attack = Blended(target=1, share=0.5, alpha=0.2, pattern_seed=4)
    _, pattern = attack.trigger((3, 8, 8))
    assert torch.allclose(attack.stamp(x), 0.8 * x + 0.2 * pattern, atol=1e-7)
    assert torch.equal(Blended(target=2, share=0.1, pattern_seed=4).trigger((3, 8, 8))[1], pattern)
    assert not torch.equal(Blended(target=2, share=0.1, pattern_seed=5).trigger((3, 8, 8))[1], pattern)
    assert 0.0 <= float(pattern.min()) and float(pattern.max()) <= 1.0


@pytest.mark.parametrize(("n", "share", "expected"), [(10, 0.25, 3), (40, 0.1, 4), (7, 0.5, 4), (5, 1.0, 5)])
def test_backdoor_poisons_a_share_of_samples_stamped_and_relabelled(n: int, share: float, expected: int) -> None:
    x, y = _data(n=n, num_classes=3)
    x0, y0 = x.clone(), y.clone()
    attack = BadNets(target=2, share=share)
    xp, yp = attack(x, y, attacker_rank=0, generator=_gen())
    poisoned = (xp != x0).flatten(1).any(dim=1)
    assert int(poisoned.sum()) == expected
    assert torch.equal(xp[poisoned], attack.stamp(x0[poisoned]))
    assert torch.all(yp[poisoned] == 2)
    assert torch.equal(xp[~poisoned], x0[~poisoned]) and torch.equal(yp[~poisoned], y0[~poisoned])
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_dba_pieces_are_disjoint_and_union_to_the_global_trigger() -> None:
    attack = DBA(target=0, share=0.5)
    pieces = [attack.piece_mask(32, 32, p) for p in range(4)]
    full = attack.piece_mask(32, 32)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.any(pieces[i] & pieces[j])
    union = torch.stack(pieces).any(dim=0)
    assert torch.equal(union, full)
    # The DBA code's MNIST layout: rows 0 and 3, columns 0-3 and 6-9.
    expected = torch.zeros(32, 32, dtype=torch.bool)
    for r in (0, 3):
        expected[r, 0:4] = True
        expected[r, 6:10] = True
    assert torch.equal(full, expected)
    assert int(full.sum()) == 16


def test_dba_cifar_layout_of_the_reference_code() -> None:
    full = DBA(target=0, share=0.5, bar_length=6, gap=3).piece_mask(32, 32)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    for r in (0, 4):
        expected[r, 0:6] = True
        expected[r, 9:15] = True
    assert torch.equal(full, expected)


def test_dba_attacker_stamps_its_own_piece_and_stamp_applies_the_union() -> None:
    attack = DBA(target=0, share=1.0)
    x = torch.zeros(2, 3, 32, 32)
    y = torch.tensor([1, 2])
    xp, yp = attack(x, y, attacker_rank=5, generator=_gen())  # piece 5 % 4 = 1
    assert torch.equal(xp[0, 0] == 1.0, attack.piece_mask(32, 32, 1))
    assert torch.all(xp[:, 0] == xp[:, 2])  # every channel
    assert yp.tolist() == [0, 0]
    assert torch.equal(attack.stamp(x)[0, 1] == 1.0, attack.piece_mask(32, 32))


def test_dba_with_more_pieces_than_fit_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit a 8x8"):
        DBA(target=0, share=0.1, num_pieces=8).stamp(torch.zeros(1, 1, 8, 8))


def test_backdoor_test_set_drops_target_class_and_stamps_the_rest() -> None:
    x, y = _data(n=20, num_classes=4)
    attack = BadNets(target=1, share=0.1)
    xt, yt = backdoor_test_set(x, y, attack)
    keep = y != 1
    assert torch.equal(yt, y[keep]) and torch.all(yt != 1)
    assert torch.equal(xt, attack.stamp(x[keep]))
    assert xt.shape[0] == 15


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: BadNets(target=0, share=1.2), r"share=1\.2"),
        (lambda: BadNets(target=0, share=0.1, size=0), "size=0"),
        (lambda: BadNets(target=0, share=0.1, position="middle"), "position='middle'"),
        (lambda: Blended(target=0, share=0.1, alpha=0.0), "alpha=0.0"),
        (lambda: DBA(target=0, share=0.1, num_pieces=0), "num_pieces=0"),
        (lambda: DBA(target=-2, share=0.1), "target=-2"),
    ],
)
def test_backdoor_config_errors(factory, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        factory()


def test_bad_data_shapes_are_rejected() -> None:
    attack = TargetedLabelFlip(source=0, target=1)
    with pytest.raises(ValueError, match="x has 3 samples but y has 2"):
        attack(torch.zeros(3, 1, 2, 2), torch.zeros(2, dtype=torch.long), attacker_rank=0, generator=_gen())
    with pytest.raises(ValueError, match="attacker_rank=-1"):
        attack(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), attacker_rank=-1, generator=_gen())
