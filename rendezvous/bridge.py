"""The one crossing between trio (py-libp2p) and asyncio (the store): trio code awaits a coroutine that
runs on an asyncio loop in another thread, and is woken through its trio token when the result is in.

Two set-ups use it: the relay (trio in the main thread) starts an asyncio loop in a helper thread; the
rendezvous service (asyncio in the main thread) runs trio in a helper thread. Either way the store only
ever runs on its own loop. A crossing costs ~1-2 ms (shared notes).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
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


class AsyncioThread:
    """An asyncio event loop running in a daemon thread, for trio programs that need asyncio code."""

    def __init__(self, name: str = "asyncio-store"):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def __enter__(self) -> AsyncioPortal:
        self.thread.start()
        return AsyncioPortal(self.loop)

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def call(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        """From any other thread: run a coroutine on the loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class TrioThread:
    """A trio run in a daemon thread, for asyncio programs that host py-libp2p; stop() cancels it."""

    def __init__(self, main: Callable[..., Awaitable[Any]], *args: Any, name: str = "trio-libp2p"):
        self._main, self._args = main, args
        self._started = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        async def body():
            with trio.CancelScope() as scope:
                self._scope, self._token = scope, trio.lowlevel.current_trio_token()
                self._started.set()
                await self._main(*self._args)
        try:
            trio.run(body)
        except BaseException as exc:  # reported by whoever stops or checks the thread
            self.error = exc
        finally:
            self._started.set()

    def start(self) -> None:
        self.thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        if self._token is not None and self.thread.is_alive():
            try:
                self._token.run_sync_soon(self._scope.cancel)
            except trio.RunFinishedError:
                pass
        self.thread.join(10)
