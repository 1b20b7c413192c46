"""How every role's process starts and stops, in one place.

At start: secrets from Secret Manager into the environment (shared/secrets.py), the settings parsed once
(a bad value ends the process with status 2 and a message naming the variable and the flag), JSON logs
and tracing configured from those settings. A libp2p role then loads its identity, installs the py-libp2p
patches it needs, and runs its node until SIGTERM (Cloud Run sends it before stopping a container) or
SIGINT, when the node leaves (unregisters) before everything is cancelled.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, TypeVar

import trio

from shared import logs, tracing
from shared.bridge import root_cause
from shared.secrets import SecretError, fill_from_secrets
from shared.settings import ConfigError

if TYPE_CHECKING:
    from shared.identity import Identity

log = logging.getLogger("runner")
S = TypeVar("S")


def start(role: str, parse: Callable[[Sequence[str] | None], S], argv: Sequence[str] | None) -> S:
    """Secrets, settings, logs and tracing; exits with status 2 on a configuration error."""
    try:
        fill_from_secrets()
        settings = parse(argv)
    except (ConfigError, SecretError) as exc:
        print(f"{role}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(role, settings.observability)
    tracing.configure(role, settings.observability)
    return settings


class Node(Protocol):
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None: ...

    async def leave(self) -> None: ...


def run_node(role: str, parse: Callable[[Sequence[str] | None], S], make_node: Callable[[S, "Identity"], Node],
             argv: Sequence[str] | None) -> None:
    """Run a libp2p role until a signal stops it; a bad option or identity ends the process loudly."""
    settings = start(role, parse, argv)
    # py-libp2p (~1 s, ~80 MiB) loads only for the libp2p roles, not for a rendezvous without its door
    from shared.host import install_library_patches
    from shared.identity import IdentityError, load_identity

    try:
        identity = load_identity(settings.identity_key, settings.identity_file)
    except (IdentityError, OSError) as exc:
        print(f"{role}: identity: {exc}", file=sys.stderr)
        sys.exit(2)
    install_library_patches()
    try:
        trio.run(serve_until_signal, make_node(settings, identity))
    except Exception as exc:  # a node that cannot start, or dies, ends the process loudly and non-zero
        log.critical(f"{role} stopped: {root_cause(exc)}", exc_info=True)
        sys.exit(1)


async def serve_until_signal(node: Node) -> None:
    """Run `node`; on SIGTERM or SIGINT let it leave first, then cancel it. trio's receiver replaces the
    handlers, so this holds even when the process was started with SIGINT ignored (`cmd &`, nohup)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            async for signum in signals:
                log.info("stopping", extra={"signal": signal.Signals(signum).name})
                break
            await node.leave()
            nursery.cancel_scope.cancel()
