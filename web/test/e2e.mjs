// Two real browsers (Debian's headless Chromium): A hosts, B joins, they chat both ways, and B's page must
// report a direct WebRTC connection. Usage: node test/e2e.mjs <page URL> <screenshot directory> [mode]
import { chromium } from 'playwright-core'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// mode "pair" (default): two browsers; "pair-no-direct-path": the same, but WebRTC cannot connect them, so they
// must fall back to chatting over the relay; "worker:<peer ID>": one browser joins that Python worker and chats;
// "host-for-worker": one browser hosts and a Python worker (started with CHAT_GREETING) comes to chat
const [url, shots, mode = 'pair'] = process.argv.slice(2)
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--allow-loopback-in-peer-connection',
  '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream']

// every browser profile made here, removed on the way out however the run ends
const profiles = []
process.on('exit', () => { for (const dir of profiles) rmSync(dir, { recursive: true, force: true }) })

async function browser (name, { noDirectPath = false } = {}) {
  // a fresh profile each, so the two pages have their own identity in localStorage
  const profile = mkdtempSync(join(tmpdir(), `hp-${name}-`))
  profiles.push(profile)
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: ARGS
  })
  // Chromium offers loopback ICE candidates only to pages allowed the microphone and camera
  await context.grantPermissions(['microphone', 'camera'], { origin: new URL(url).origin })
  const page = await context.newPage()
  // a network with no direct path between the browsers: WebRTC may use TURN candidates only, and it has no TURN
  // server (@libp2p/webrtc takes RTCPeerConnection when the page loads, so the stand-in must be there first)
  if (noDirectPath) {
    await page.addInitScript(() => {
      const Native = window.RTCPeerConnection
      window.RTCPeerConnection = class extends Native { constructor (config) { super({ ...config, iceTransportPolicy: 'relay' }) } }
    })
  }
  page.on('console', (message) => { if (message.type() === 'error') console.error(`[${name}] ${message.text()}`) })
  await page.goto(url)
  return { context, page }
}

// Ask `check` every 100 ms until it answers true or `ms` have passed; says whether it did.
async function until (check, ms) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return false
}

// Whether `peer` is still listed in the demo's namespace at the rendezvous.
async function listed (peer) {
  const { namespace } = await (await fetch(new URL('demo/config', url))).json()
  const answer = await (await fetch(new URL(`peers?namespace=${encodeURIComponent(namespace)}`, url))).json()
  return answer.Peers.some((p) => p.ID === peer)
}

const logHas = (page, text) => page.waitForFunction((t) => document.getElementById('log').innerText.includes(t), text, { timeout: 30000 })

// One page alone with a Python worker: run `steps`, report, and exit.
async function alone (name, steps) {
  const side = await browser(name)
  try {
    await steps(side.page)
    console.log(JSON.stringify({ path: await side.page.textContent('#path'), log: await side.page.textContent('#log') }))
  } catch (err) {
    console.error(`[${name}] log: ${await side.page.textContent('#log')} | error: ${await side.page.textContent('#error')}`)
    throw err
  } finally {
    await side.context.close()
  }
  process.exit(0)
}

if (mode === 'host-for-worker') {
  await alone('host', async (page) => {
    await page.click('#host')
    await page.waitForFunction(() => document.body.dataset.state === 'hosting', null, { timeout: 30000 })
    console.log(JSON.stringify({ host: await page.textContent('#me') }))  // the harness starts the worker now
    await logHas(page, 'peer: hello from a worker')
    await page.fill('#message', 'hello to you too')
    await page.click('#send')
    await logHas(page, 'heard: hello to you too')
    await page.screenshot({ path: join(shots, 'host-worker-chat.png'), fullPage: true })
  })
}

if (mode.startsWith('worker:')) {
  const workerId = mode.slice('worker:'.length)
  await alone('solo', async (page) => {
    await page.click('#join')
    await page.click(`button.dial[data-peer="${workerId}"]`, { timeout: 30000 })
    await page.waitForFunction(() => !document.getElementById('message').disabled, null, { timeout: 30000 })
    await page.fill('#message', 'hello worker')
    await page.click('#send')
    await logHas(page, 'heard: hello worker')
    await page.screenshot({ path: join(shots, 'worker-chat.png'), fullPage: true })
  })
}

const a = await browser('a')
const b = await browser('b', { noDirectPath: mode === 'pair-no-direct-path' })
try {
  await a.page.click('#host')
  await a.page.waitForFunction(() => document.body.dataset.state === 'hosting', null, { timeout: 30000 })
  const hostId = await a.page.textContent('#me')
  await b.page.click('#join')
  // the namespace may still list hosts that left (until their TTL runs out): pick A
  await b.page.click(`button.dial[data-peer="${hostId}"]`, { timeout: 30000 })
  const expected = mode === 'pair-no-direct-path' ? 'relayed' : 'direct'
  await b.page.waitForFunction((path) => document.body.dataset.path === path, expected, { timeout: 40000 })
  await b.page.fill('#message', 'hello from B')
  await b.page.click('#send')
  await logHas(a.page, 'peer: hello from B')
  await a.page.fill('#message', 'hello back from A')
  await a.page.click('#send')
  await logHas(b.page, 'peer: hello back from A')
  const path = await b.page.textContent('#path')
  const rtt = await b.page.textContent('#rtt')
  await a.page.screenshot({ path: join(shots, 'host.png'), fullPage: true })
  await b.page.screenshot({ path: join(shots, 'join.png'), fullPage: true })
  const ids = { a: await a.page.textContent('#me'), b: await b.page.textContent('#me') }
  await a.page.close({ runBeforeUnload: true })  // A leaves: its page unregisters on the way out
  // its DELETE is sent with keepalive and lands after the page is gone: wait for it (the harness checks it)
  await until(async () => !(await listed(ids.a)), 10000)
  const log = await b.page.textContent('#log')
  console.log(JSON.stringify({ path, rtt, log, ...ids }))
} catch (err) {
  for (const [name, side] of [['a', a], ['b', b]]) {
    console.error(`[${name}] log: ${await side.page.textContent('#log')} | error: ${await side.page.textContent('#error')}`)
    await side.page.screenshot({ path: join(shots, `failed-${name}.png`), fullPage: true }).catch(() => {})
  }
  throw err
} finally {
  await a.context.close()
  await b.context.close()
}
