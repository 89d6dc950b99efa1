"""The answer to one command submitted to the writer: ``concurrent.futures.Future``'s interface, at a third of its cost.

Every transfer creates one and the writer resolves one per command, so its price is paid on the hot path twice
(ADR 0012). ``concurrent.futures.Future`` builds a ``threading.Condition`` per future and runs Python code to wait
and to notify. Here a waiter blocks on a C lock that is released once, when the reply is settled. Any number
of threads may wait: each passes the gate and opens it again for the next.

The subset of ``Future`` that callers of the writer use is kept, with its meaning: ``result`` and
``exception`` with a timeout (``TimeoutError``), ``done``, ``add_done_callback`` (run at once when already
settled; an exception in a callback is logged, never raised into the writer), ``cancel`` while still pending,
and ``set_running_or_notify_cancel``, with which the writer claims a command so it can no longer be cancelled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, InvalidStateError
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_PENDING, _RUNNING, _CANCELLED, _FINISHED = "PENDING", "RUNNING", "CANCELLED", "FINISHED"


class Reply(Generic[T]):
    __slots__ = ("_callbacks", "_exception", "_gate", "_mutex", "_result", "_state")

    def __init__(self) -> None:
        self._state = _PENDING
        self._result: T | None = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Reply[T]], object]] | None = None
        self._mutex = threading.Lock()  # guards the state transitions and the callback list
        self._gate = threading.Lock()  # held until the reply is settled
        self._gate.acquire()

    def __repr__(self) -> str:
        return f"<Reply {self._state}>"

    # ---- the caller's side -------------------------------------------------------------------------------------
    def done(self) -> bool:
        return self._state in (_FINISHED, _CANCELLED)

    def running(self) -> bool:
        return self._state == _RUNNING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def cancel(self) -> bool:
        """Cancels a command the writer has not claimed yet; False once it is running or settled."""
        with self._mutex:
            if self._state == _CANCELLED:
                return True
            if self._state != _PENDING:
                return False
            self._state = _CANCELLED
        self._settled()
        return True

    def result(self, timeout: float | None = None) -> T:
        self._wait(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]  # FINISHED without an exception: the result was set

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._exception

    def add_done_callback(self, fn: Callable[[Reply[T]], object]) -> None:
        with self._mutex:
            if self._state not in (_FINISHED, _CANCELLED):
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        self._call(fn)

    def _wait(self, timeout: float | None) -> None:
        if self._state not in (_FINISHED, _CANCELLED):
            if not self._gate.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
                raise TimeoutError
            self._gate.release()  # for the next waiter
        if self._state == _CANCELLED:
            raise CancelledError

    # ---- the writer's side -------------------------------------------------------------------------------------
    def set_running_or_notify_cancel(self) -> bool:
        """Claims a pending reply for the writer: True, and it can no longer be cancelled; False if it was."""
        with self._mutex:
            if self._state == _CANCELLED:
                return False
            if self._state != _PENDING:
                raise InvalidStateError(f"reply already {self._state}")
            self._state = _RUNNING
            return True

    def set_result(self, result: T) -> None:
        self._finish(result, None)

    def set_exception(self, exception: BaseException) -> None:
        self._finish(None, exception)

    def _finish(self, result: T | None, exception: BaseException | None) -> None:
        with self._mutex:
            if self._state in (_FINISHED, _CANCELLED):
                raise InvalidStateError(f"reply already {self._state}")
            # Both values before the state: a waiter reads them without the mutex once it sees FINISHED.
            self._result, self._exception, self._state = result, exception, _FINISHED
        self._settled()

    def _settled(self) -> None:
        """Opens the gate and runs the callbacks; called once, by the transition that settled the reply."""
        self._gate.release()
        callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            self._call(fn)

    def _call(self, fn: Callable[[Reply[T]], object]) -> None:
        try:
            fn(self)
        except Exception:
            log.exception("a reply callback raised")
