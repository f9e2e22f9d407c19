"""Text clean-up shared by the processes that read Flower's and Ray's output (no torch here)."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI terminal escape codes (the colours of Ray's tracebacks)."""
    return _ANSI.sub("", text)
