#!/usr/bin/env node
// Many documents over shared sockets, with real @hocuspocus/provider providers: S sockets
// (HocuspocusProviderWebsocket), D documents; document k is opened on socket k % S and on
// socket (k + 1) % S, so every socket carries 2D/S documents and each document has two
// providers on two different sockets. Each provider appends fixed-size chunks to its own
// Y.Text (t0 / t1) at --rate edits/s for --duration s; the other provider of the document
// measures the latency. Prints one JSON line: latency, server CPU per edit (from
// /proc/<server-pid>), documents converged, providers left with unacknowledged changes.
//
//   node bench/hocuspocus_multiplex.mjs --url ws://127.0.0.1:PORT/ws/hocuspocus \
//        --server-pid PID [--sockets 20] [--docs 200] [--rate 5] [--duration 15] [--impl v3]
//
// Clients come from tests/js (the pinned @hocuspocus/provider 3.4.4 and 4.x).
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(join(root, 'tests/js/package.json'))
const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    'server-pid': { type: 'string', default: '' },
    sockets: { type: 'string', default: '20' },
    docs: { type: 'string', default: '200' },
    rate: { type: 'string', default: '5' },
    duration: { type: 'string', default: '15' },
    settle: { type: 'string', default: '20' },
    impl: { type: 'string', default: 'v3' },
    label: { type: 'string', default: '' }
  }
})
const Y = require('yjs')
const WebSocket = require('ws')
const { HocuspocusProvider, HocuspocusProviderWebsocket } = require(
  opt.impl === 'v4' ? '@hocuspocus/provider' : '@hocuspocus/provider-v3')

const S = Number(opt.sockets)
const D = Number(opt.docs)
const RATE = Number(opt.rate)
const DURATION = Number(opt.duration) * 1000
const CHUNK = 8
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const prefix = 'mx' + Date.now().toString(36)

function cpuSeconds (pid) {
  if (!pid) return null
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(')').pop().trim().split(/\s+/)
  return (Number(fields[11]) + Number(fields[12])) / 100
}

function percentile (sorted, p) {
  if (!sorted.length) return null
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))] * 100) / 100
}

async function waitFor (predicate, ms) {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) return false
    await sleep(20)
  }
  return true
}

const sockets = []
for (let s = 0; s < S; s++) {
  sockets.push(new HocuspocusProviderWebsocket({ url: opt.url, WebSocketPolyfill: WebSocket }))
}
const sent = new Map() // `${doc}/${side}/${i}` → send time
const latencies = []
const clients = []
for (let k = 0; k < D; k++) {
  const name = `${prefix}-${k}`
  for (const side of [0, 1]) {
    const doc = new Y.Doc()
    const provider = new HocuspocusProvider({
      websocketProvider: sockets[(k + side) % S], name, document: doc, token: 'bench', awareness: null
    })
    provider.attach()
    const client = { k, side, doc, provider, seen: 0, sentCount: 0 }
    const other = doc.getText(`t${1 - side}`)
    other.observe(() => {
      const count = Math.floor(other.length / CHUNK)
      const now = performance.now()
      for (let i = client.seen; i < count; i++) {
        const at = sent.get(`${k}/${1 - side}/${i}`)
        if (at !== undefined) latencies.push(now - at)
      }
      client.seen = count
    })
    clients.push(client)
  }
}
const synced = await waitFor(() => clients.every((c) => c.provider.isSynced), 60000)
const cpuBefore = cpuSeconds(Number(opt['server-pid']))
const started = performance.now()
await Promise.all(clients.map(async (client) => {
  const text = client.doc.getText(`t${client.side}`)
  await sleep(Math.random() * 1000 / RATE)
  const edits = Math.floor(DURATION / 1000 * RATE)
  for (let i = 0; i < edits; i++) {
    const due = started + i * 1000 / RATE
    const wait = due - performance.now()
    if (wait > 0) await sleep(wait)
    sent.set(`${client.k}/${client.side}/${i}`, performance.now())
    text.insert(text.length, String(i % 10).repeat(CHUNK))
    client.sentCount += 1
  }
}))
const totalEdits = clients.reduce((n, c) => n + c.sentCount, 0)
const settled = await waitFor(() => latencies.length >= totalEdits, Number(opt.settle) * 1000)
const cpuAfter = cpuSeconds(Number(opt['server-pid']))
await waitFor(() => clients.every((c) => !c.provider.hasUnsyncedChanges), 10000)
let converged = 0
for (let k = 0; k < D; k++) {
  const [a, b] = [clients[2 * k], clients[2 * k + 1]]
  const same = ['t0', 't1'].every((t) => a.doc.getText(t).toString() === b.doc.getText(t).toString())
  const complete = a.doc.getText('t0').length === a.sentCount * CHUNK &&
    a.doc.getText('t1').length === b.sentCount * CHUNK
  if (same && complete) converged += 1
}
latencies.sort((x, y) => x - y)
const cpu = cpuAfter !== null ? cpuAfter - cpuBefore : null
console.log(JSON.stringify({
  label: opt.label,
  scenario: 'hocuspocus-multiplex',
  params: { sockets: S, docs: D, providers: clients.length, rate: RATE, duration: DURATION / 1000, impl: opt.impl },
  synced,
  settled,
  edits: totalEdits,
  deliveries: latencies.length,
  latency_ms: { p50: percentile(latencies, 50), p90: percentile(latencies, 90), p99: percentile(latencies, 99), max: percentile(latencies, 100) },
  server_cpu_s: cpu !== null ? Math.round(cpu * 100) / 100 : null,
  server_cpu_us_per_edit: cpu !== null && totalEdits ? Math.round(cpu / totalEdits * 1e6 * 10) / 10 : null,
  converged_docs: converged,
  unacknowledged_providers: clients.filter((c) => c.provider.hasUnsyncedChanges).length
}))
for (const client of clients) client.provider.destroy()
for (const socket of sockets) socket.destroy()
setTimeout(() => process.exit(0), 100)
