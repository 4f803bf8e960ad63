"""A thread that runs env calls one at a time, each within a time limit, for the env server.

The server's event loop never runs env code: a session's reset, step and state run on its
:class:`EnvThread` (every session of an env that is not thread-safe shares one), and the loop only
waits for the answer, up to the step timeout. A call past the limit is interrupted: the thread
gets an exception at its next Python instruction, which stops a loop stuck in Python code (a
search that never ends) and frees its core. A call stuck inside native code cannot be
interrupted; its thread is left to finish on its own and nothing waits for it. Either way the
caller gets :class:`EnvCallTimeout` at the limit.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class EnvCallTimeout(TimeoutError):
    """An env call ran past its time limit (it was interrupted, or left running in native code)."""


class _Interrupted(BaseException):
    """Raised inside an env call that ran past its limit; a BaseException, so the env's own
    ``except Exception`` handlers do not swallow it."""


def _checkpoint() -> None:
    """Does nothing; calling it makes Python deliver an interrupt that is already pending."""


class EnvThread:
    """A daemon thread that runs the calls given to :meth:`call` in order."""

    def __init__(self, name: str):
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: Future | None = None  # the call inside its function now, the only one an interrupt may hit
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], Any], timeout_s: float | None) -> Any:
        """``fn()`` on this thread; raises :class:`EnvCallTimeout` after ``timeout_s`` (queueing
        included; ``None``: no limit), having interrupted the call."""
        future: Future = Future()
        self._calls.put((fn, future))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            if not future.cancel():  # it started: stop it where it is
                self._interrupt(future)
            raise EnvCallTimeout(f"no answer within {timeout_s:g} s") from None

    def submit(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` after the calls queued before it; nothing waits for it (a stuck thread never runs it)."""
        self._calls.put((fn, Future()))

    def stop(self) -> None:
        """End the thread once the calls queued before are done."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, future = item
            if future.set_running_or_notify_cancel():
                self._settle(fn, future)

    def _settle(self, fn: Callable[[], Any], future: Future) -> None:
        try:
            with self._lock:
                self._running = future
            try:
                result = fn()
            finally:
                with self._lock:
                    self._running = None
            # An interrupt sent while fn was returning is pending now; it must land here, inside
            # this try, and never in the next call.
            _checkpoint()
        except BaseException as err:  # noqa: BLE001  (the caller gets every error of its call, interrupts included)
            future.set_exception(err)
        else:
            future.set_result(result)

    def _interrupt(self, future: Future) -> None:
        with self._lock:
            if self._running is future:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident), ctypes.py_object(_Interrupted))
