"""The API's bridge from the writer's replies to the event loop (commands/api/gateway.py).

The writer is replaced by a stand-in that hands out real ``Reply`` objects and settles them from another thread, as
the writer thread does; everything else is the gateway's own code on a real event loop.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

from commands.api.gateway import LedgerGateway
from ledger import errors
from ledger.reply import Reply


class StandInWriter:
    """Queues replies; ``settle`` resolves them from another thread, as the writer resolves a group commit."""

    def __init__(self) -> None:
        self.replies: list[tuple[object, Reply[Any]]] = []
        self.lock = threading.Lock()

    def submit(self, command: object) -> Reply[Any]:
        reply: Reply[Any] = Reply()
        with self.lock:
            self.replies.append((command, reply))
        return reply

    def take(self) -> list[tuple[object, Reply[Any]]]:
        with self.lock:
            taken, self.replies = self.replies, []
        return taken

    def settle_all(self) -> int:
        taken = self.take()
        for command, reply in taken:
            reply.set_running_or_notify_cancel()
            if isinstance(command, str) and command.startswith("refuse"):
                reply.set_exception(errors.InsufficientFunds(f"{command} refused"))
            else:
                reply.set_result(f"{command} done")
        return len(taken)


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts the wake-ups asked of the loop from other threads."""

    wakeups = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def run(coro_factory: Any) -> tuple[Any, CountingLoop]:
    loop = CountingLoop()
    try:
        return loop.run_until_complete(coro_factory()), loop
    finally:
        loop.close()


def test_a_burst_of_replies_wakes_the_loop_once_and_each_request_gets_its_own_outcome() -> None:
    writer = StandInWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        commands = [f"refuse-{i}" if i % 10 == 0 else f"transfer-{i}" for i in range(200)]
        tasks = [asyncio.ensure_future(gateway.execute(c)) for c in commands]
        while len(writer.replies) < len(commands):
            await asyncio.sleep(0)
        # The whole group commit is settled by another thread while the loop is busy elsewhere.
        await asyncio.to_thread(writer.settle_all)
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes, loop = run(scenario)
    for i, outcome in enumerate(outcomes):
        if i % 10 == 0:
            assert isinstance(outcome, errors.InsufficientFunds) and str(outcome) == f"refuse-{i} refused"
        else:
            assert outcome == f"transfer-{i} done"
    # 200 replies: one wake-up for them (to_thread's own completion is one more), not one per reply.
    assert loop.wakeups <= 3, loop.wakeups


def test_no_reply_is_left_behind_when_replies_trickle_in_while_the_loop_drains() -> None:
    writer = StandInWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]
    total = 3_000
    stop = threading.Event()

    def writer_thread() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            writer.settle_all()
            if rng.random() < 0.3:
                time.sleep(rng.random() / 5_000)

    async def scenario() -> list[Any]:
        settler = threading.Thread(target=writer_thread)
        settler.start()
        try:
            async def one(i: int) -> Any:
                await asyncio.sleep(0)
                return await gateway.execute(f"t{i}", timeout_s=10.0)

            return await asyncio.gather(*(one(i) for i in range(total)))
        finally:
            stop.set()
            settler.join()

    outcomes, _ = run(scenario)
    assert outcomes == [f"t{i} done" for i in range(total)]


def test_an_unanswered_command_times_out_as_unavailable_and_a_late_answer_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = StandInWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(errors.LedgerUnavailable, match="outcome is unknown, retry with the same key"):
            await gateway.execute("slow", timeout_s=0.05)
        assert 0.04 <= time.monotonic() - started < 2.0
        # The writer answers after the request gave up: nothing raises in the writer, the answer goes nowhere.
        await asyncio.to_thread(writer.settle_all)
        await asyncio.sleep(0.01)

    with caplog.at_level("ERROR"):
        run(scenario)
    assert "a reply callback raised" not in caplog.text


def test_a_cancelled_request_stops_waiting_and_the_command_is_still_answered_harmlessly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = StandInWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> str:
        task = asyncio.ensure_future(gateway.execute("abandoned"))
        while not writer.replies:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (_, reply), = writer.replies
        await asyncio.to_thread(writer.settle_all)
        await asyncio.sleep(0.01)
        assert reply.result(timeout=0) == "abandoned done"  # the writer's side was never cancelled
        # The gateway still serves the next request.
        follow_up = asyncio.ensure_future(gateway.execute("next"))
        while not writer.replies:
            await asyncio.sleep(0)
        await asyncio.to_thread(writer.settle_all)
        result: str = await follow_up
        return result

    with caplog.at_level("ERROR"):
        assert run(scenario)[0] == "next done"
    assert "a reply callback raised" not in caplog.text


def test_a_gateway_serves_a_second_event_loop_after_the_first_closed() -> None:
    writer = StandInWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def one(command: str) -> Any:
        task = asyncio.ensure_future(gateway.execute(command))
        while not writer.replies:
            await asyncio.sleep(0)
        await asyncio.to_thread(writer.settle_all)
        return await task

    assert run(lambda: one("first"))[0] == "first done"
    assert run(lambda: one("second"))[0] == "second done"
