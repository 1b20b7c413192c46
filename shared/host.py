"""The libp2p host every libp2p role runs (worker, relay, the rendezvous's libp2p door), built with safe
settings in one place, and the py-libp2p patches those roles install at start.

py-libp2p 0.8.1's defaults are wrong for us (see the shared notes): it accepts unencrypted connections,
dials every peer it hears of, and waits 250 ms per dial. Here: Noise is the only security protocol,
yamux the only muxer, the connection manager never dials on its own, and TCP and WebSocket listen on
separate ports (js-libp2p's dials are dropped when they share one).
"""
from __future__ import annotations

import contextvars
import dataclasses
import logging
import socket
import time
import weakref
from contextlib import asynccontextmanager
from typing import AsyncIterator

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from shared.identity import Identity

log = logging.getLogger("shared.host")


@dataclasses.dataclass(frozen=True)
class ListenPlan:
    host: str = "0.0.0.0"
    tcp_port: int | None = 4001
    ws_port: int | None = 4002
    quic_port: int | None = None

    def multiaddrs(self) -> list[multiaddr.Multiaddr]:
        family = "ip6" if ":" in self.host else "ip4"
        addrs = []
        if self.tcp_port is not None:
            addrs.append(multiaddr.Multiaddr(f"/{family}/{self.host}/tcp/{self.tcp_port}"))
        if self.ws_port is not None:
            addrs.append(multiaddr.Multiaddr(f"/{family}/{self.host}/tcp/{self.ws_port}/ws"))
        if self.quic_port is not None:
            addrs.append(multiaddr.Multiaddr(f"/{family}/{self.host}/udp/{self.quic_port}/quic-v1"))
        return addrs


def connection_config() -> ConnectionConfig:
    return ConnectionConfig(
        min_connections=0,  # never dial peers just because they are in the peerstore (see `running`)
        low_watermark=0,
        # A relayed connection and the direct one that replaces it must coexist until the relayed one
        # is closed; we dial single addresses ourselves, so the per-dial 250 ms head start never applies.
        max_connections_per_peer=2,
    )


def build_host(identity: Identity, plan: ListenPlan, announce: list[multiaddr.Multiaddr] | None = None) -> IHost:
    noise = NoiseTransport(identity.key_pair, noise_privkey=new_x25519_key_pair().private_key)
    return new_host(
        key_pair=identity.key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=plan.multiaddrs() or None,
        enable_websocket=True,  # so a worker without a WebSocket listener can still dial /ws addresses
        enable_quic=plan.quic_port is not None,
        connection_config=connection_config(),
        announce_addrs=announce or None,
    )


@asynccontextmanager
async def running(host: IHost, plan: ListenPlan) -> AsyncIterator[IHost]:
    """Run the host on the plan's addresses, with the library's auto-dialer stopped.

    Zero watermarks are not enough in 0.8.1: the auto-connector aims at the midpoint of the low and high
    watermarks, so it would still dial up to 150 peers from the peerstore; it has to be stopped.
    """
    async with host.run(plan.multiaddrs()):
        _check_listening(host, plan)
        await host.get_network().auto_connector.stop()
        yield host


def transport_of(addr: str) -> str:
    """quic, ws or tcp: the transport a (direct) multiaddr names."""
    return "quic" if "/quic" in addr else "ws" if "/ws" in addr else "tcp"


def _check_listening(host: IHost, plan: ListenPlan) -> None:
    """py-libp2p 0.8.1 only prints to stderr when a listener cannot start (a port taken, say) and runs on
    without it: a node that cannot listen where told must stop loudly instead."""
    listening = {transport_of(str(a)) for a in host.get_transport_addrs() if not is_relayed(a)}
    missing = [str(a) for a in plan.multiaddrs() if transport_of(str(a)) not in listening]
    if missing:
        raise OSError(f"cannot listen on {', '.join(missing)} (is the port taken?)")


def is_relayed(addr: multiaddr.Multiaddr | str) -> bool:
    return "/p2p-circuit" in str(addr)


def connections_to(host: IHost, peer_id) -> list:
    """The swarm's connections to a peer; py-libp2p keeps a list, or a single connection on some paths."""
    conns = host.get_network().connections.get(peer_id) or []
    return conns if isinstance(conns, list) else [conns]




def _plain_tcp_listen_addrs(host: IHost) -> list[tuple[int, str, int]]:
    # The library's version counts /tcp/P/ws as a TCP listener; with TCP and WebSocket on separate ports
    # it may then bind hole-punch dials to the WebSocket port and predict that port to the peer, which
    # can never work (a raw TCP dial to a WebSocket listener). Only plain TCP listeners qualify.
    from libp2p.relay.circuit_v2 import dcutr

    return [parsed for addr in host.get_addrs()
            if not is_relayed(addr) and "/ws" not in str(addr) and "/quic" not in str(addr)
            and (parsed := dcutr._tcp_ip_port(addr if isinstance(addr, multiaddr.Multiaddr)
                                               else multiaddr.Multiaddr(str(addr)))) is not None]


# QUIC client connections that share their QUIC listener's port (see _quic_dial_from_listen_port)
_SHARING_LISTEN_PORT: "weakref.WeakSet" = weakref.WeakSet()


def _quic_listener(transport, family: int):
    return next((listener for listener in transport._listeners if listener.is_listening() and listener._socket
                 and listener._socket.family == family), None)


async def _quic_dial_from_listen_port(self) -> None:
    # Replaces QUICConnection._initiate_connection, which binds every QUIC dial to a new ephemeral port (and,
    # given a socket, fails on an unset variable). A hole punch needs the dial to leave from the listen port:
    # the NAT mapping the peer's packets are aimed at (our observed QUIC address, which DCUtR sends) is the
    # listen socket's, and a port-restricted NAT drops what comes from any other. go-libp2p dials from its
    # listen socket too. Here a second UDP socket is bound to the listener's address with SO_REUSEPORT and
    # connected to the peer: Linux gives a connected socket exactly the datagrams of its 4-tuple and the
    # listener everything else, and both leave through one NAT mapping. Without a listener of the family, or
    # when another dial already holds this 4-tuple, the dial keeps the library's ephemeral port.
    family = socket.AF_INET6 if ":" in self._remote_addr[0] else socket.AF_INET
    listener = _quic_listener(self._transport, family)
    if listener is not None and any(c._remote_addr == self._remote_addr and c._socket is not None
                                    for c in _SHARING_LISTEN_PORT):
        listener = None
    sock = trio.socket.socket(family=family, type=socket.SOCK_DGRAM)
    try:
        if listener is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            await sock.bind(listener._socket.getsockname()[:2])
            await sock.connect(self._remote_addr)
        else:
            await sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    except BaseException:
        sock.close()
        raise
    self._socket, self._owns_socket, self._shared_listener = sock, True, listener
    if listener is not None:
        _SHARING_LISTEN_PORT.add(self)
    self._quic.connect(self._remote_addr, now=time.time())
    await self._transmit()


async def _quic_client_receiver(self) -> None:
    # Replaces QUICConnection._client_packet_receiver for the dials above. A packet on a socket that shares
    # the listen port, but for a connection ID this client does not own, is the listener's (the peer dialing
    # us from the port we dial, as when both sides of a DCUtR exchange start one): it is handed over. An
    # ICMP error, which a connected UDP socket reports on its next read, no longer ends the receiver: a hole
    # punch's first packets may meet one, and the handshake's own timer decides whether the dial failed.
    listener = getattr(self, "_shared_listener", None)
    while not self._closed and self._socket:
        try:
            data, addr = await self._socket.recvfrom(65536)
        except ConnectionRefusedError:
            continue
        except (trio.ClosedResourceError, OSError):
            return
        if listener is not None:
            header = listener.parse_quic_packet(data)
            if header is not None and header.destination_cid not in {c.cid for c in self._quic._host_cids}:
                await listener._process_packet(data, addr)
                continue
        try:
            self._quic.receive_datagram(data, addr, now=time.time())
            self._signal_activity()
            await self._process_quic_events_batched()
            await self._transmit()
        except Exception as exc:  # as the library's receiver: one bad packet does not end the connection
            if self._closed or not self._socket:
                return
            log.debug("QUIC client packet failed", extra={"error": repr(exc)})


class _QuicRemoteAddress(tuple):
    """A QUIC stream's remote (ip, port): a tuple that remembers it is UDP."""


def _quic_stream_remote_address(self) -> tuple[str, int]:
    return _QuicRemoteAddress(self._remote_addr)


def _observed_multiaddr(remote_address):
    # Replaces identify's _remote_address_to_multiaddr, which writes /tcp/ whatever the transport: a peer told
    # /ip4/X/tcp/P for its QUIC connection finds no local listener to match and drops the observation, so a
    # QUIC-only node behind a NAT never learns its public address (which DCUtR needs).
    if remote_address is None:
        return None
    host, port = remote_address
    host = host[7:] if host.lower().startswith("::ffff:") else host
    transport = "udp" if isinstance(remote_address, _QuicRemoteAddress) else "tcp"
    suffix = "/quic-v1" if transport == "udp" else ""
    return multiaddr.Multiaddr(f"/{'ip6' if ':' in host else 'ip4'}/{host}/{transport}/{port}{suffix}")


def _closing_with_goodbye(library_close):
    # Wraps QUICConnection.close. py-libp2p closes its connections while being cancelled (the swarm's own
    # shutdown does), and its CONNECTION_CLOSE goes out from a cancelled scope, so it is never sent: the peer
    # holds the connection until the 10 min idle timeout, and a relay the reservation made over it (8 per
    # IP: a NAT-lab bench ran out after 8 QUIC runs). Here the frame is sent first, shielded: one datagram.
    async def close(self) -> None:
        if not self._closed and self._socket is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(0.1):
                try:
                    self._quic.close()
                    await self._transmit()
                except Exception as exc:  # a broken connection has nothing left to say
                    log.debug("QUIC close frame not sent", extra={"error": repr(exc)})
        await library_close(self)
    close.says_goodbye = True
    return close


# py-libp2p 0.8.1 holds one of its max_connections - min_connections (300) inbound slots for every inbound
# connection until the whole swarm stops: the handler that took the slot waits for the swarm, not for its
# connection. So after 300 inbound connections since start (closed or not) every new one was reset, silently:
# a relay refused every new peer (found by the interop benchmark, run 301). Here the handler's wait ends
# when its own connection closes, which frees the slot (and the parked task).
_INBOUND = contextvars.ContextVar("holepunch_inbound_connection", default=None)


class _Inbound:
    def __init__(self) -> None:
        self.conn = None
        self.added = trio.Event()


def _add_conn_telling_inbound(add_conn):
    async def add(self, muxed_conn, direction: str = "unknown"):
        swarm_conn = await add_conn(self, muxed_conn, direction)
        waiting = _INBOUND.get()  # set by the inbound handler of this very task, if it is one
        if waiting is not None and direction == "inbound" and waiting.conn is None:
            waiting.conn = swarm_conn
            waiting.added.set()
        return swarm_conn
    return add


def _inbound_until_closed(handle):
    async def handle_inbound(self, read_write_closer, maddr, failure_event) -> None:
        waiting = _Inbound()
        token = _INBOUND.set(waiting)
        try:
            async with trio.open_nursery() as nursery:
                async def until_closed() -> None:
                    await waiting.added.wait()
                    await waiting.conn.event_closed.wait()
                    nursery.cancel_scope.cancel()  # the library's handler now waits for the swarm: end it
                nursery.start_soon(until_closed)
                await handle(self, read_write_closer, maddr, failure_event)
                nursery.cancel_scope.cancel()  # it returned by itself (refused, failed, the swarm stopped)
        finally:
            _INBOUND.reset(token)
    handle_inbound.frees_its_slot = True
    return handle_inbound


def _pipelined_select(library_select):
    # Wraps MultiselectClient.select_one_of, which writes the multistream header, waits for the peer's, and
    # only then proposes a protocol: two round trips for every stream and every upgrade. Here the header and
    # the first proposal leave together (what go-libp2p and rust-libp2p dialers do, and any listener reads
    # them in turn), so a stream opens in one round trip. Over a relay that is ~100 ms a stream in the NAT
    # lab: DCUtR's stream, the relay's hop and stop streams, and each relayed upgrade. A refusal ("na") falls
    # back to the library's one-at-a-time proposals for the rest.
    from libp2p.protocol_muxer import multiselect_client as library
    from libp2p.protocol_muxer.exceptions import (MultiselectClientError, MultiselectCommunicatorError,
                                                  ProtocolNotSupportedError)
    from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
    from libp2p.utils import encode_delim

    async def select_one_of(self, protocols, communicator, negotiate_timeout=library.DEFAULT_NEGOTIATE_TIMEOUT):
        if not protocols or type(communicator) is not MultiselectCommunicator:
            return await library_select(self, protocols, communicator, negotiate_timeout)
        first = protocols[0]
        with trio.move_on_after(negotiate_timeout):
            try:
                await communicator.read_writer.write(encode_delim(library.MULTISELECT_PROTOCOL_ID.encode())
                                                     + encode_delim((first or "").encode()))
            except Exception as error:  # what the library's communicator wraps, and a stream already gone
                raise MultiselectClientError(f"handshake write failed: {error}") from error
            try:
                header = await communicator.read()
                if not library.is_valid_handshake(header):
                    raise MultiselectClientError(f"multiselect protocol ID mismatch: got {header!r}")
                response = await communicator.read()
            except MultiselectCommunicatorError as error:
                raise MultiselectClientError(f"negotiation read failed: {error}, protocol={first}") from error
            if response == (first or ""):
                return first
            if response != library.PROTOCOL_NOT_FOUND_MSG:
                raise MultiselectClientError(f"unrecognized response: {response!r}, protocol={first}")
            for protocol in protocols[1:]:
                try:
                    return await self.try_select(communicator, protocol)
                except ProtocolNotSupportedError:
                    continue
            raise MultiselectClientError(f"protocols not supported: tried {list(protocols)}")
        raise MultiselectClientError(f"response timed out after {negotiate_timeout}s, protocols tried: "
                                     f"{list(protocols)}")
    select_one_of.pipelined = True
    return select_one_of


def install_library_patches() -> None:
    """Mend py-libp2p 0.8.1 (pinned) where it breaks us; called once at start by the runner (and by tests
    that build nodes in-process), never on import."""
    from libp2p.identity.identify import identify
    from libp2p.relay.circuit_v2 import dcutr
    from libp2p.transport.quic.connection import QUICConnection
    from libp2p.transport.quic.stream import QUICStream

    from libp2p.network.swarm import Swarm
    from libp2p.protocol_muxer.multiselect_client import MultiselectClient

    if not getattr(Swarm._do_handle_inbound_connection, "frees_its_slot", False):
        Swarm._do_handle_inbound_connection = _inbound_until_closed(Swarm._do_handle_inbound_connection)
        Swarm.add_conn = _add_conn_telling_inbound(Swarm.add_conn)
    if not getattr(MultiselectClient.select_one_of, "pipelined", False):
        MultiselectClient.select_one_of = _pipelined_select(MultiselectClient.select_one_of)
    dcutr._local_tcp_listen_addrs = _plain_tcp_listen_addrs
    QUICStream.get_remote_address = _quic_stream_remote_address
    identify._remote_address_to_multiaddr = _observed_multiaddr
    QUICConnection._initiate_connection = _quic_dial_from_listen_port
    QUICConnection._client_packet_receiver = _quic_client_receiver
    if not getattr(QUICConnection.close, "says_goodbye", False):
        QUICConnection.close = _closing_with_goodbye(QUICConnection.close)


class ConnectionWatch(INotifee):
    """Wakes waiters whenever the swarm opens or closes a connection, so code waits on an event instead of
    polling the connection table."""

    def __init__(self, host: IHost):
        self.host = host
        self._changed = trio.Event()
        host.get_network().register_notifee(self)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._notify()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._notify()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr) -> None:
        pass

    async def wait_until(self, predicate, timeout: float) -> bool:
        """Wait until `predicate()` holds, for at most `timeout` seconds; returns whether it held."""
        with trio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
        return bool(predicate())
