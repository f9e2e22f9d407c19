"""PromptGrid: Flower's send_and_receive semantics (every reply, the timeout) with a short pull interval."""

from __future__ import annotations

import time

import pytest
from fake_grid import FakeGrid
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from server.prompt_grid import PromptGrid


class LateGrid(FakeGrid):
    """A FakeGrid whose replies become visible only from the ``late``-th pull on (a SuperNode still training)."""

    def __init__(self, *args, late: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.late, self.pulls = late, 0

    def pull_messages(self, message_ids):
        self.pulls += 1
        return super().pull_messages(message_ids) if self.pulls >= self.late else []


def queries(grid) -> list[Message]:
    content = RecordDict({"config": ConfigRecord({"ask": "enrolment"})})
    return [Message(content, message_type=MessageType.QUERY, dst_node_id=n) for n in grid.get_node_ids()]


def test_it_returns_every_reply_pulling_until_they_are_in():
    inner = LateGrid(4, late=5)
    grid = PromptGrid(inner, interval=0.01)
    replies = list(grid.send_and_receive(queries(grid), timeout=30))
    assert sorted(r.metadata.src_node_id for r in replies) == sorted(inner.get_node_ids())
    assert inner.pulls == 5  # it stopped pulling once every reply was in


def test_a_missing_reply_ends_the_wait_at_the_timeout_with_the_others():
    inner = FakeGrid(3)
    grid = PromptGrid(inner, interval=0.01)
    silent = next(iter(inner.get_node_ids()))
    messages = queries(grid)
    inner.push_messages = _dropping(inner.push_messages, inner, silent)
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=0.3))
    assert 0.3 <= time.monotonic() - started < 5
    assert sorted(r.metadata.src_node_id for r in replies) == sorted(set(inner.get_node_ids()) - {silent})


class TrickleGrid(FakeGrid):
    """A FakeGrid whose pulls each hand out at most one of the replies that are in (SuperNodes finishing in turn)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pulls = 0

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [i for i in message_ids if i in self._replies]
        return super().pull_messages(ready[:1])


def test_each_reply_is_handed_out_as_it_arrives_not_once_all_are_in():
    inner = TrickleGrid(3)
    grid = PromptGrid(inner, interval=0.01)
    replies = grid.send_and_receive(queries(grid), timeout=30)
    assert inner.pulls == 0  # pushed, nothing pulled before the strategy asks for a reply
    first = next(iter(replies))
    assert inner.pulls == 1  # the first reply comes while the other two are still out
    rest = list(replies)
    assert inner.pulls == 3
    assert sorted(r.metadata.src_node_id for r in [first, *rest]) == sorted(inner.get_node_ids())


def test_the_timeout_runs_from_the_push_and_a_last_pull_collects_what_arrived_meanwhile():
    inner = TrickleGrid(3)
    grid = PromptGrid(inner, interval=0.01)
    started = time.monotonic()
    got = []
    for reply in grid.send_and_receive(queries(grid), timeout=0.2):
        got.append(reply)
        time.sleep(0.3)  # the strategy is slow on the first reply: the deadline passes meanwhile
    assert 0.3 <= time.monotonic() - started < 5
    assert len(got) == 2 and inner.pulls == 2  # one more pull after the deadline, then no more waiting


def _dropping(push, grid, node):
    def push_and_drop(messages):
        ids = list(push(messages))
        for msg in grid.sent:
            if msg.metadata.dst_node_id == node:
                grid._replies.pop(msg.metadata.message_id, None)
        return ids

    return push_and_drop


def test_the_rest_of_the_grid_is_the_wrapped_one():
    inner = FakeGrid(2)
    grid = PromptGrid(inner)
    assert list(grid.get_node_ids()) == list(inner.get_node_ids()) and grid.run is inner.run
    with pytest.raises(ValueError, match="interval must be > 0"):
        PromptGrid(inner, interval=0)
