"""The trio side of the libp2p door: a stream handler for /rendezvous/1.0.0 that reads length-prefixed
frames (capped before the body is read), decodes them, and hands each request to `door.Door` on the
store's asyncio loop. Many requests may follow one another on a stream. Whatever a peer sends, only its
own stream ends; the handler never raises into the host.
"""
from __future__ import annotations

import asyncio
import logging
import weakref

import trio

from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from rendezvous import wire
from rendezvous.bridge import AsyncioPortal, TrioThread
from rendezvous.cookie import CookieCodec
from rendezvous.door import Caller, Door
from rendezvous.frames import FrameError, FrameReader, close_quietly, encode_frame
from rendezvous.settings import Settings
from rendezvous.store import Store, open_store

log = logging.getLogger("rendezvous.p2p")


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


async def open_door(portal: AsyncioPortal, settings: Settings) -> tuple[DoorHandler, Store]:
    """From trio: the store on the portal's loop, and the stream handler serving it."""
    store = await portal.run(open_store, settings)
    return DoorHandler(Door(store, CookieCodec(settings.cookie_key), settings), portal), store


def start_door_thread(settings: Settings, store: Store, cookies: CookieCodec) -> TrioThread:
    """From the rendezvous service's asyncio loop: serve the door from a libp2p host in a trio thread,
    listening on LIBP2P_TCP_PORT, with the service's own store."""
    from worker.identity import load_identity

    identity = load_identity(settings.libp2p_identity_key, settings.libp2p_identity_file)  # fail at start
    handler = DoorHandler(Door(store, cookies, settings), AsyncioPortal(asyncio.get_running_loop()))
    thread = TrioThread(_serve_host, settings, identity, handler)
    thread.start()
    return thread


async def _serve_host(settings: Settings, identity, handler: DoorHandler) -> None:
    from worker.host import ListenPlan, build_host, running

    plan = ListenPlan(settings.libp2p_host, settings.libp2p_tcp_port, None, None)
    host = build_host(identity, plan)
    async with running(host, plan):
        host.set_stream_handler(wire.PROTOCOL_ID, handler)
        log.info("rendezvous protocol listening", extra={"protocol": wire.PROTOCOL_ID,
                                                         "multiaddrs": [str(a) for a in host.get_addrs()]})
        await trio.sleep_forever()
