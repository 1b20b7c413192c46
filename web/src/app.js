// The demo page: host (reserve at the relay, register at the rendezvous) or join (pick a host from the live
// list, dial it through the relay, upgrade to direct WebRTC), then chat: one conversation per peer, so a host
// talks with every joiner and each message reaches the peer whose conversation it was typed in. Everything
// the page needs to know about the relay comes from the rendezvous (/demo/config); nothing is hard-coded.
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
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
const CLAIM_WAIT_MS = 150 // how long a new tab waits for another tab of this browser to say its key is taken
const RTT_EVERY_MS = 2000
const $ = (id) => document.getElementById(id)
const short = (id) => `${id.slice(0, 12)}…${id.slice(-6)}`
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

let node, config, self, key
let starting = null
const hosts = new Map() // peer ID -> the peer object the watch last sent (GET /peers's format)
const conversations = new Map() // peer ID -> Conversation
let selected = null // the peer ID of the conversation shown, and the one #chat sends to
let refreshTimer = null

function show (id, text, cls) { $(id).textContent = text; if (cls !== undefined) $(id).className = cls }
function say (text) {
  const line = document.createElement('div')
  line.className = 'sys'
  line.textContent = text
  $('log').append(line)
  $('log').scrollTop = $('log').scrollHeight
}
function fail (text) { $('error').textContent = text; say(text) }

// ---- identity: one per tab --------------------------------------------------------------------------------
// sessionStorage, not localStorage: localStorage is shared by every tab of a browser, so two tabs were one
// peer ID (the second could not list the first as a host, and both answered for one ID at the relay).
// sessionStorage belongs to one tab and still survives its reloads, so a host that reloads keeps its ID and
// replaces its registration rather than leaving a second one behind.
async function identity () {
  const stored = sessionStorage.getItem(KEY_STORAGE)
  let key = stored ? privateKeyFromProtobuf(Uint8Array.from(atob(stored), (c) => c.charCodeAt(0))) : null
  // a duplicated tab (or one opened by window.open) starts with a copy of its opener's sessionStorage: ask the
  // browser's other tabs whether this key is theirs, and make a new one if it is
  if (key && await claimed(peerIdFromPrivateKey(key).toString())) key = null
  if (!key) {
    key = await generateKeyPair('Ed25519')
    sessionStorage.setItem(KEY_STORAGE, btoa(String.fromCharCode(...privateKeyToProtobuf(key))))
  }
  const id = peerIdFromPrivateKey(key).toString()
  const tabs = new BroadcastChannel(KEY_STORAGE)
  tabs.onmessage = (event) => { if (event.data?.asks === id) tabs.postMessage({ taken: id }) }
  return key
}

function claimed (id) {
  const tabs = new BroadcastChannel(KEY_STORAGE)
  return new Promise((resolve) => {
    tabs.onmessage = (event) => { if (event.data?.taken === id) resolve(true) }
    tabs.postMessage({ asks: id })
    setTimeout(() => resolve(false), CLAIM_WAIT_MS)
  }).finally(() => tabs.close())
}

// ---- who a peer is ----------------------------------------------------------------------------------------
// A browser can only be reached through a relay, so it registers relay circuits alone, one of them ending in
// /webrtc (workers have no WebRTC); a worker listens on TCP itself and registers those addresses besides its
// /p2p-circuit ones.
function kindOfAddrs (addrs) {
  if (addrs.some((a) => !a.includes('/p2p-circuit'))) return 'worker'
  if (addrs.some((a) => a.includes('/p2p-circuit/webrtc'))) return 'browser'
  return 'peer'
}

// Someone who connected to us is not always listed (joiners do not register): then the connection says it (only
// browsers speak WebRTC here), else what identify heard (js-libp2p in a page says " browser/<user agent>",
// py-libp2p is a worker).
function kindOf (id, connection, agent) {
  if (hosts.has(id)) return kindOfAddrs(hosts.get(id).Addrs)
  if (connection?.remoteAddr.toString().includes('/webrtc') || agent?.includes(' browser/')) return 'browser'
  if (agent?.startsWith('py-libp2p')) return 'worker'
  return 'peer'
}

// ---- the page's start: config, identity, the live host list ------------------------------------------------
async function load () {
  const response = await fetch('/demo/config').catch(() => null)
  if (!response || !response.ok) throw new Error('the rendezvous is unreachable (GET /demo/config failed)')
  config = await response.json()
  $('namespace').textContent = config.namespace
  key = await identity()
  self = peerIdFromPrivateKey(key).toString()
  show('me', self)
  watchHosts()
}
const loaded = load().catch((err) => { fail(err.message); throw err })

// The namespace's changes pushed by the rendezvous (GET /peers/watch, Server-Sent Events): a snapshot, then
// join, renew, leave and expire. EventSource reconnects by itself with Last-Event-ID, and a watcher that fell
// too far behind gets `resync` and a fresh snapshot, so the map below never misses a change.
function watchHosts () {
  const source = new EventSource(`/peers/watch?namespace=${encodeURIComponent(config.namespace)}`)
  const peer = (event) => JSON.parse(event.data)
  // a snapshot comes in parts of 100 peers ("More": true on all but the last); `resync` starts one afresh
  let parts = []
  source.addEventListener('resync', () => { parts = [] })
  source.addEventListener('snapshot', (event) => {
    const part = peer(event)
    parts.push(...part.Peers)
    if (part.More) return
    hosts.clear()
    for (const p of parts) hosts.set(p.ID, p)
    for (const p of parts) conversations.get(p.ID)?.name()
    parts = []
    renderHosts()
  })
  // a peer we already talk to may register only after it connected (a worker registers once its relay
  // slot exists): its conversation is named again from what it registered
  for (const kind of ['join', 'renew']) {
    source.addEventListener(kind, (event) => {
      const p = peer(event)
      hosts.set(p.ID, p)
      conversations.get(p.ID)?.name()
      renderHosts()
    })
  }
  for (const kind of ['leave', 'expire']) {
    source.addEventListener(kind, (event) => { const p = peer(event); hosts.delete(p.ID); renderHosts(); hostGone(p.ID, kind) })
  }
  source.onopen = () => { parts = []; show('watch', 'live', 'direct') }  // a new connection: parts start over
  source.onerror = () => show('watch', 'reconnecting…', 'relayed')
}

function renderHosts () {
  const others = [...hosts.values()].filter((p) => p.ID !== self)
  $('hosts').replaceChildren(...others.map((peer) => {
    const kind = kindOfAddrs(peer.Addrs)
    const item = document.createElement('li')
    const button = document.createElement('button')
    button.textContent = `chat with ${kind} ${short(peer.ID)}`
    button.className = 'dial'
    button.dataset.peer = peer.ID
    button.dataset.kind = kind
    button.onclick = () => dial(peer.ID)
    item.append(button)
    const c = conversations.get(peer.ID)
    if (c?.open) item.append(' (chatting)')
    return item
  }))
  $('nohosts').hidden = others.length > 0
  $('nohosts').textContent = document.body.dataset.state === 'hosting'
    ? 'No other host: joiners see you in their lists.'
    : 'No host yet: ask someone to click Host (or click it yourself).'
}

// A host that unregistered (its page closed) or whose registration ran out. Leaving is final: its page
// withdrew, so our conversation ends now rather than when the connection finally times out. An expiry
// only means it stopped renewing: the conversation goes on while a connection to it is still up.
function hostGone (id, kind) {
  const c = conversations.get(id)
  if (!c) return
  if (!c.open) { if (kind === 'leave') c.note('it has left the namespace (withdrew its registration)'); return }
  if (kind === 'leave') c.close('has left (it withdrew its registration: its page closed)')
  else if (node.getConnections(c.peer).length === 0) c.close('has gone (its registration expired)')
  else c.note('its registration expired; the connection is still up')
}

// ---- the libp2p node -----------------------------------------------------------------------------------
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

function start () {
  starting ??= startNode().catch((err) => { starting = null; throw err })
  return starting
}

async function startNode () {
  await loaded
  if (config.relays.length === 0) throw new Error('the rendezvous knows no relay with a WebSocket address')
  node = await createLibp2p({
    privateKey: key,
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
  node.addEventListener('connection:open', (event) => conversations.get(event.detail.remotePeer.toString())?.showPath())
  node.addEventListener('peer:disconnect', (event) => {
    conversations.get(event.detail.toString())?.close('disconnected (no connection is left)')
  })
  node.addEventListener('peer:identify', (event) => {
    conversations.get(event.detail.peerId.toString())?.name(event.detail.agentVersion)
  })
  await dialRelay()
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

// ---- hosting: our registration, the rendezvous's signed envelope (README, "The registration format") ------
class Registration {
  constructor (fields, codec = REGISTER_TYPE) { this.fields = fields; this.domain = DOMAIN; this.codec = codec }
  marshal () { return new TextEncoder().encode(JSON.stringify(this.fields)) }
  equals (other) { return other.marshal().toString() === this.marshal().toString() }
}

function nonce () { return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16)))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '') }

async function register () {
  const addrs = node.getMultiaddrs().map((a) => a.toString().replace(`/p2p/${self}`, '')).filter((a) => a.includes('/p2p-circuit'))
  const fields = { peer: self, ns: config.namespace, addrs, ttl: TTL, ts: Date.now(), nonce: nonce() }
  const envelope = await RecordEnvelope.seal(new Registration(fields), key)
  document.body.dataset.registeredAt = Date.now()
  const response = await fetch('/peers', { method: 'POST', body: envelope.marshal(), headers: { 'Content-Type': 'application/octet-stream' } })
  if (!response.ok) throw new Error(`registration refused: ${(await response.json()).message}`)
  return addrs
}

// Leaving the page: a signed unregistration, sent with keepalive so it outlives the page: the host leaves
// other pages' lists at once (their watch hears `leave`), rather than when its TTL runs out.
let goodbye = null
async function prepareGoodbye () {
  const fields = { peer: self, ns: config.namespace, ts: Date.now(), nonce: nonce() }
  goodbye = (await RecordEnvelope.seal(new Registration(fields, UNREGISTER_TYPE), key)).marshal()
}
window.addEventListener('pagehide', () => {
  if (goodbye) fetch(`/peers/${self}`, { method: 'DELETE', body: goodbye, keepalive: true })
  // close our chats while the page can: their peers see the streams end instead of waiting for a timeout
  for (const c of conversations.values()) c.stream?.abort?.(new Error('the page closed'))
})

async function host () {
  $('error').textContent = ''
  try {
    await start()
    say('waiting for the relay reservation…')
    while (!node.getMultiaddrs().some((a) => a.toString().includes('/p2p-circuit/webrtc'))) await sleep(100)
    const addrs = await register()
    await prepareGoodbye()
    say(`hosting: registered ${addrs.length} address(es); every joiner gets a conversation of its own`)
    clearInterval(refreshTimer)
    // re-sign the goodbye with each refresh: the rendezvous accepts a signed request for 60 s only
    refreshTimer = setInterval(() => register().then(prepareGoodbye).catch((err) => fail(err.message)), 50 * 1000)
    document.body.dataset.state = 'hosting'
    $('host').disabled = true
    renderHosts()
  } catch (err) { fail(err.message) }
}

// ---- joining ----------------------------------------------------------------------------------------------
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

async function dial (id) {
  $('error').textContent = ''
  try {
    const peer = hosts.get(id)
    if (!peer) throw new Error('that host has left')
    const found = target(peer)
    if (!found) throw new Error('that peer registered no address this page can reach')
    await start()
    const stream = await openChatStream(found)
    const connection = node.getConnections().find((c) => c.remotePeer.toString() === id && c.streams.includes(stream))
    attach(stream, connection)
  } catch (err) { fail(`cannot reach that host: ${err.message}`) }
}

// ---- conversations: one per peer ------------------------------------------------------------------------
class Conversation {
  constructor (peer) {
    this.peer = peer
    this.id = peer.toString()
    this.open = false
    this.unread = 0
    this.rtt = null
    this.log = document.createElement('div')
    this.log.className = 'log'
    this.log.dataset.peer = this.id
    this.log.hidden = true
    this.button = document.createElement('button')
    this.button.className = 'conversation'
    this.button.dataset.peer = this.id
    this.button.onclick = () => select(this.id)
    const item = document.createElement('li')
    item.append(this.button)
    $('conversations').append(item)
    $('logs').append(this.log)
  }

  name (agent) {
    this.kind = kindOf(this.id, this.connection, agent ?? this.agent)
    this.agent = agent ?? this.agent
    this.label = `${this.kind} ${short(this.id)}`
    this.render()
  }

  // a chat stream from or to this peer: it replaces any earlier one (a peer that dials us again)
  attach (stream, connection) {
    const previous = this.stream
    this.stream = stream
    this.lp = lpStream(stream)
    this.connection = connection
    this.open = true
    this.log.dataset.state = 'open'
    delete this.log.dataset.closedAt
    previous?.abort?.(new Error('replaced by a new chat stream'))
    this.name()
    this.note(`connected (${this.pathText()})`)
    this.read(this.lp)
    if (!this.measuring) this.measure()
  }

  async read (lp) {
    try {
      while (true) {
        this.line(`peer: ${new TextDecoder().decode((await lp.read()).subarray())}`, 'them')
        if (selected !== this.id) { this.unread++; this.render() }
      }
    } catch { if (this.lp === lp) this.close('closed the chat (its page closed, or it hung up)') }
  }

  // what we type is shown as "sending…" until the stream has taken it, and as "not sent" if it did not or
  // the peer was already gone: a page must never show an unsent message as sent
  async send (text) {
    const line = this.line(`you: ${text}`, 'me')
    const status = document.createElement('span')
    status.className = 'status'
    line.append(status)
    const mark = (state, label) => { line.dataset.state = state; status.textContent = label }
    if (!this.open) { mark('unsent', ' ✗ not sent: the peer has left'); return false }
    mark('sending', ' … sending')
    try {
      await this.lp.write(new TextEncoder().encode(text))
      if (!this.open) throw new Error('the peer left while it was being sent')
      mark('sent', ' ✓')
      return true
    } catch (err) {
      mark('unsent', ` ✗ not sent: ${err.message}`)
      return false
    }
  }

  close (why) {
    if (!this.open) return
    this.open = false
    this.rtt = null
    this.log.dataset.state = 'closed'
    this.log.dataset.closedAt = Date.now()
    for (const line of this.log.querySelectorAll('[data-state="sending"]')) {
      line.dataset.state = 'unsent'
      line.querySelector('.status').textContent = ' ✗ not sent: the peer left'
    }
    this.note(`${why}`)
    say(`${this.label} ${why}`)
    const stream = this.stream
    this.stream = this.lp = null
    stream?.abort?.(new Error('the conversation is over'))
    // nothing more to say to it: free the connection (a leaving host's may otherwise linger for seconds)
    if (node.getConnections(this.peer).length > 0) node.hangUp(this.peer).catch(() => {})
    this.render()
    renderHosts()
  }

  pathText () {
    if (!this.open) return 'closed'
    // a WebRTC connection keeps the circuit address it was signalled over (…/p2p-circuit/webrtc/…), but its
    // traffic flows peer to peer; a relayed connection carries the relay's limits
    const direct = node.getConnections(this.peer).some((c) => c.remoteAddr.toString().includes('/webrtc') && c.limits == null)
    return direct ? 'direct WebRTC' : 'relayed'
  }

  showPath () { if (selected === this.id) renderPanel() }

  async measure () {
    this.measuring = true
    while (this.open) {
      try { this.rtt = Math.round(await node.services.ping.ping(this.peer)) } catch { /* a limited connection may refuse ping */ }
      if (selected === this.id) renderPanel()
      await sleep(RTT_EVERY_MS)
    }
    this.measuring = false
  }

  note (text) { this.line(text, 'sys') }

  line (text, cls) {
    const line = document.createElement('div')
    line.className = cls
    line.textContent = text
    this.log.append(line)
    this.log.scrollTop = this.log.scrollHeight
    return line
  }

  render () {
    this.button.textContent = `${this.label}${this.open ? '' : ' (gone)'}${this.unread ? ` · ${this.unread} new` : ''}`
    this.button.dataset.state = this.open ? 'open' : 'closed'
    this.button.classList.toggle('selected', selected === this.id)
    if (selected === this.id) renderPanel()
  }
}

function attach (stream, connection) {
  const id = connection.remotePeer.toString()
  let c = conversations.get(id)
  if (!c) {
    c = new Conversation(connection.remotePeer)
    conversations.set(id, c)
  }
  c.attach(stream, connection)
  say(`${c.label} connected (${c.pathText()})`)
  // the first conversation, or a new one while the shown one is over, comes to the front
  if (selected === null || !conversations.get(selected).open) select(id)
  renderHosts()
}

function select (id) {
  selected = id
  for (const c of conversations.values()) {
    c.log.hidden = c.id !== id
    if (c.id === id) c.unread = 0
    c.render()
  }
  renderPanel()
}

// The status panel shows the conversation selected, and only while it is alive: once the peer has gone, its
// ID says so and its path and last round trip are cleared rather than shown as if current.
function renderPanel () {
  const c = conversations.get(selected)
  const path = c?.pathText()
  show('peer', c ? `${c.label}${c.open ? '' : ' — gone'}` : '-')
  show('path', path ?? '-', path === 'direct WebRTC' ? 'direct' : path === 'relayed' ? 'relayed' : '')
  show('rtt', c?.open && c.rtt != null ? `${c.rtt} ms` : '-')
  document.body.dataset.path = path === 'direct WebRTC' ? 'direct' : path ?? ''
  $('message').disabled = $('send').disabled = !c?.open
}

$('host').onclick = host
$('chat').onsubmit = async (event) => {
  event.preventDefault()
  const text = $('message').value.trim()
  const c = conversations.get(selected)
  if (!text || !c) return
  $('message').value = ''
  if (!await c.send(text)) fail(`not sent to ${c.label}`)
}
