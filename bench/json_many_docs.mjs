#!/usr/bin/env node
// Many documents over the seed's JSON protocol (/ws/fabric?documentId=&clientID=): D documents,
// two clients each, every client appending fixed-size chunks to its own Y.Text (t0 / t1) at
// --rate edits/s for --duration s (random phase), real Yjs updates base64 in {"type":"update"}
// messages; the document's other client measures the latency. Prints one JSON line: latency,
// server CPU per edit (from /proc/<server-pid>), documents converged (both clients, and a fresh
// client's sync, hold the same texts of the expected length).
//
//   node bench/json_many_docs.mjs --url ws://127.0.0.1:PORT/ws/fabric --server-pid PID \
//        [--docs 200] [--rate 5] [--duration 15] [--settle 20] [--label name]
//
// Clients come from tests/js (the pinned yjs and ws). Loopback only, bounded in time.
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(join(root, 'tests/js/package.json'))
const Y = require('yjs')
const WebSocket = require('ws')
const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    'server-pid': { type: 'string', default: '' },
    docs: { type: 'string', default: '200' },
    rate: { type: 'string', default: '5' },
    duration: { type: 'string', default: '15' },
    settle: { type: 'string', default: '20' },
    label: { type: 'string', default: '' }
  }
})
const url = opt.url.replace(/\/+$/, '')
if (!/^wss?:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(\/|$)/.test(url)) {
  throw new Error('loopback only')
}
const D = Number(opt.docs)
const RATE = Number(opt.rate)
const DURATION = Number(opt.duration)
const CHUNK = 8
const pid = opt['server-pid']
const prefix = 'jm-' + Math.random().toString(36).slice(2, 8)
const cpu = () => {
  if (!pid) return NaN
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(f[11]) + Number(f[12])) / 100
}
const b64 = (u8) => Buffer.from(u8).toString('base64')

function open (documentId, clientID) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?documentId=${documentId}&clientID=${clientID}`,
      { perMessageDeflate: false })
    const timer = setTimeout(() => reject(new Error('connect timeout')), 30000)
    ws.once('message', () => { clearTimeout(timer); resolve(ws) }) // "connected"
    ws.once('error', (e) => { clearTimeout(timer); reject(e) })
  })
}

// A client: its own Y.Doc, writes to t<side>, observes the other side's text.
async function client (documentId, side) {
  const ws = await open(documentId, `${documentId}-c${side}`)
  const doc = new Y.Doc()
  const own = doc.getText(`t${side}`)
  const other = doc.getText(`t${1 - side}`)
  const c = { ws, doc, own, other, documentId, sent: [], lat: [], seen: 0, edits: 0 }
  ws.on('message', (raw) => {
    const m = JSON.parse(raw.toString())
    if (m.type !== 'update') return
    Y.applyUpdate(doc, Buffer.from(m.data, 'base64'))
    const now = performance.now()
    const n = Math.floor(other.length / CHUNK)
    while (c.seen < n) c.lat.push(now - c.peer.sent[c.seen++])
  })
  return c
}

const out = { tool: 'json-many-docs', label: opt.label, url, params: { docs: D, rate: RATE, duration_s: DURATION } }
try {
  const t0 = performance.now()
  const pairs = []
  for (let i = 0; i < D; i += 50) {
    const batch = []
    for (let k = i; k < Math.min(D, i + 50); k++) {
      batch.push(Promise.all([client(`${prefix}-doc${k}`, 0), client(`${prefix}-doc${k}`, 1)]))
    }
    pairs.push(...await Promise.all(batch))
  }
  for (const [a, b] of pairs) { a.peer = b; b.peer = a }
  out.connect_ms = Math.round(performance.now() - t0)
  const clients = pairs.flat()
  const cpu0 = cpu()
  const start = performance.now()
  const end = start + DURATION * 1000
  await Promise.all(clients.map((c) => new Promise((resolve) => {
    const period = 1000 / RATE
    let next = start + Math.random() * period
    const tick = () => {
      if (performance.now() >= end) return resolve()
      const before = Y.encodeStateVector(c.doc)
      c.own.insert(c.own.length, String(c.edits % 1e7).padStart(CHUNK, '0').slice(-CHUNK))
      c.sent.push(performance.now())
      c.edits++
      c.ws.send(JSON.stringify({ type: 'update', documentId: c.documentId, data: b64(Y.encodeStateAsUpdate(c.doc, before)) }))
      next += period
      setTimeout(tick, Math.max(0, next - performance.now()))
    }
    setTimeout(tick, Math.max(0, next - performance.now()))
  })))
  const deadline = performance.now() + 1000 * Number(opt.settle)
  const done = () => clients.every((c) => c.seen >= c.peer.edits)
  while (!done() && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  const cpu1 = cpu()
  const edits = clients.reduce((s, c) => s + c.edits, 0)
  const delivered = clients.reduce((s, c) => s + c.seen, 0)
  const lat = clients.flatMap((c) => c.lat).sort((x, y) => x - y)
  const q = (p) => lat.length ? +lat[Math.min(lat.length - 1, Math.floor(p * lat.length))].toFixed(2) : null
  out.edits = edits
  out.delivered = delivered
  out.delivered_per_s = +(delivered / DURATION).toFixed(1)
  out.latency_ms = { n: lat.length, p50: q(0.5), p99: q(0.99), max: q(1) }
  out.server = { cpu_s: +(cpu1 - cpu0).toFixed(2) }
  out.server_cpu_us_per_edit = +(1e6 * (cpu1 - cpu0) / Math.max(delivered, 1)).toFixed(1)
  // Converged: both clients hold the same texts of the expected length, and a fresh client
  // that syncs from the server gets them too.
  let converged = 0
  for (const [a, b] of pairs) {
    const same = ['t0', 't1'].every((t) => a.doc.getText(t).toString() === b.doc.getText(t).toString())
    const full = a.own.length === a.edits * CHUNK && b.own.length === b.edits * CHUNK
    if (same && full) converged++
  }
  out.converged_docs = converged
  const [a] = pairs[0]
  const documentId = `${prefix}-doc0`
  const verifier = await open(documentId, 'verifier')
  const synced = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('verifier timeout')), 20000)
    verifier.on('message', (raw) => {
      const m = JSON.parse(raw.toString())
      if (m.type === 'synced') { clearTimeout(timer); resolve(m) }
    })
    verifier.send(JSON.stringify({ type: 'sync', documentId }))
  })
  const vdoc = new Y.Doc()
  Y.applyUpdate(vdoc, Buffer.from(synced.data.update, 'base64'))
  out.server_state_converged = vdoc.getText('t0').toString() === a.doc.getText('t0').toString() &&
    vdoc.getText('t1').toString() === a.doc.getText('t1').toString()
  verifier.close()
  for (const c of clients) c.ws.terminate()
} catch (e) {
  out.error = String(e && e.stack ? e.stack : e).slice(0, 500)
}
console.log(JSON.stringify(out))
process.exit(0)
