"""Keeping one peer registered at the rendezvous, for the worker and the relay alike.

Register, refresh at half the TTL the service granted, re-register at once when the addresses change, back off
when the service fails, and unregister on the way out; after that, register no more.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import trio
from prometheus_client import Counter

from shared import tracing
from shared.backoff import Backoff
from shared.rendezvous_client import RendezvousClient, RendezvousError

log = logging.getLogger("worker.registrar")

UNREGISTER_TIMEOUT = 5.0
REJECTED_BACKOFF = 30.0  # a 4xx means our request is wrong: resending it at once would only hammer the service
POLL_INTERVAL = 0.25  # how soon a change of address is noticed


class Registrar:
    def __init__(self, client: RendezvousClient, namespace: str, ttl: int, current_addrs: Callable[[], list[str]],
                 outcomes: Counter | None = None):
        self.client = client
        self.namespace = namespace
        self.ttl = ttl
        self.current_addrs = current_addrs
        self.outcomes = outcomes
        self.registered_addrs: list[str] = []
        self._stopped = False

    async def keep_registered(self) -> None:
        backoff = Backoff()
        refresh_at = next_try = 0.0
        while not self._stopped:
            now = time.monotonic()
            addrs = self.current_addrs()
            due = now >= refresh_at or addrs != self.registered_addrs
            if due and now >= next_try and addrs:
                try:
                    with tracing.span("register", attributes={"namespace": self.namespace, "addrs": len(addrs)}):
                        answer = await self.client.register(self.namespace, addrs, self.ttl)
                except RendezvousError as exc:
                    delay = backoff.next_delay(exc.retry_after)
                    if not exc.retryable:
                        delay = max(delay, REJECTED_BACKOFF)
                    next_try = time.monotonic() + delay
                    self._count("error")
                    log.warning(f"registration failed: {exc}; retrying in {delay:.1f} s",
                                extra={"status": exc.status, "code": exc.code, "retry_in": round(delay, 2)})
                else:
                    if self._stopped:  # unregistered while this request was on its way: take it back
                        await self._unregister()
                        return
                    changed = addrs != self.registered_addrs
                    self.registered_addrs = addrs
                    refresh_at = time.monotonic() + answer.ttl / 2
                    backoff.reset()
                    self._count("ok")
                    log.log(logging.INFO if changed else logging.DEBUG, "registered",
                            extra={"namespace": self.namespace, "addrs": addrs, "ttl": answer.ttl})
            await trio.sleep(POLL_INTERVAL)

    async def unregister(self) -> None:
        """Leave the namespace now rather than when the TTL runs out; nothing registers us again afterwards."""
        self._stopped = True
        await self._unregister()

    async def _unregister(self) -> None:
        with trio.move_on_after(UNREGISTER_TIMEOUT) as scope:
            try:
                await self.client.unregister(self.namespace)
                log.info("unregistered", extra={"namespace": self.namespace})
            except RendezvousError as exc:
                log.warning("could not unregister; the registration will expire with its TTL",
                            extra={"error": str(exc)})
        if scope.cancelled_caught:
            log.warning("unregistering timed out; the registration will expire with its TTL")

    def _count(self, outcome: str) -> None:
        if self.outcomes is not None:
            self.outcomes.labels(outcome).inc()
