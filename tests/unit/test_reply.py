"""``Reply`` keeps the meaning of ``concurrent.futures.Future`` for everything the writer's callers use."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, InvalidStateError
from typing import Any

import pytest

from ledger.reply import Reply

WAIT_S = 5.0


def test_result_and_exception_once_set() -> None:
    ok: Reply[int] = Reply()
    assert not ok.done() and not ok.running()
    assert ok.set_running_or_notify_cancel() and ok.running()
    ok.set_result(7)
    assert ok.done() and ok.result(0) == 7 and ok.exception(0) is None
    failed: Reply[int] = Reply()
    error = ValueError("refused")
    failed.set_exception(error)
    assert failed.exception(0) is error
    with pytest.raises(ValueError, match="refused"):
        failed.result(0)


def test_waiting_times_out_while_unsettled() -> None:
    reply: Reply[int] = Reply()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        reply.result(timeout=0.05)
    with pytest.raises(TimeoutError):
        reply.exception(timeout=0)
    assert time.monotonic() - started >= 0.04


def test_every_waiting_thread_is_woken_with_the_same_result() -> None:
    reply: Reply[str] = Reply()
    seen: list[Any] = []
    waiters = [threading.Thread(target=lambda: seen.append(reply.result(WAIT_S))) for _ in range(16)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.05)
    assert seen == []
    reply.set_result("done")
    for waiter in waiters:
        waiter.join(WAIT_S)
    assert seen == ["done"] * 16
    assert reply.result(0) == "done"  # and later callers pass straight through


def test_callbacks_run_once_settled_or_at_once_when_already_settled() -> None:
    reply: Reply[int] = Reply()
    calls: list[tuple[str, int]] = []
    reply.add_done_callback(lambda r: calls.append(("before", r.result(0))))
    assert calls == []
    reply.set_result(3)
    reply.add_done_callback(lambda r: calls.append(("after", r.result(0))))
    assert calls == [("before", 3), ("after", 3)]


def test_a_failing_callback_is_logged_not_raised_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    reply: Reply[int] = Reply()
    calls: list[int] = []

    def broken(_: Reply[int]) -> None:
        raise RuntimeError("callback bug")

    reply.add_done_callback(broken)
    reply.add_done_callback(lambda r: calls.append(r.result(0)))
    reply.set_result(1)  # the writer's call: must not raise
    assert calls == [1]
    assert "a reply callback raised" in caplog.text


def test_cancel_only_while_pending() -> None:
    pending: Reply[int] = Reply()
    calls: list[bool] = []
    pending.add_done_callback(lambda r: calls.append(r.cancelled()))
    assert pending.cancel() and pending.cancel() and pending.cancelled() and pending.done()
    assert calls == [True]
    with pytest.raises(CancelledError):
        pending.result(0)
    assert not pending.set_running_or_notify_cancel()  # the writer skips a cancelled command
    with pytest.raises(InvalidStateError):
        pending.set_result(1)

    claimed: Reply[int] = Reply()
    assert claimed.set_running_or_notify_cancel()
    assert not claimed.cancel() and not claimed.cancelled()
    with pytest.raises(InvalidStateError):
        claimed.set_running_or_notify_cancel()
    claimed.set_result(2)
    assert not claimed.cancel() and claimed.result(0) == 2


def test_settling_twice_is_refused() -> None:
    reply: Reply[int] = Reply()
    reply.set_result(1)
    with pytest.raises(InvalidStateError):
        reply.set_result(2)
    with pytest.raises(InvalidStateError):
        reply.set_exception(ValueError())
    assert reply.result(0) == 1


def test_a_cancel_racing_the_writers_claim_has_one_winner() -> None:
    for _ in range(500):
        reply: Reply[int] = Reply()
        outcome: dict[str, bool] = {}
        barrier = threading.Barrier(2)

        def cancel(r: Reply[int] = reply, o: dict[str, bool] = outcome, b: threading.Barrier = barrier) -> None:
            b.wait()
            o["cancelled"] = r.cancel()

        canceller = threading.Thread(target=cancel)
        canceller.start()
        barrier.wait()
        claimed = reply.set_running_or_notify_cancel()
        canceller.join(WAIT_S)
        assert claimed != outcome["cancelled"]
        if claimed:
            reply.set_result(1)
            assert reply.result(0) == 1
        else:
            with pytest.raises(CancelledError):
                reply.result(0)
