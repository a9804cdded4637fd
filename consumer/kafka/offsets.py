"""Which offset of a partition is safe to commit while records finish out of order."""

from __future__ import annotations

from collections import deque


class PartitionProgress:
    """Offsets handed out for processing in fetch order, and the highest safe commit position.

    Records of different orders finish out of order; the commit position only moves past an
    offset once it *and every offset before it* is finished, so a crash never skips input.
    """

    def __init__(self) -> None:
        self._started: deque[int] = deque()
        self._finished: set[int] = set()
        self._position: int | None = None
        self._committed: int | None = None

    def start(self, offset: int) -> None:
        if self._started and offset <= self._started[-1]:
            raise ValueError(f"offset {offset} started out of order")
        self._started.append(offset)

    def finish(self, offset: int) -> None:
        self._finished.add(offset)
        while self._started and self._started[0] in self._finished:
            done = self._started.popleft()
            self._finished.discard(done)
            self._position = done + 1

    @property
    def unfinished(self) -> int:
        return len(self._started)

    def pending_commit(self) -> int | None:
        """The next offset to consume, if it moved since the last commit."""
        if self._position is None or self._position == self._committed:
            return None
        return self._position

    def committed(self, position: int) -> None:
        self._committed = position
