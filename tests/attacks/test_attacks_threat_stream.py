"""The malicious set is drawn from the named stream ``Stream.MALICIOUS_SET``, and the draws did not move."""

from __future__ import annotations

from attacks.threat import draw_malicious
from common.streams import Stream


def test_the_stream_tag_is_the_former_constant() -> None:
    assert Stream.MALICIOUS_SET == 0x4D414C  # "MAL", the spawn key used before the streams had names


def test_draws_pinned_before_the_stream_was_named() -> None:
    # Computed with the former private constant _MALICIOUS_STREAM = 0x4D414C.
    assert draw_malicious(50, 10, seed=0) == [8, 13, 14, 16, 20, 24, 27, 34, 39, 45]
    assert draw_malicious(20, 4, seed=7) == [0, 2, 8, 18]
    assert draw_malicious(100, 30, seed=12345) == [
        1, 5, 7, 9, 15, 16, 17, 18, 26, 30, 34, 45, 47, 57, 58, 59, 62, 63, 65, 73, 74, 77, 82, 83, 85, 88, 90, 92,
        97, 99,
    ]  # fmt: skip
