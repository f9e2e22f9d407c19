"""A Flower ``Grid`` that collects replies as soon as they arrive, not on Flower's 3-second tick.

Flower 1.41's ``HttpGrid`` (what a ServerApp process gets, in the simulation
runtime and in a deployment alike) implements ``send_and_receive`` as push,
then pull every **3 seconds** until every reply is in: a round whose clients
finish in 1.2 s waits until 3 s, one that needs 3.1 s until 6 s. Enrolment
and every round pay it. :class:`PromptGrid` wraps the ServerApp's grid and
pulls on a short interval instead (``interval``, default 0.1 s; each pull is
one small request to the SuperLink), everything else is the wrapped grid's.
The replies, their order and the timeout are Flower's semantics, but they are
handed to the strategy as they arrive rather than once all are in, so the
ServerApp holds one pull's replies at a time, not a whole round's.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run as FlowerRun


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that pulls every ``interval`` seconds (see the module docstring)."""

    def __init__(self, grid: Grid, interval: float = 0.1) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.grid, self.interval = grid, interval

    def set_run(self, run: FlowerRun) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> FlowerRun:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` now; the replies as they arrive, until every one is in or ``timeout`` seconds passed.

        The replies come as an iterator that pulls while it is consumed: each
        reply is handed out as soon as it is pulled and let go of once handed
        out, so the strategy decodes a round's replies while later ones are
        still being trained and no more than the replies of one pull are held
        at once (a round of thousands of clients is never held whole). The
        ``timeout`` runs from the push, in wall-clock time, whatever the
        consumer does in between; once it has passed, one last pull still hands
        out the replies that arrived meanwhile, and the wait ends.
        """
        waiting = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        return self._receive(waiting, end)

    def _receive(self, waiting: set[str], end: float | None) -> Iterator[Message]:
        """Pull the replies to ``waiting`` every ``interval`` seconds until all are in or ``end``; hand each out."""
        while waiting:
            late = end is not None and time.monotonic() >= end
            arrived = deque(self.pull_messages(waiting))
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            while arrived:
                yield arrived.popleft()
            if not waiting or late:
                return
            left = None if end is None else end - time.monotonic()
            time.sleep(self.interval if left is None else max(0.0, min(self.interval, left)))
