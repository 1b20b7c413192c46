"""The one crossing between trio (py-libp2p) and asyncio (the rendezvous store): trio code awaits a
coroutine that runs on an asyncio loop in another thread, and is woken through its trio token when the
result is in.

The rendezvous service (asyncio in the main thread) runs its libp2p door's trio side in a TrioThread, which
reports a failure to its owner; each side keeps its own loop. A crossing costs ~1-2 ms (shared notes).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from typing import Any, Awaitable, Callable

import trio


class AsyncioPortal:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """From trio: run `fn(*args)` on the asyncio loop and return its result (or raise its exception)."""
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # the trio side is gone; nobody waits for this result

        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()


class TrioThread:
    """A trio run in a thread of its own, for asyncio programs that host py-libp2p.

    `main(*args, task_status=...)` is started as a trio server is: `start()` returns once it reports
    started (a listener is up), or raises what stopped it from starting. A failure after that goes to
    `on_failure`, called in the thread; `stop()` cancels the run and joins the thread.
    """

    def __init__(self, main: Callable[..., Awaitable[Any]], *args: Any,
                 on_failure: Callable[[BaseException], None], name: str = "trio"):
        self._main, self._args, self._on_failure = main, args, on_failure
        self._settled = threading.Event()  # started, or failed before starting
        self._started = False
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        async def body():
            with trio.CancelScope() as scope:
                self._scope, self._token = scope, trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    await nursery.start(functools.partial(self._main, *self._args))
                    self._started = True
                    self._settled.set()
        try:
            trio.run(body)
        except BaseException as exc:  # noqa: B902 - whatever ended the run is reported, never lost
            exc = root_cause(exc)
            if self._started:
                self._on_failure(exc)
            else:
                self._error = exc
        finally:
            self._settled.set()

    async def start(self, timeout: float = 30.0) -> None:
        """From asyncio: start the thread and wait until `main` has started; raise what stopped it."""
        self.thread.start()
        settled = await asyncio.get_running_loop().run_in_executor(None, self._settled.wait, timeout)
        if self._error is not None:
            raise self._error
        if not settled:
            self.stop()
            raise TimeoutError(f"the trio side did not start within {timeout} s")

    def stop(self) -> None:
        if self._token is not None and self.thread.is_alive():
            try:
                self._token.run_sync_soon(self._scope.cancel)
            except trio.RunFinishedError:
                pass
        self.thread.join(10)


def root_cause(exc: BaseException) -> BaseException:
    """The single error inside trio's nested exception groups, so the message names the real cause."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
