"""The work in flight: records dispatched in key order, tracked per partition until they
finish, so a partition commits only offsets whose work (and all work before it) is done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import TopicPartition

from consumer.kafka.offsets import PartitionProgress
from consumer.kafka.ordering import KeyOrderedScheduler

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Hold:
    """A record tracked before it is started: the tracker it was counted in."""

    progress: PartitionProgress


class InFlight:
    def __init__(self, max_in_flight: int) -> None:
        self._max = max_in_flight
        self._scheduler = KeyOrderedScheduler()
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        # A plain counter, safe to read from a metrics thread.
        self._count = 0
        self._slot_freed = asyncio.Event()
        # Partitions being drained on revocation: no new work is started for them.
        self._draining: set[TopicPartition] = set()

    @property
    def count(self) -> int:
        """Events dispatched and not finished."""
        return self._count

    @property
    def free_slots(self) -> int:
        return self._max - self._count

    @property
    def partitions(self) -> list[TopicPartition]:
        """Partitions with tracked work, finished or not."""
        return list(self._progress)

    def slot_freed(self) -> Coroutine[Any, Any, Literal[True]]:
        """A wait that ends once a dispatched event finishes from now on (cleared here, not
        when the wait first runs: a slot freed in between would be missed)."""
        self._slot_freed.clear()
        return self._slot_freed.wait()

    def start(
        self,
        tp: TopicPartition,
        offset: int,
        key: str,
        job: Job,
        assigned: Callable[[], Collection[TopicPartition]],
        *,
        held: Hold | None = None,
    ) -> bool:
        """Run ``job`` after the earlier jobs of ``key``; whether it was started (not for a
        partition being drained or no longer among the ``assigned()`` ones, asked only for a
        partition not yet tracked). ``held``: what ``hold`` gave for this record."""
        if held is not None:
            progress = held.progress
            if self._progress.get(tp) is not progress or tp in self._draining:
                return False  # handed over meanwhile: the new owner reads it again
        else:
            found = self._track(tp, offset, assigned)
            if found is None:
                return False
            progress = found
        task = self._scheduler.submit(key, job)
        self._tasks.setdefault(tp, set()).add(task)
        self._count += 1
        task.add_done_callback(lambda done: self._finished(tp, progress, offset, done))
        return True

    def hold(
        self,
        tp: TopicPartition,
        offset: int,
        assigned: Callable[[], Collection[TopicPartition]],
    ) -> Hold | None:
        """Track a record that is not started yet (a retry record not due): its partition
        commits no further until it is started and finished. None as ``start`` refuses."""
        progress = self._track(tp, offset, assigned)
        return None if progress is None else Hold(progress)

    def skip(self, tp: TopicPartition, offset: int, held: Hold) -> None:
        """A held record that will not be run (a later park replaces it): done."""
        if self._progress.get(tp) is held.progress:
            held.progress.finish(offset)

    def _track(
        self,
        tp: TopicPartition,
        offset: int,
        assigned: Callable[[], Collection[TopicPartition]],
    ) -> PartitionProgress | None:
        if tp in self._draining:
            # Being handed over: work started now would escape the drain. Whoever owns the
            # partition next (maybe us again) reads it from the committed offset.
            return None
        progress = self._progress.get(tp)
        if progress is None:
            if tp not in assigned():
                return None  # revoked meanwhile: the new owner reads it from the commit
            progress = self._progress[tp] = PartitionProgress()
        try:
            progress.start(offset)
        except ValueError:
            # The position went backwards (an offset reset after log truncation): track
            # the partition afresh; work already in flight for it finishes harmlessly.
            log.warning(
                "partition position moved backwards",
                extra={"topic": tp.topic, "partition": tp.partition, "offset": offset},
            )
            progress = self._progress[tp] = PartitionProgress()
            progress.start(offset)
        return progress

    def _finished(
        self,
        tp: TopicPartition,
        progress: PartitionProgress,
        offset: int,
        task: asyncio.Task[None],
    ) -> None:
        self._tasks.get(tp, set()).discard(task)
        self._count -= 1
        self._slot_freed.set()
        if task.cancelled():
            return  # interrupted by revocation or shutdown: not done, so not committable
        if task.exception() is not None:
            # Never commit past a record whose outcome did not reach the broker.
            log.error(
                "record handling failed; its partition will not commit past it",
                exc_info=task.exception(),
                extra={"topic": tp.topic, "partition": tp.partition, "offset": offset},
            )
            return
        # Only the tracker that started the offset may finish it: after a rewind or a new
        # assignment the same offset number is a different, maybe unfinished, record.
        if self._progress.get(tp) is progress:
            progress.finish(offset)

    def commit_positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The commit position of each of these partitions that moved since its last
        commit."""
        positions = {}
        for tp in partitions:
            progress = self._progress.get(tp)
            position = progress.pending_commit() if progress else None
            if position is not None:
                positions[tp] = position
        return positions

    def committed(self, tp: TopicPartition, position: int) -> None:
        progress = self._progress.get(tp)
        if progress is not None:
            progress.committed(position)

    def draining(self, partitions: Iterable[TopicPartition]) -> None:
        self._draining.update(partitions)

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget these partitions: drained, committed, handed over."""
        for tp in partitions:
            self._progress.pop(tp, None)
            self._tasks.pop(tp, None)
            self._draining.discard(tp)

    async def finish(self, partitions: Iterable[TopicPartition], grace_seconds: float) -> None:
        """Let the work of these partitions finish within ``grace_seconds``; cancel the
        rest (it is redelivered: never committed)."""
        tasks = {task for tp in partitions for task in self._tasks.get(tp, set())}
        if not tasks:
            return
        log.info("draining in-flight events", extra={"events": len(tasks)})
        _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        if pending:
            log.warning(
                "grace period over; unfinished events will be redelivered",
                extra={"events": len(pending)},
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
