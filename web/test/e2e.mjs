// Real browsers (Debian's headless Chromium): A hosts, B joins, they chat both ways, and B's page must report
// a direct WebRTC connection; or the other modes below. Usage: node test/e2e.mjs <page URL> <screenshot directory> [mode]
import { chromium } from 'playwright-core'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// mode "pair" (default): two browsers; "pair-no-direct-path": the same, but WebRTC cannot connect them, so they
// must fall back to chatting over the relay; "worker:<peer ID>": one browser joins that Python worker and chats;
// "host-for-worker": one browser hosts and a Python worker (started with CHAT_GREETING) comes to chat;
// "three": one host and two joiners (the host and one joiner two tabs of one browser), timed (see below)
const [url, shots, mode = 'pair'] = process.argv.slice(2)
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--allow-loopback-in-peer-connection',
  '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream']

// every browser profile made here, removed on the way out however the run ends
const profiles = []
process.on('exit', () => { for (const dir of profiles) rmSync(dir, { recursive: true, force: true }) })

async function browser (name, { noDirectPath = false } = {}) {
  // a fresh profile each: a browser of its own (its tabs still have an identity each, in sessionStorage)
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
  await visit(page, name)
  return { context, page }
}

async function visit (page, name) {
  page.on('console', (message) => { if (message.type() === 'error') console.error(`[${name}] ${message.text()}`) })
  await page.goto(url)
  return page
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

// The page's whole story: its own log, then every conversation's (hidden ones too: textContent)
const story = async (page) => `${await page.textContent('#log')} ${await page.textContent('#logs')}`
const logHas = (page, text) => page.waitForFunction((t) => document.getElementById('logs').textContent.includes(t), text, { timeout: 30000 })
// what the conversation with `peer` shows (one per peer: nothing of another's may be in it)
const conversation = (page, peer) => page.textContent(`.log[data-peer="${peer}"]`)
const heard = (page, peer, text) => page.waitForFunction(([p, t]) => document.querySelector(`.log[data-peer="${p}"]`)?.textContent.includes(t),
  [peer, text], { timeout: 30000 })
// the page's own peer ID, known as soon as it has loaded (before it hosts or joins)
const me = async (page) => {
  await page.waitForFunction(() => document.getElementById('me').textContent.startsWith('12D3KooW'), null, { timeout: 30000 })
  return page.textContent('#me')
}
async function sendTo (page, peer, text) {
  await page.click(`button.conversation[data-peer="${peer}"]`)
  await page.fill('#message', text)
  await page.click('#send')
}

// One page alone with a Python worker: run `steps`, report, and exit.
async function alone (name, steps) {
  const side = await browser(name)
  try {
    await steps(side.page)
    console.log(JSON.stringify({ path: await side.page.textContent('#path'), log: await story(side.page) }))
  } catch (err) {
    console.error(`[${name}] log: ${await story(side.page)} | error: ${await side.page.textContent('#error')}`)
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
    // the worker is named as one (it registers TCP addresses; its registration may come just after it
    // connected, and the conversation is named again then), and who connected is said
    const named = await page.waitForFunction(
      () => document.querySelector('button.conversation')?.textContent.startsWith('worker '), null, { timeout: 5000 }
    ).then(() => true, () => false)
    if (!named) throw new Error(`the worker's conversation reads "${await page.textContent('button.conversation')}"`)
    await page.fill('#message', 'hello to you too')
    await page.click('#send')
    await logHas(page, 'heard: hello to you too')
    await page.screenshot({ path: join(shots, 'host-worker-chat.png'), fullPage: true })
  })
}

if (mode.startsWith('worker:')) {
  const workerId = mode.slice('worker:'.length)
  await alone('solo', async (page) => {
    const kind = await page.getAttribute(`button.dial[data-peer="${workerId}"]`, 'data-kind', { timeout: 30000 })
    if (kind !== 'worker') throw new Error(`the worker is listed as a ${kind}`)
    await page.click(`button.dial[data-peer="${workerId}"]`)
    await page.waitForFunction(() => !document.getElementById('message').disabled, null, { timeout: 30000 })
    await page.fill('#message', 'hello worker')
    await page.click('#send')
    await heard(page, workerId, 'heard: hello worker')
    await page.screenshot({ path: join(shots, 'worker-chat.png'), fullPage: true })
  })
}

// One host and two joiners. The host A and joiner B are two tabs of one browser (each tab must be a peer of
// its own to see the other), joiner C another browser. Each joiner's message reaches the host's conversation
// with it alone, the host's replies reach the right joiner, and A's closed page is noticed by both within 2 s.
if (mode === 'three') {
  const one = await browser('a')
  const two = await browser('c')
  const pages = { a: one.page, b: await visit(await one.context.newPage(), 'b'), c: two.page }
  try {
    const ids = {}
    for (const [name, page] of Object.entries(pages)) ids[name] = await me(page)
    // a tab opened from B starts with a copy of B's sessionStorage: it must still be a peer of its own
    const [twin] = await Promise.all([one.context.waitForEvent('page'), pages.b.evaluate(() => { window.open(location.href) })])
    const twinId = await me(twin)
    await twin.close()
    // and a tab keeps its identity when it reloads (a host that reloads replaces its registration)
    await pages.a.reload()
    const reloadedId = await me(pages.a)
    for (const page of [pages.b, pages.c]) await page.waitForFunction(() => document.getElementById('watch').textContent === 'live', null, { timeout: 30000 })
    // the joiners' lists are live: time from A's registration to A's entry on each joiner's page
    const seen = [pages.b, pages.c].map((page) => page.waitForSelector(`button.dial[data-peer="${ids.a}"]`, { timeout: 30000 }).then(() => Date.now()))
    await pages.a.click('#host')
    await pages.a.waitForFunction(() => document.body.dataset.state === 'hosting', null, { timeout: 30000 })
    const registeredAt = Number(await pages.a.evaluate(() => document.body.dataset.registeredAt))
    const listedMs = (await Promise.all(seen)).map((at) => at - registeredAt)
    const kinds = [await pages.b.getAttribute(`button.dial[data-peer="${ids.a}"]`, 'data-kind'),
      await pages.c.getAttribute(`button.dial[data-peer="${ids.a}"]`, 'data-kind')]
    for (const page of [pages.b, pages.c]) {
      await page.click(`button.dial[data-peer="${ids.a}"]`)
      await page.waitForFunction(() => document.body.dataset.path === 'direct', null, { timeout: 40000 })
    }
    await sendTo(pages.b, ids.a, 'hello from B')
    await sendTo(pages.c, ids.a, 'hello from C')
    await heard(pages.a, ids.b, 'peer: hello from B')
    await heard(pages.a, ids.c, 'peer: hello from C')
    await sendTo(pages.a, ids.b, 'for B only')
    await sendTo(pages.a, ids.c, 'for C only')
    await heard(pages.b, ids.a, 'peer: for B only')
    await heard(pages.c, ids.a, 'peer: for C only')
    await new Promise((resolve) => setTimeout(resolve, 300)) // a stray message would have had time to arrive
    const heardBy = {
      aFromB: await conversation(pages.a, ids.b), aFromC: await conversation(pages.a, ids.c),
      b: await conversation(pages.b, ids.a), c: await conversation(pages.c, ids.a)
    }
    const hostLabels = await pages.a.$$eval('button.conversation', (buttons) => buttons.map((b) => b.textContent))
    await pages.a.screenshot({ path: join(shots, 'host-of-two.png'), fullPage: true })
    // A closes its tab: both joiners must say so within 2 s, and drop A from their lists
    const closedAt = Date.now()
    const noticed = [pages.b, pages.c].map((page) => page.waitForSelector(`.log[data-peer="${ids.a}"][data-state="closed"]`, { state: 'attached', timeout: 20000 }).then(() => Date.now() - closedAt))
    const unlisted = [pages.b, pages.c].map((page) => page.waitForSelector(`button.dial[data-peer="${ids.a}"]`, { state: 'detached', timeout: 20000 }).then(() => Date.now() - closedAt))
    await pages.a.close({ runBeforeUnload: true })
    const leaveNoticedMs = await Promise.all(noticed)
    const unlistedMs = await Promise.all(unlisted)
    // after: B's panel no longer shows A as alive, and a message typed now is never shown as sent
    const panel = { peer: await pages.b.textContent('#peer'), path: await pages.b.textContent('#path'), rtt: await pages.b.textContent('#rtt'),
      sendDisabled: await pages.b.isDisabled('#send') }
    await pages.b.evaluate(() => { document.getElementById('message').value = 'too late'; document.getElementById('chat').requestSubmit() })
    await new Promise((resolve) => setTimeout(resolve, 300))
    const late = await pages.b.$$eval(`.log[data-peer="${ids.a}"] .me`, (lines) => lines.filter((l) => l.textContent.includes('too late')).map((l) => l.dataset.state))
    await pages.b.screenshot({ path: join(shots, 'joiner-after-leave.png'), fullPage: true })
    console.log(JSON.stringify({ ids, twinId, reloadedId, listedMs, kinds, heardBy, hostLabels, leaveNoticedMs, unlistedMs, panel, late,
      bNotes: await pages.b.$$eval(`.log[data-peer="${ids.a}"] .sys`, (lines) => lines.map((l) => l.textContent)) }))
  } catch (err) {
    for (const [name, page] of Object.entries(pages)) {
      if (page.isClosed()) continue
      console.error(`[${name}] log: ${await story(page)} | error: ${await page.textContent('#error')}`)
      await page.screenshot({ path: join(shots, `failed-${name}.png`), fullPage: true }).catch(() => {})
    }
    throw err
  } finally {
    await one.context.close()
    await two.context.close()
  }
  process.exit(0)
}

const a = await browser('a')
const b = await browser('b', { noDirectPath: mode === 'pair-no-direct-path' })
try {
  await a.page.click('#host')
  await a.page.waitForFunction(() => document.body.dataset.state === 'hosting', null, { timeout: 30000 })
  const hostId = await a.page.textContent('#me')
  // the namespace may still list hosts that left (until their TTL runs out): pick A
  await b.page.click(`button.dial[data-peer="${hostId}"]`, { timeout: 30000 })
  const expected = mode === 'pair-no-direct-path' ? 'relayed' : 'direct'
  await b.page.waitForFunction((path) => document.body.dataset.path === path, expected, { timeout: 40000 })
  await b.page.fill('#message', 'hello from B')
  await b.page.click('#send')
  const bId = await b.page.textContent('#me')
  await heard(a.page, bId, 'peer: hello from B')
  await a.page.fill('#message', 'hello back from A')
  await a.page.click('#send')
  await heard(b.page, hostId, 'peer: hello back from A')
  const path = await b.page.textContent('#path')
  const rtt = await b.page.textContent('#rtt')
  await a.page.screenshot({ path: join(shots, 'host.png'), fullPage: true })
  await b.page.screenshot({ path: join(shots, 'join.png'), fullPage: true })
  const ids = { a: await a.page.textContent('#me'), b: await b.page.textContent('#me') }
  await a.page.close({ runBeforeUnload: true })  // A leaves: its page unregisters on the way out
  // its DELETE is sent with keepalive and lands after the page is gone: wait for it (the harness checks it)
  await until(async () => !(await listed(ids.a)), 10000)
  const log = await story(b.page)
  console.log(JSON.stringify({ path, rtt, log, ...ids }))
} catch (err) {
  for (const [name, side] of [['a', a], ['b', b]]) {
    console.error(`[${name}] log: ${await story(side.page)} | error: ${await side.page.textContent('#error')}`)
    await side.page.screenshot({ path: join(shots, `failed-${name}.png`), fullPage: true }).catch(() => {})
  }
  throw err
} finally {
  await a.context.close()
  await b.context.close()
}
