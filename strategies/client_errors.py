"""A failed client's entry in ``metrics.jsonl``: its exception type and message, not Flower's traceback.

Flower reports a ClientApp that raised with an ``Error`` whose reason is the
exception (a SuperNode) or Ray's whole colourised traceback (the simulation);
:func:`failure_entry` keeps what a reader needs, the full reason goes to the log.
"""

from __future__ import annotations

import re

from common.text import strip_ansi

__all__ = ["FAILURE_ENTRY_CHARS", "failure_entry", "strip_ansi"]

#: Flower's ``Error.reason`` for a raising ClientApp: ``str(type(ex)) + ":<'" + str(ex) + "'>"``
_FLOWER_REASON = re.compile(r"<class '(?P<type>[^']+)'>:<'(?P<body>.*)'>", re.DOTALL)
_EXCEPTION_LINE = re.compile(r"(?P<type>[A-Za-z_][\w.]*(?:\([\w.]*\))?)(?::[ ]?(?P<message>.*))?")
#: exceptions Flower and Ray wrap a ClientApp's own exception in
_WRAPPERS = ("ClientAppException", "RayTaskError", "RayActorError")
FAILURE_ENTRY_CHARS = 300


def _short(type_name: str) -> str:
    """``ray.exceptions.RayTaskError(ClientAppException)`` -> ``RayTaskError``; ``a.b.MyError`` -> ``MyError``."""
    return type_name.split("(", 1)[0].rsplit(".", 1)[-1]


def _exception_lines(text: str) -> list[tuple[str, str]]:
    """The exception lines of every traceback in ``text`` (type, first line of message), in printed order.

    An exception line is the first unindented line after a traceback's ``  File ...`` frames.
    """
    found, in_frames = [], False
    for row in text.splitlines():
        if row.startswith("  File "):
            in_frames = True
        elif in_frames and row.strip() and not row[0].isspace():
            in_frames = False
            if match := _EXCEPTION_LINE.fullmatch(row.rstrip()):
                found.append((match["type"], (match["message"] or "").strip()))
    return found


def failure_entry(reason: str) -> str:
    """What ``metrics.jsonl`` records for a client that failed: its exception type and message.

    Flower reports a ClientApp that raised as ``<class 'T'>:<'message'>`` (a
    deployment's SuperNode) or, on the Ray simulation engine, with ``T`` Ray's
    ``RayTaskError(ClientAppException)`` and the message Ray's whole colourised
    traceback (~2 KB). This keeps the client's own exception: ANSI codes are
    stripped and the last exception line of the traceback that is not Flower's
    or Ray's wrapper is taken, e.g. ``"ValueError: the batch is empty"`` (the
    module path of the type is dropped). Without a traceback,
    ``<class 'T'>:<'message'>`` becomes ``"T: message"``; anything else is
    its first non-empty line. The entry is at most :data:`FAILURE_ENTRY_CHARS` long.
    """
    text = strip_ansi(reason).strip()
    entry = None
    if lines := _exception_lines(text):
        own = [(t, m) for t, m in lines if _short(t) not in _WRAPPERS]
        if own:
            entry = f"{_short(own[-1][0])}: {own[-1][1]}" if own[-1][1] else _short(own[-1][0])
    if entry is None and (match := _FLOWER_REASON.fullmatch(text)):
        body = match["body"].strip()
        if "occurred. Message: " in body:  # ClientAppException("\nException ... occurred. Message: <message>")
            body = body.split("occurred. Message: ", 1)[1]
        first = next((row.strip() for row in body.splitlines() if row.strip()), "")
        entry = f"{_short(match['type'])}: {first}" if first else _short(match["type"])
    if entry is None:
        entry = next((row.strip() for row in text.splitlines() if row.strip()), "no reason given")
    return entry if len(entry) <= FAILURE_ENTRY_CHARS else entry[: FAILURE_ENTRY_CHARS - 3] + "..."
