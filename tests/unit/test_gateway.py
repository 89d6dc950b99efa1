"""The API's bridge from the writer's replies to the event loop (commands/api/gateway.py).

The writer is replaced by a stand-in that hands out real ``Reply`` objects and settles them from another thread, as
the writer thread does; everything else is the gateway's own code on a real event loop.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from typing import Any

import pytest

from commands.api import gateway as gateway_module
from commands.api.gateway import LedgerGateway
from commands.api.limits import GATHERED_TRANSFERS_MAX
from ledger import errors
from ledger.command_types import CreateTransfer, CreateTransfers
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


# ---- single transfers gathered into one command per pass of the loop (ADR 0024) ------------------------------------


class TransferWriter(StandInWriter):
    """Answers transfers as the writer does: a ``CreateTransfers`` with one outcome per transfer, in order, a
    refusal in its place; a single ``CreateTransfer`` with its result or its exception. A key starting with
    "refuse" is refused; ``refuse_whole`` refuses every command whole, as an overloaded writer does."""

    refuse_whole: errors.LedgerError | None = None

    def settle_all(self) -> int:
        taken = self.take()
        for command, reply in taken:
            reply.set_running_or_notify_cancel()
            if self.refuse_whole is not None:
                reply.set_exception(self.refuse_whole)
            elif isinstance(command, CreateTransfers):
                reply.set_result([self.outcome(c) for c in command.transfers])
            else:
                assert isinstance(command, CreateTransfer)
                answer = self.outcome(command)
                if isinstance(answer, errors.LedgerError):
                    reply.set_exception(answer)
                else:
                    reply.set_result(answer)
        return len(taken)

    @staticmethod
    def outcome(transfer: CreateTransfer) -> Any:
        if transfer.key.startswith("refuse"):
            return errors.InsufficientFunds(f"{transfer.key} refused")
        return f"{transfer.key} done"


def transfer(key: str) -> CreateTransfer:
    return CreateTransfer(key, uuid.UUID(int=1), uuid.UUID(int=2), 100)


async def settle_when_sent(writer: StandInWriter, commands: int) -> None:
    while len(writer.replies) < commands:
        await asyncio.sleep(0)
    await asyncio.to_thread(writer.settle_all)


def test_transfers_of_one_pass_go_as_one_command_and_each_request_gets_its_own_outcome() -> None:
    writer = TransferWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]
    keys = [f"refuse-{i}" if i % 7 == 3 else f"t-{i}" for i in range(40)]

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(gateway.execute(transfer(k))) for k in keys]
        await asyncio.sleep(0)  # the tasks run, in one pass
        await asyncio.sleep(0)  # the flush scheduled by the first of them runs
        (command, _), = writer.replies
        assert isinstance(command, CreateTransfers)
        assert [c.key for c in command.transfers] == keys  # in the order the requests submitted them
        await asyncio.to_thread(writer.settle_all)
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes, _ = run(scenario)
    for key, got in zip(keys, outcomes, strict=True):
        if key.startswith("refuse"):
            assert isinstance(got, errors.InsufficientFunds) and str(got) == f"{key} refused"
        else:
            assert got == f"{key} done"


def test_a_transfer_alone_in_its_pass_goes_as_itself() -> None:
    writer = TransferWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> tuple[Any, Any]:
        done = asyncio.ensure_future(gateway.execute(transfer("alone")))
        await settle_when_sent(writer, 1)
        first = await done
        refused = asyncio.ensure_future(gateway.execute(transfer("refuse-alone")))
        await settle_when_sent(writer, 1)
        return first, await asyncio.gather(refused, return_exceptions=True)

    (first, (refused,)), _ = run(scenario)
    assert first == "alone done"
    assert isinstance(refused, errors.InsufficientFunds)


def test_a_long_pass_sends_full_groups_before_it_ends() -> None:
    writer = TransferWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]
    total = 2 * GATHERED_TRANSFERS_MAX + 5
    sent_during_the_pass: list[int] = []

    async def one(i: int) -> Any:
        if i == total - 1:  # the pass's last request sees what was already sent
            sent_during_the_pass.append(len(writer.replies))
        return await gateway.execute(transfer(f"t-{i}"))

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(one(i)) for i in range(total)]
        await settle_when_sent(writer, 3)
        return await asyncio.gather(*tasks)

    outcomes, _ = run(scenario)
    assert outcomes == [f"t-{i} done" for i in range(total)]
    assert sent_during_the_pass == [2]  # two full groups went while the pass was still running


def test_a_command_refused_whole_refuses_each_request_with_its_own_error() -> None:
    writer = TransferWriter()
    writer.refuse_whole = errors.LedgerOverloaded("the ledger is overloaded; retry with the same key")
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(gateway.execute(transfer(f"t-{i}"))) for i in range(5)]
        await settle_when_sent(writer, 1)
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes, _ = run(scenario)
    assert all(type(o) is errors.LedgerOverloaded and "retry with the same key" in str(o) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 5  # no exception object shared between requests


def test_a_gathered_group_times_out_as_unavailable_and_its_late_answer_is_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(gateway_module, "LEDGER_WAIT_S_MAX", 0.05)
    writer = TransferWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(gateway.execute(transfer(f"t-{i}"), timeout_s=0.05) for i in range(3)),
                                        return_exceptions=True)
        assert 0.04 <= time.monotonic() - started < 2.0
        assert len(writer.replies) == 1  # they went as one group, which shared one timer
        await asyncio.to_thread(writer.settle_all)
        await asyncio.sleep(0.01)
        return outcomes

    with caplog.at_level("ERROR"):
        outcomes, _ = run(scenario)
    assert all(type(o) is errors.LedgerUnavailable and "outcome is unknown" in str(o) for o in outcomes)
    assert "a reply callback raised" not in caplog.text


def test_a_cancelled_request_leaves_its_group_mates_their_answers() -> None:
    writer = TransferWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(gateway.execute(transfer(f"t-{i}"))) for i in range(4)]
        while not writer.replies:
            await asyncio.sleep(0)
        tasks[1].cancel()
        await asyncio.to_thread(writer.settle_all)
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes, _ = run(scenario)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert [outcomes[i] for i in (0, 2, 3)] == ["t-0 done", "t-2 done", "t-3 done"]


def test_past_the_depth_limit_transfers_are_refused_as_overloaded_and_never_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway_module, "WRITER_QUEUE_DEPTH_MAX", 3)
    writer = TransferWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[Any], Any]:
        tasks = [asyncio.ensure_future(gateway.execute(transfer(f"t-{i}"))) for i in range(5)]
        await settle_when_sent(writer, 1)
        first = await asyncio.gather(*tasks, return_exceptions=True)
        # Settled: the depth is free again.
        again = asyncio.ensure_future(gateway.execute(transfer("again")))
        await settle_when_sent(writer, 1)
        return first, await again

    (first, again), _ = run(scenario)
    assert first[:3] == ["t-0 done", "t-1 done", "t-2 done"]
    assert all(type(o) is errors.LedgerOverloaded for o in first[3:])
    assert again == "again done"


def test_transfers_with_a_timeout_of_their_own_go_alone() -> None:
    writer = TransferWriter()
    gateway = LedgerGateway(writer)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        tasks = [asyncio.ensure_future(gateway.execute(transfer(f"t-{i}"), timeout_s=5.0)) for i in range(3)]
        await settle_when_sent(writer, 3)
        return await asyncio.gather(*tasks)

    outcomes, _ = run(scenario)
    assert outcomes == ["t-0 done", "t-1 done", "t-2 done"]
