// The demo page: host (reserve at the relay, register at the rendezvous) or join (discover, dial through
// the relay, upgrade to direct WebRTC), then chat. Everything the page needs to know about the relay comes
// from the rendezvous (/demo/config); nothing is hard-coded.
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { RecordEnvelope } from '@libp2p/peer-record'
import { ping } from '@libp2p/ping'
import { isPrivate, lpStream } from '@libp2p/utils'
import { webRTC } from '@libp2p/webrtc'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const CHAT = '/holepunch-services/chat/1.0.0'
const ECHO = '/holepunch-services/echo/1.0.0'
const DOMAIN = 'holepunch-services:rendezvous'
const REGISTER_TYPE = new TextEncoder().encode('/holepunch-services/register/1')
const UNREGISTER_TYPE = new TextEncoder().encode('/holepunch-services/unregister/1')
const TTL = 120
const KEY_STORAGE = 'holepunch-services-demo-key'
const $ = (id) => document.getElementById(id)

let node, config, chat
const state = { refreshTimer: null, key: null }

function show (id, text, cls) { $(id).textContent = text; if (cls !== undefined) $(id).className = cls }
function say (text, who = 'sys') {
  const line = document.createElement('div')
  line.className = who
  line.textContent = who === 'sys' ? text : `${who === 'me' ? 'you' : 'peer'}: ${text}`
  $('log').append(line)
  $('log').scrollTop = $('log').scrollHeight
}
function fail (text) { $('error').textContent = text; say(text) }

async function identity () {
  const stored = localStorage.getItem(KEY_STORAGE)
  if (stored) return privateKeyFromProtobuf(Uint8Array.from(atob(stored), (c) => c.charCodeAt(0)))
  const key = await generateKeyPair('Ed25519')
  localStorage.setItem(KEY_STORAGE, btoa(String.fromCharCode(...privateKeyToProtobuf(key))))
  return key
}

// The browser's own rules (no insecure ws://, no private addresses) hold for every address but those of the
// relays our service configured (a local stack's relay is ws:// on loopback). Peers' addresses come from
// registrations anyone can write: they must never point this page at a host on the visitor's LAN.
function gate (relays) {
  const trusted = new Set(relays.map((addr) => addr.split('/p2p/')[0]))
  return {
    denyDialMultiaddr: async (ma) => {
      const text = ma.toString()
      if (trusted.has(text.split('/p2p-circuit')[0].split('/p2p/')[0])) return false
      return (/\/ws(\/|$)/.test(text) && !text.includes('/tls/')) || isPrivate(ma)
    }
  }
}

async function start () {
  if (node) return node
  const response = await fetch('/demo/config').catch(() => null)
  if (!response || !response.ok) throw new Error('the rendezvous is unreachable (GET /demo/config failed)')
  config = await response.json()
  $('namespace').textContent = config.namespace
  if (config.relays.length === 0) throw new Error('the rendezvous knows no relay with a WebSocket address')
  state.key = await identity()
  node = await createLibp2p({
    privateKey: state.key,
    addresses: { listen: ['/p2p-circuit', '/webrtc'] },
    transports: [webSockets(), webRTC({ rtcConfiguration: { iceServers: config.iceServers } }), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionGater: gate(config.relays),
    services: { identify: identify(), ping: ping() }
  })
  await node.handle(CHAT, (stream, connection) => attach(stream, connection), { runOnLimitedConnection: true })
  // workers prove a connection with our echo protocol: answer it, so they can reach a browser host too
  await node.handle(ECHO, async (stream) => {
    const lp = lpStream(stream)
    try { while (true) await lp.write((await lp.read()).subarray()) } catch { stream.abort?.(new Error('echo done')) }
  }, { runOnLimitedConnection: true })
  node.addEventListener('connection:open', (event) => showPath(event.detail))
  node.addEventListener('peer:disconnect', (event) => {
    if (chat && event.detail.equals(chat.peer)) { fail('the peer has gone'); setChatEnabled(false) }
  })
  show('me', node.peerId.toString())
  return node
}

async function dialRelay () {
  for (const addr of config.relays) {
    try {
      await node.dial(multiaddr(addr))
      show('relay', addr)
      return addr
    } catch (err) { say(`relay ${addr} did not answer: ${err.message}`) }
  }
  throw new Error('no relay answered')
}

// our registration: the rendezvous's signed envelope (README, "The registration format")
class Registration {
  constructor (fields, codec = REGISTER_TYPE) { this.fields = fields; this.domain = DOMAIN; this.codec = codec }
  marshal () { return new TextEncoder().encode(JSON.stringify(this.fields)) }
  equals (other) { return other.marshal().toString() === this.marshal().toString() }
}

function nonce () { return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16)))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '') }

async function register () {
  const self = node.peerId.toString()
  const addrs = node.getMultiaddrs().map((a) => a.toString().replace(`/p2p/${self}`, '')).filter((a) => a.includes('/p2p-circuit'))
  const fields = { peer: self, ns: config.namespace, addrs, ttl: TTL, ts: Date.now(), nonce: nonce() }
  const envelope = await RecordEnvelope.seal(new Registration(fields), state.key)
  const response = await fetch('/peers', { method: 'POST', body: envelope.marshal(), headers: { 'Content-Type': 'application/octet-stream' } })
  if (!response.ok) throw new Error(`registration refused: ${(await response.json()).message}`)
  return addrs
}

// Leaving the page: a signed unregistration, sent with keepalive so it outlives the page, and the host
// disappears from other pages' lists at once rather than when its TTL runs out.
let goodbye = null
async function prepareGoodbye () {
  const fields = { peer: node.peerId.toString(), ns: config.namespace, ts: Date.now(), nonce: nonce() }
  goodbye = (await RecordEnvelope.seal(new Registration(fields, UNREGISTER_TYPE), state.key)).marshal()
}
window.addEventListener('pagehide', () => {
  if (goodbye) fetch(`/peers/${node.peerId}`, { method: 'DELETE', body: goodbye, keepalive: true })
})

async function host () {
  $('error').textContent = ''
  try {
    await start()
    await dialRelay()
    say('waiting for the relay reservation…')
    while (!node.getMultiaddrs().some((a) => a.toString().includes('/p2p-circuit/webrtc'))) await new Promise((resolve) => setTimeout(resolve, 100))
    const addrs = await register()
    await prepareGoodbye()
    say(`hosting: registered ${addrs.length} address(es); waiting for someone to join`)
    clearInterval(state.refreshTimer)
    // re-sign the goodbye with each refresh: the rendezvous accepts a signed request for 60 s only
    state.refreshTimer = setInterval(() => register().then(prepareGoodbye).catch((err) => fail(err.message)), 50 * 1000)
    document.body.dataset.state = 'hosting'
  } catch (err) { fail(err.message) }
}

async function join () {
  $('error').textContent = ''
  try {
    await start()
    await dialRelay()
    const response = await fetch(`/peers?namespace=${encodeURIComponent(config.namespace)}`).catch(() => null)
    if (!response || !response.ok) throw new Error('the rendezvous is unreachable (GET /peers failed)')
    const hosts = (await response.json()).Peers.filter((p) => p.ID !== node.peerId.toString())
    $('hosts').replaceChildren(...hosts.map((peer) => {
      const item = document.createElement('li')
      const button = document.createElement('button')
      button.textContent = `chat with ${peer.ID.slice(0, 12)}…${peer.ID.slice(-6)}`
      button.className = 'dial'
      button.dataset.peer = peer.ID
      button.onclick = () => dial(peer)
      item.append(button)
      return item
    }))
    say(hosts.length ? `${hosts.length} host(s) found` : 'no host yet: ask someone to click Host')
  } catch (err) { fail(err.message) }
}

// A browser host registers <relay ws>/p2p-circuit/webrtc: dial that, and WebRTC takes over from the relay.
// A worker registers <relay tcp>/p2p-circuit: reach it through our relay's WebSocket address instead.
function target (peer) {
  const webrtc = peer.Addrs.find((a) => a.includes('/p2p-circuit/webrtc'))
  if (webrtc) return { webrtc: `${webrtc}/p2p/${peer.ID}`, relayed: `${webrtc.replace(/\/webrtc$/, '')}/p2p/${peer.ID}` }
  for (const circuit of peer.Addrs.filter((a) => a.endsWith('/p2p-circuit'))) {
    const relayId = circuit.split('/p2p/')[1]?.split('/')[0]
    const ws = config.relays.find((r) => r.endsWith(`/p2p/${relayId}`))
    if (ws) return { relayed: `${ws}/p2p-circuit/p2p/${peer.ID}` }
  }
  return null
}

// WebRTC may not get through (no UDP, or NATs that need a TURN server the page was not given): then chat over
// the relay, which carries a little chat well within its limits, rather than not at all.
const openChat = (addr) => node.dialProtocol(multiaddr(addr), CHAT, { runOnLimitedConnection: true })

async function openChatStream (found) {
  if (!found.webrtc) {
    say('dialing through the relay (a worker: the chat stays relayed)…')
    return openChat(found.relayed)
  }
  say('dialing through the relay; the connection upgrades to direct WebRTC…')
  try {
    return await openChat(found.webrtc)
  } catch (err) {
    say(`no direct WebRTC connection (${err.message}): chatting through the relay instead`)
    return openChat(found.relayed)
  }
}

async function dial (peer) {
  try {
    const found = target(peer)
    if (!found) throw new Error('that peer registered no address this page can reach')
    const stream = await openChatStream(found)
    const connection = node.getConnections().find((c) => c.remotePeer.toString() === peer.ID && c.streams.includes(stream))
    attach(stream, connection)
  } catch (err) { fail(`cannot reach that host: ${err.message}`) }
}

function attach (stream, connection) {
  const lp = lpStream(stream)
  chat = { lp, peer: connection.remotePeer }
  show('peer', connection.remotePeer.toString())
  showPath(connection)
  setChatEnabled(true)
  say('connected')
  ;(async () => {
    try {
      while (true) say(new TextDecoder().decode((await lp.read()).subarray()), 'them')
    } catch { if (chat && chat.lp === lp) { say('the chat stream ended'); setChatEnabled(false) } }
  })()
  measure()
}

function showPath (connection) {
  if (!chat || !connection.remotePeer.equals(chat.peer)) return
  // a WebRTC connection keeps the circuit address it was signalled over (…/p2p-circuit/webrtc/…), but its
  // traffic flows peer to peer; a relayed connection carries the relay's limits
  const addr = connection.remoteAddr.toString()
  const direct = addr.includes('/webrtc') && connection.limits == null
  show('path', direct ? 'direct WebRTC' : 'relayed', direct ? 'direct' : 'relayed')
  document.body.dataset.path = direct ? 'direct' : 'relayed'
}

async function measure () {
  if (!chat) return
  for (const connection of node.getConnections(chat.peer)) showPath(connection)
  try { show('rtt', `${Math.round(await node.services.ping.ping(chat.peer))} ms`) } catch { /* a limited connection may refuse ping */ }
  setTimeout(measure, 2000)
}

function setChatEnabled (on) { $('message').disabled = !on; $('send').disabled = !on }

$('host').onclick = host
$('join').onclick = join
$('chat').onsubmit = async (event) => {
  event.preventDefault()
  const text = $('message').value.trim()
  if (!text || !chat) return
  try {
    await chat.lp.write(new TextEncoder().encode(text))
    say(text, 'me')
    $('message').value = ''
  } catch (err) { fail(`sending failed: ${err.message}`) }
}
