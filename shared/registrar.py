"""Keeping one peer registered at the rendezvous, for the worker and the relay alike.

Register, refresh at half the TTL the service granted, re-register at once when the addresses change or when
the registration is found gone, back off when the service fails, and unregister on the way out; after that,
register no more.
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
# How soon a change of address is noticed. Polled, not awaited: py-libp2p 0.8.1 signals no change of its
# observed addresses (the relay's identify pushes land in its manager silently), so there is no event to wait on.
POLL_INTERVAL = 0.25
MAX_CHECK_INTERVAL = 15.0  # the longest a vanished registration goes unnoticed, whatever the TTL


def check_interval(ttl: int) -> float:
    """How often we look our registration up: a quarter of the TTL, at most MAX_CHECK_INTERVAL."""
    return min(ttl / 4, MAX_CHECK_INTERVAL)


class Registrar:
    """Keeps `client`'s peer registered in `namespace` until `unregister`.

    A registration can vanish while we believe it live: Memorystore STANDARD_HA fails over by promoting its
    replica, and asynchronous replication loses the last writes (our registration or its latest refresh), and
    an operator may delete it. So between refreshes we look it up every check_interval(ttl) (a quarter of the
    granted TTL, at most 15 s) and register again at once on a 404. Bound: once the service answers again, a
    vanished registration is back within check_interval(ttl) + POLL_INTERVAL + two round trips. A check that
    fails is retried with backoff capped at check_interval(ttl), so an outage does not stretch the bound.
    """

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
        backoff, check_backoff = Backoff(), Backoff(ceiling=MAX_CHECK_INTERVAL)
        refresh_at = next_try = check_at = 0.0
        granted_ttl = self.ttl
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
                    granted_ttl = answer.ttl
                    refresh_at = time.monotonic() + answer.ttl / 2
                    check_at = time.monotonic() + check_interval(granted_ttl)
                    backoff.reset()
                    self._count("ok")
                    log.log(logging.INFO if changed else logging.DEBUG, "registered",
                            extra={"namespace": self.namespace, "addrs": addrs, "ttl": answer.ttl})
            elif not due and self.registered_addrs and now >= check_at:
                interval = check_interval(granted_ttl)
                found = await self._look_up()
                if found is None:  # the service could not tell: ask again soon, but never later than usual
                    check_at = time.monotonic() + min(check_backoff.next_delay(), interval)
                else:
                    check_backoff.reset()
                    check_at = time.monotonic() + interval
                    if not found:  # gone: register in this very round, the service is answering
                        refresh_at = next_try = 0.0
                        backoff.reset()
            await trio.sleep(POLL_INTERVAL)

    async def _look_up(self) -> bool | None:
        """Whether the service still holds our registration; None when it could not say."""
        try:
            entry = await self.client.lookup(self.namespace)
        except RendezvousError as exc:
            log.debug("could not check our registration", extra={"status": exc.status, "error": str(exc)})
            return None
        if entry is None:
            self._count("vanished")
            log.warning("our registration vanished (a Redis failover, or an operator removed it); registering again",
                        extra={"namespace": self.namespace})
            return False
        return True

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
