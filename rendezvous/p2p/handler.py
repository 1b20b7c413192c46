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
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
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


class ConnectionForms:
    """Which form of the protocol the peer on each connection reads: the spec's (a signed peer record in
    each registration) or py-libp2p's legacy one (a PeerInfo). A registration shows it; a client that only
    discovers shows nothing, so its agent version decides: py-libp2p's identify answers "py-libp2p/<version>"
    and its only rendezvous client reads PeerInfo, where it would misread a signed peer record as one and
    fail on made-up addresses. py-libp2p 0.8.1 keeps no agent version in its peerstore
    (libp2p/identity/update.py stores keys, addresses and protocols only), so the door asks once per
    connection."""

    IDENTIFY_TIMEOUT = 5.0  # a peer that does not answer identify in time is read as a spec client

    def __init__(self, host: IHost):
        self.host = host
        self._legacy: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # muxed connection -> bool

    def registered(self, conn, request: wire.Register) -> None:
        """What the peer registered in is the form it speaks, whatever its agent says."""
        self._legacy[conn] = request.legacy_peer is not None

    async def legacy(self, conn) -> bool:
        known = self._legacy.get(conn)
        if known is None:
            known = wire.is_legacy_agent(await self._agent_version(conn.peer_id))
            known = self._legacy.setdefault(conn, known)  # a registration that came meanwhile wins
        return known

    async def _agent_version(self, peer_id) -> str:
        stream = None
        try:
            with trio.move_on_after(self.IDENTIFY_TIMEOUT):
                stream = await self.host.new_stream(peer_id, [TProtocol(wire.IDENTIFY_PROTOCOL_ID)])
                return wire.identify_agent_version(
                    await FrameReader(stream, wire.MAX_IDENTIFY_BYTES).read_frame())
        except Exception as exc:  # no identify, or a malformed one: nothing says it is legacy
            log.debug("rendezvous: no agent version", extra={"peer": str(peer_id), "error": repr(exc)})
        finally:
            if stream is not None:
                await close_quietly(stream)
        return ""


class DoorHandler:
    def __init__(self, door: Door, portal: AsyncioPortal, host: IHost):
        self.door = door
        self.portal = portal
        self.forms = ConnectionForms(host)

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
                if isinstance(request, wire.Register):
                    self.forms.registered(conn, request)
                legacy = isinstance(request, wire.Discover) and await self.forms.legacy(conn)
                caller = Caller(peer, remote_ip(stream), legacy)
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
    door, portal = Door(registry), AsyncioPortal(asyncio.get_running_loop())
    thread = TrioThread(_serve_host, settings, identity, door, portal, on_failure=on_failure, name="libp2p-door")
    try:
        await thread.start()
    except Exception as exc:
        raise DoorError(f"the libp2p door cannot listen on {settings.libp2p_host}:{settings.libp2p_tcp_port} "
                        f"(LIBP2P_TCP_PORT): {exc}") from None
    return thread


async def _serve_host(settings: Settings, identity, door: Door, portal: AsyncioPortal, *,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
    plan = ListenPlan(settings.libp2p_host, settings.libp2p_tcp_port, None, None)
    host = build_host(identity, plan)
    async with running(host, plan):
        host.set_stream_handler(wire.PROTOCOL_ID, DoorHandler(door, portal, host))
        log.info("rendezvous protocol listening", extra={"protocol": wire.PROTOCOL_ID,
                                                         "multiaddrs": [str(a) for a in host.get_addrs()]})
        task_status.started()
        await trio.sleep_forever()
