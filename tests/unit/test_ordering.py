import asyncio

from consumer.kafka.ordering import KeyOrderedScheduler


async def test_jobs_of_one_key_run_in_submission_order_and_never_overlap() -> None:
    scheduler = KeyOrderedScheduler()
    log: list[str] = []
    running = 0
    max_running = 0

    def job(name: str, delay: float):  # type: ignore[no-untyped-def]
        async def run() -> None:
            nonlocal running, max_running
            running += 1
            max_running = max(max_running, running)
            await asyncio.sleep(delay)
            log.append(name)
            running -= 1

        return run

    tasks = [scheduler.submit("order-1", job(f"e{i}", 0.01 * (5 - i))) for i in range(5)]
    await asyncio.gather(*tasks)
    assert log == ["e0", "e1", "e2", "e3", "e4"]
    assert max_running == 1


async def test_different_keys_run_concurrently() -> None:
    scheduler = KeyOrderedScheduler()
    started = asyncio.Event()
    release = asyncio.Event()

    async def blocker() -> None:
        started.set()
        await release.wait()

    async def other() -> None:
        release.set()

    first = scheduler.submit("a", blocker)
    await started.wait()
    second = scheduler.submit("b", other)
    await asyncio.wait_for(asyncio.gather(first, second), timeout=1)


async def test_a_failed_job_lets_its_successor_run_but_a_cancelled_one_cancels_it() -> None:
    scheduler = KeyOrderedScheduler()
    ran: list[str] = []

    async def boom() -> None:
        raise RuntimeError("bug")

    async def hang() -> None:
        await asyncio.sleep(3600)

    async def record() -> None:
        ran.append("next")

    failing = scheduler.submit("k", boom)
    after_failure = scheduler.submit("k", record)
    hanging = scheduler.submit("k", hang)
    after_cancel = scheduler.submit("k", record)
    await asyncio.sleep(0.01)
    hanging.cancel()
    await asyncio.wait([failing, after_failure, hanging, after_cancel], timeout=1)
    assert ran == ["next"], "a failure does not stop the key; a cancellation skips the rest"
    assert after_cancel.cancelled()
    assert scheduler.keys_in_flight == 0


async def test_a_job_after_an_interrupted_one_of_its_key_does_not_run() -> None:
    scheduler = KeyOrderedScheduler()
    ran: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(3600)

    async def later() -> None:
        ran.append("later")

    first = scheduler.submit("order-1", slow)
    second = scheduler.submit("order-1", later)
    other = scheduler.submit("order-2", later)
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait([first, second, other])
    assert second.cancelled(), "its outcome would come before the interrupted earlier one's"
    assert ran == ["later"], "other keys are not affected"
    third = scheduler.submit("order-1", later)
    await third
    assert ran == ["later", "later"], "once the chain is gone, the key runs again"
