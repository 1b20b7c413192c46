// The js-libp2p interop peer (issue 15): MODE listener | dialer | relay, configured by environment variables
// only and reporting one JSON object a line on stdout, as /tmp/interop-contract.md (the README's interop
// section) lays down. Logs go to stderr (DEBUG, js-libp2p's `debug` namespaces; a DCUtR/relay default).
//
// js-libp2p in Node cannot hole-punch TCP out of the box, for two reasons this file works around:
//  1. Node cannot dial from a listening port (no SO_REUSEPORT for client sockets), so every dial comes from a
//     fresh ephemeral port and the address a relay observes is useless for a punch; js-libp2p's identify
//     therefore drops every observed TCP address (js-libp2p#2620). Here every outgoing TCP dial binds one
//     fixed local port (DIAL_PORT, chosen at start): the relay observes the NAT's mapping of that port, and
//     the punch leaves from the same port, so it reuses that mapping. Both sockets set SO_REUSEADDR (libuv
//     does on bind), which Linux allows as long as no socket listens on the port, so it is not the
//     listening port.
//  2. DCUtR's Connect message carries only verified addresses, and js-libp2p treats RFC 5737's
//     documentation networks (the NAT lab's "internet", 198.51.100.0/24) as private: it neither keeps such an
//     observed address nor dials one a peer sends. PUBLIC_NETWORKS (comma-separated CIDRs, default those
//     networks, as our worker's option of that name) lists what counts as public besides the global
//     unicast space. The addresses peers observe for us there go into our DCUtR Connect messages only, not
//     into identify: advertised there, unverified, they make a go-libp2p peer that receives our relayed
//     connection first try a plain direct dial to them, which a NAT drops, and start DCUtR only when that
//     dial has timed out (5 s, seen in the NAT lab). The addresses a peer's Connect carries are filtered by
//     PUBLIC_NETWORKS too.
//
// Beyond the contract, for checking a relay's limits (tests/test_interop_js.py): a dialer given
// RELAY_PROBE_BYTES and/or RELAY_PROBE_SECONDS runs without DCUtR and, once its relayed connection is open,
// echoes that many bytes over /ipfs/ping/1.0.0 on it (1 KiB at a time), then pings it every 200 ms for that
// many seconds, and prints {"event":"relayed_probe","echoed_bytes":N,"held_ms":T,"cut":bool,"error":"..."}
// (cut: the stream or connection ended, or stalled 5 s, before the probe was done) and exits 0.
import { writeSync } from 'node:fs'
import net from 'node:net'

if (typeof Promise.withResolvers !== 'function') { // js-libp2p 3 expects Node 22+; Node 20 lacks this
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
// `debug` reads DEBUG when it is first imported, so this precedes the (dynamic) libp2p imports
process.env.DEBUG ??= 'libp2p:dcutr*,libp2p:circuit-relay:transport:listener*,libp2p:circuit-relay:transport:reservation-store*'

const started = performance.now()
const env = process.env
const MODE = env.MODE ?? ''
const TRANSPORT = env.TRANSPORT ?? 'tcp'
const LISTEN_IP = env.LISTEN_IP || '0.0.0.0'
const LISTEN_PORT = Number(env.LISTEN_PORT || 0)
const TIMEOUT_MS = Number(env.TIMEOUT_S || 30) * 1000
const DOCUMENTATION_NETWORKS = '192.0.2.0/24,198.51.100.0/24,203.0.113.0/24'
const PING = '/ipfs/ping/1.0.0'
const PROBE_BYTES = Number(env.RELAY_PROBE_BYTES || 0)
const PROBE_SECONDS = Number(env.RELAY_PROBE_SECONDS || 0)
const PROBING = MODE === 'dialer' && (PROBE_BYTES > 0 || PROBE_SECONDS > 0)

function emit (event) {
  writeSync(1, JSON.stringify(event) + '\n') // synchronous: a line is out before the process can die
}
function log (...args) {
  console.error(`[${((performance.now() - started) / 1000).toFixed(3)}s]`, ...args)
}
function fail (code, message) {
  log(message)
  process.exit(code)
}

if (!['listener', 'dialer', 'relay'].includes(MODE)) fail(2, `MODE must be listener, dialer or relay, not "${MODE}"`)
if (TRANSPORT === 'quic') {
  emit({ event: 'result', path: 'none', error: 'js-libp2p has no QUIC in Node' })
  process.exit(3)
}
if (TRANSPORT !== 'tcp') fail(2, `TRANSPORT must be tcp or quic, not "${TRANSPORT}"`)
if (!/^[0-9a-fA-F]{64}$/.test(env.SEED ?? '')) fail(2, 'SEED must be 64 hex characters (an Ed25519 seed)')
if (MODE !== 'relay' && !env.RELAY_ADDR) fail(2, 'RELAY_ADDR is required')
if (MODE === 'dialer' && !env.REMOTE_PEER) fail(2, 'REMOTE_PEER is required')

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { dcutr } = await import('@libp2p/dcutr')
const { circuitRelayTransport, circuitRelayServer } = await import('@libp2p/circuit-relay-v2')
const { generateKeyPairFromSeed } = await import('@libp2p/crypto/keys')
const { multiaddr } = await import('@multiformats/multiaddr')

// --- what counts as public ---------------------------------------------------------------------------------

function ipv4ToInt (ip) {
  return ip.split('.').reduce((n, octet) => n * 256 + Number(octet), 0)
}
const publicNetworks = (env.PUBLIC_NETWORKS ?? DOCUMENTATION_NETWORKS).split(',').map(s => s.trim()).filter(Boolean)
  .map(cidr => {
    const [ip, bits = '32'] = cidr.split('/')
    if (!net.isIPv4(ip)) fail(2, `PUBLIC_NETWORKS: only IPv4 networks are supported, not "${cidr}"`)
    const size = 2 ** (32 - Number(bits))
    const base = Math.floor(ipv4ToInt(ip) / size) * size
    return { base, size }
  })
const { isPrivate } = await import('@libp2p/utils')

/** An address worth punching to: plain TCP over IPv4/IPv6 (no relay hop) on a public or listed network. */
function isPunchable (ma) {
  const parts = ma.getComponents()
  if (parts.some(c => c.name === 'p2p-circuit')) return false
  const [ip, port] = parts
  if (ip == null || port?.name !== 'tcp' || !['ip4', 'ip6'].includes(ip.name)) return false
  if (ip.name === 'ip4') {
    const n = ipv4ToInt(ip.value)
    if (publicNetworks.some(({ base, size }) => n >= base && n < base + size)) return true
  }
  return !isPrivate(ma)
}

// --- the node ----------------------------------------------------------------------------------------------

/** A free TCP port on LISTEN_IP, for DIAL_PORT (see the top of the file). */
async function freePort () {
  const server = net.createServer()
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, LISTEN_IP, resolve))
  const { port } = server.address()
  await new Promise(resolve => server.close(resolve))
  return port
}

const privateKey = await generateKeyPairFromSeed('Ed25519', Buffer.from(env.SEED, 'hex'))
const listenAddr = `/ip4/${LISTEN_IP}/tcp/${LISTEN_PORT}`
const services = { identify: identify(), ping: ping() }
let tcpInit = {}
if (MODE === 'relay') {
  services.relay = circuitRelayServer() // the implementation's default limits
} else {
  if (!PROBING) services.dcutr = dcutr()
  const dialPort = Number(env.DIAL_PORT || 0) || await freePort()
  tcpInit = { dialOpts: { localAddress: LISTEN_IP, localPort: dialPort } }
  log(`outgoing TCP dials leave from port ${dialPort}`)
}
const node = await createLibp2p({
  privateKey,
  addresses: { listen: [listenAddr] },
  transports: [tcp(tcpInit), ...(MODE === 'relay' ? [] : [circuitRelayTransport()])],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services
})

if (services.dcutr != null) {
  // DCUtR dials only the addresses a peer sends that count as public here (2. above)
  node.services.dcutr.getDialableMultiaddrs = function (addrs) {
    const out = []
    for (const bytes of addrs) {
      try {
        const ma = multiaddr(bytes)
        if (isPunchable(ma)) out.push(ma)
      } catch {}
    }
    log('DCUtR: punchable addresses of the peer:', out.map(String))
    return out
  }
  // In a TCP simultaneous open both sockets are outgoing, so each side must be told its role: DCUtR asks for
  // B (the peer that received the relayed connection) to be the server (`initiator: false`, the spec's
  // roles, which go-libp2p 0.41+ follows too). js-libp2p loses that twice: its dial queue drops the option
  // on its way to the transport (both sides then start Noise as initiators: "handshake stage 1 validation
  // fail: message is not long enough", seen in the NAT lab), and with the option kept, yamux still takes
  // its role from the TCP socket's direction, "outbound" ("Both endpoints are clients" on the first stream).
  // So B's punch dials go to the TCP transport directly, with the socket marked inbound before the upgrade;
  // the connection is still announced and tracked as any other.
  const dcutrService = node.services.dcutr
  const connectionManager = dcutrService.connectionManager
  const transports = node.components.transportManager
  const asServer = Object.create(node.components.upgrader, {
    upgradeOutbound: {
      value: (maConn, opts) => {
        maConn.direction = 'inbound'
        return node.components.upgrader.upgradeOutbound(maConn, { ...opts, initiator: false })
      }
    }
  })
  dcutrService.connectionManager = Object.create(connectionManager, {
    openConnection: {
      value: async (target, options = {}) => {
        if (options.initiator !== false) return connectionManager.openConnection(target, options)
        const addrs = Array.isArray(target) ? target : [target]
        return Promise.any(addrs.map(ma => transports.dialTransportForMultiaddr(ma).dial(ma, { ...options, upgrader: asServer })))
          .catch(err => { throw err.errors?.[0] ?? err })
      }
    }
  })
}
if (services.dcutr != null) {
  // what peers have observed for us, newest last, for DCUtR's Connect only (2. above)
  const observedAddrs = []
  node.addEventListener('peer:identify', ({ detail }) => {
    const observed = detail.observedAddr
    if (observed == null || !isPunchable(observed)) return
    // with /p2p/<us>, as getAddresses() gives ours: js-libp2p refuses to dial a list that mixes addresses
    // with and without a peer ID
    const text = `${observed.decapsulateCode(421)}/p2p/${node.peerId}`
    if (observedAddrs.some(ma => ma.toString() === text)) return
    log(`identify: ${detail.peerId} sees us at ${text}; offered to DCUtR`)
    observedAddrs.push(multiaddr(text))
    if (observedAddrs.length > 8) observedAddrs.shift()
  })
  const addressManager = node.services.dcutr.addressManager
  node.services.dcutr.addressManager = Object.create(addressManager, {
    getAddresses: { value: () => [...addressManager.getAddresses(), ...observedAddrs] }
  })
}

const stop = async () => {
  setTimeout(() => process.exit(0), 5000).unref() // a stop that hangs on a dying connection ends anyway
  try { await node.stop() } catch {}
  process.exit(0)
}
process.once('SIGTERM', stop)
process.once('SIGINT', stop)

emit({ event: 'listening', peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })
log(`${MODE} ${node.peerId} listening on`, node.getMultiaddrs().map(String))

const isCircuit = ma => ma.toString().includes('/p2p-circuit')
const peerIdOf = ma => ma.getComponents().findLast(c => c.name === 'p2p')?.value

/** Pings over this very connection (ping's service would take whichever connection it finds): two rounds
 * on one stream, reporting the second, since the first also carries the stream's protocol negotiation. */
async function pingOver (connection, timeoutMs = 10_000) {
  const signal = AbortSignal.timeout(timeoutMs)
  const stream = await connection.newStream(PING, { signal })
  let pending = null // { data, got, length, resolve }
  stream.addEventListener('message', evt => {
    const chunk = evt.data.subarray()
    pending.got.push(chunk)
    pending.length += chunk.byteLength
    if (pending.length >= pending.data.byteLength) pending.resolve()
  })
  const failed = Promise.withResolvers()
  stream.addEventListener('close', () => failed.reject(new Error('ping stream closed before the echo')))
  signal.addEventListener('abort', () => failed.reject(new Error('ping timed out')))
  let rtt
  for (let round = 0; round < 2; round++) {
    const echoed = Promise.withResolvers()
    pending = { data: crypto.getRandomValues(new Uint8Array(32)), got: [], length: 0, resolve: echoed.resolve }
    const start = performance.now()
    stream.send(pending.data)
    await Promise.race([echoed.promise, failed.promise])
    rtt = performance.now() - start
    if (!Buffer.concat(pending.got).equals(Buffer.from(pending.data))) throw new Error('ping echo differs from what was sent')
  }
  await stream.close().catch(() => {})
  return rtt
}

/** RELAY_PROBE_*: echo bytes over the relayed connection, then hold it, until done or cut (see the top). */
async function relayedProbe (connection) {
  const start = performance.now()
  let echoed = 0
  let expected = 0
  let waiting = null
  const ended = Promise.withResolvers()
  ended.promise.catch(() => {})
  try {
    const stream = await connection.newStream(PING, { runOnLimitedConnection: true, signal: AbortSignal.timeout(10_000) })
    stream.addEventListener('message', evt => {
      echoed += evt.data.byteLength
      if (waiting != null && echoed >= expected) waiting.resolve()
    })
    stream.addEventListener('close', evt => ended.reject(new Error(`stream ended: ${evt.error?.message ?? 'closed'}`)))
    connection.addEventListener('close', () => ended.reject(new Error('relayed connection closed')))
    const exchange = async (n) => {
      waiting = Promise.withResolvers()
      expected += n
      stream.send(crypto.getRandomValues(new Uint8Array(n)))
      const stalled = new Promise((resolve, reject) => setTimeout(() => reject(new Error('no echo for 5 s')), 5000).unref())
      await Promise.race([waiting.promise, ended.promise, stalled])
    }
    while (expected < PROBE_BYTES) await exchange(Math.min(1024, Math.ceil((PROBE_BYTES - expected) / 32) * 32))
    const holdUntil = performance.now() + PROBE_SECONDS * 1000
    while (performance.now() < holdUntil) {
      await exchange(32)
      await new Promise(resolve => setTimeout(resolve, 200))
    }
    await stream.close().catch(() => {})
    emit({ event: 'relayed_probe', echoed_bytes: echoed, held_ms: Math.round(performance.now() - start), cut: false })
  } catch (err) {
    emit({ event: 'relayed_probe', echoed_bytes: echoed, held_ms: Math.round(performance.now() - start), cut: true,
      error: err.message })
  }
}

if (MODE === 'listener') {
  const relayPeer = peerIdOf(multiaddr(env.RELAY_ADDR))
  node.addEventListener('connection:open', ({ detail: conn }) => {
    if (isCircuit(conn.remoteAddr) || conn.remotePeer.toString() === relayPeer) return
    emit({ event: 'direct', peer: conn.remotePeer.toString(), remote_addr: conn.remoteAddr.toString() })
  })
  // the reservation: listening on <relay>/p2p-circuit makes it and keeps it refreshed; retried until it holds
  const circuit = multiaddr(`${env.RELAY_ADDR}/p2p-circuit`)
  for (;;) {
    try {
      await node.components.transportManager.listen([circuit])
      break
    } catch (err) {
      log(`reservation at ${env.RELAY_ADDR} failed, retrying in 1 s: ${err.message}`)
      await new Promise(resolve => setTimeout(resolve, 1000))
    }
  }
  log('reserved; addresses', node.getMultiaddrs().map(String))
  emit({ event: 'reserved' })
} else if (MODE === 'dialer') {
  const remote = env.REMOTE_PEER
  let relayed = null // time the relayed connection opened
  const deadline = setTimeout(() => {
    emit({ event: 'result', path: relayed == null ? 'none' : 'relayed',
      error: relayed == null ? `no relayed connection within ${TIMEOUT_MS / 1000} s`
        : `no direct connection within ${TIMEOUT_MS / 1000} s` })
    process.exit(1)
  }, TIMEOUT_MS)
  const direct = Promise.withResolvers()
  const onOpen = conn => {
    if (conn.remotePeer.toString() === remote && !isCircuit(conn.remoteAddr) && conn.status === 'open') {
      direct.resolve({ conn, at: performance.now() })
    }
  }
  node.addEventListener('connection:open', ({ detail }) => onOpen(detail))
  try {
    // the relay first, and its identify, so the Connect we send carries the address it observed
    const relayAddr = multiaddr(env.RELAY_ADDR)
    const identified = new Promise(resolve => node.addEventListener('peer:identify', ({ detail }) => {
      if (detail.peerId.toString() === peerIdOf(relayAddr)) resolve()
    }))
    await node.dial(relayAddr, { signal: AbortSignal.timeout(TIMEOUT_MS) })
    await Promise.race([identified, new Promise(resolve => setTimeout(resolve, 5000))])
    const t0 = performance.now()
    const conn = await node.dial(multiaddr(`${env.RELAY_ADDR}/p2p-circuit/p2p/${remote}`),
      { signal: AbortSignal.timeout(TIMEOUT_MS) })
    relayed = performance.now()
    emit({ event: 'relayed', ms: Math.round(relayed - t0) })
    log(`relayed connection ${conn.remoteAddr}`)
    if (PROBING) {
      clearTimeout(deadline)
      await relayedProbe(conn)
      await node.stop().catch(() => {})
      process.exit(0)
    }
    for (const existing of node.getConnections()) onOpen(existing)
  } catch (err) {
    emit({ event: 'result', path: 'none', error: `relayed dial failed: ${err.message}` })
    process.exit(1)
  }
  // a direct connection can still fail its first ping while DCUtR settles: then wait for another
  for (;;) {
    const { conn, at } = await direct.promise
    try {
      const rtt = await pingOver(conn)
      clearTimeout(deadline)
      emit({ event: 'result', path: 'direct', time_to_direct_ms: Math.round(Math.max(0, at - relayed)),
        rtt_ms: Math.round(rtt * 10) / 10, remote_addr: conn.remoteAddr.toString() })
      await node.stop().catch(() => {})
      process.exit(0)
    } catch (err) {
      log(`ping over ${conn.remoteAddr} failed: ${err.message}`)
      Object.assign(direct, Promise.withResolvers())
      for (const existing of node.getConnections(conn.remotePeer)) {
        if (existing !== conn) onOpen(existing)
      }
    }
  }
}
