"""The trio side of the libp2p door: a libp2p host in a thread of its own (shared/bridge.py), with a stream
handler for /rendezvous/1.0.0 that reads length-prefixed frames (capped before the body is read), decodes
them, and hands each request to `door.Door` on the service's asyncio loop. Many requests may follow one
another on a stream. Whatever a peer sends, only its own stream ends; the handler never raises into the
host.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Callable

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from rendezvous.p2p import wire
from rendezvous.p2p.door import Caller, Door
from rendezvous.registry import Registry
from rendezvous.settings import Settings
from shared.bridge import AsyncioPortal, TrioThread
from shared.frames import FrameError, FrameReader, close_quietly, encode_frame
from shared.host import ListenPlan, build_host, install_library_patches, running
from shared.identity import IdentityError, load_identity

log = logging.getLogger("rendezvous.p2p")


class DoorError(RuntimeError):
    """The libp2p door could not start; the message names the port."""


class DoorHandler:
    def __init__(self, door: Door, portal: AsyncioPortal):
        self.door = door
        self.portal = portal
        self._legacy_connections: weakref.WeakSet = weakref.WeakSet()

    async def __call__(self, stream: INetStream) -> None:
        conn = stream.muxed_conn
        peer = str(conn.peer_id)
        reader = FrameReader(stream, wire.MAX_FRAME_BYTES)
        try:
            while True:
                try:
                    request = wire.decode_request(await reader.read_frame())
                except wire.WireError as exc:
                    log.info("rendezvous: malformed request", extra={"peer": peer, "error": exc.text})
                    reply = wire.error_reply(exc)
                    if reply is None:
                        return
                    await stream.write(encode_frame(reply))
                    continue
                if isinstance(request, wire.Register) and request.legacy_peer is not None:
                    self._legacy_connections.add(conn)
                caller = Caller(peer, remote_ip(stream), conn in self._legacy_connections)
                reply = await self.portal.run(self.door.handle, caller, request)
                if reply is not None:
                    await stream.write(encode_frame(reply))
        except StreamEOF:
            pass
        except FrameError as exc:
            log.info("rendezvous: closing a stream that sent a bad frame", extra={"peer": peer, "error": str(exc)})
        except Exception as exc:  # the peer reset the stream, or the store failed beyond its own statuses
            log.warning("rendezvous: stream ended", extra={"peer": peer, "error": repr(exc)})
        finally:
            await close_quietly(stream)


def remote_ip(stream: INetStream) -> str:
    try:
        address = stream.muxed_conn.get_remote_address()  # (host, port) on TCP
        if address:
            return str(address[0])
    except Exception:
        pass
    return "unknown"


async def start_door(settings: Settings, registry: Registry,
                     on_failure: Callable[[BaseException], None]) -> TrioThread:
    """From the service's asyncio loop: serve the door from a libp2p host in a trio thread on
    LIBP2P_TCP_PORT. Returns once the host listens; raises DoorError when it cannot. A failure later goes
    to `on_failure` (called in the door's thread)."""
    try:
        identity = load_identity(settings.libp2p_identity_key, settings.libp2p_identity_file)
    except (IdentityError, OSError) as exc:
        raise DoorError(f"LIBP2P_IDENTITY_KEY / LIBP2P_IDENTITY_FILE: {exc}") from None
    install_library_patches()
    handler = DoorHandler(Door(registry), AsyncioPortal(asyncio.get_running_loop()))
    thread = TrioThread(_serve_host, settings, identity, handler, on_failure=on_failure, name="libp2p-door")
    try:
        await thread.start()
    except Exception as exc:
        raise DoorError(f"the libp2p door cannot listen on {settings.libp2p_host}:{settings.libp2p_tcp_port} "
                        f"(LIBP2P_TCP_PORT): {exc}") from None
    return thread


async def _serve_host(settings: Settings, identity, handler: DoorHandler, *,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
    plan = ListenPlan(settings.libp2p_host, settings.libp2p_tcp_port, None, None)
    host = build_host(identity, plan)
    async with running(host, plan):
        host.set_stream_handler(wire.PROTOCOL_ID, handler)
        log.info("rendezvous protocol listening", extra={"protocol": wire.PROTOCOL_ID,
                                                         "multiaddrs": [str(a) for a in host.get_addrs()]})
        task_status.started()
        await trio.sleep_forever()
