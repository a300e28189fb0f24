// An honest pair of real y-websocket providers editing one document while the server is under
// attack, and a /healthz prober; both measure latency with this process's own clock (the
// attackers run elsewhere, so their CPU does not skew the figures). Used by tests/attacks.py.
//
//   node honest_pair.mjs '{"url":"ws://…/ws/fabric","doc":"honest","durationMs":60000,
//                          "editEveryMs":50,"health":"http://…/healthz","healthEveryMs":100}'
//
// Prints one JSON line when done: edits sent and seen, latency percentiles (ms), whether both
// documents ended equal, and the /healthz latencies (ms) with failures.

import http from 'node:http'
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'

const options = JSON.parse(process.argv[2])
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function percentile (values, p) {
  if (!values.length) return null
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))]
}

function open (name) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(options.url, options.doc, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true
  })
  provider.awareness.setLocalStateField('user', { name })
  return { doc, provider, synced: false }
}

async function waitSynced (peer, ms) {
  const deadline = Date.now() + ms
  while (!(peer.provider.synced && peer.provider.wsconnected)) {
    if (Date.now() > deadline) throw new Error('honest peer never synced')
    await sleep(10)
  }
}

const a = open('a')
const b = open('b')
try {
  await waitSynced(a, 20000)
  await waitSynced(b, 20000)
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error.message) }) + '\n')
  process.exit(0)
}

const sentAt = new Map() // "a:17" → ms
const startedAt = performance.now()
const worst = [] // [latency ms, sent at ms since start]
const latencies = []
const seen = new Set()
for (const [peer, other] of [[a, 'b'], [b, 'a']]) {
  peer.doc.getMap('ticks').observe((event) => {
    const now = performance.now()
    for (const key of event.keysChanged) {
      if (!key.startsWith(other + ':') || seen.has(key)) continue
      seen.add(key)
      const at = sentAt.get(key)
      if (at !== undefined) {
        latencies.push(now - at)
        worst.push([Math.round(now - at), Math.round(at - startedAt)])
      }
    }
  })
}

const health = []
let healthFailures = 0
let running = true
async function probeHealth () {
  while (running) {
    const started = performance.now()
    await new Promise((resolve) => {
      const request = http.get(options.health, { agent: false, timeout: 5000 }, (response) => {
        response.resume()
        response.on('end', () => {
          if (response.statusCode === 200) health.push(performance.now() - started)
          else healthFailures += 1
          resolve()
        })
      })
      request.on('timeout', () => { request.destroy(new Error('timeout')) })
      request.on('error', () => { healthFailures += 1; resolve() })
    })
    await sleep(options.healthEveryMs || 100)
  }
}
const prober = options.health ? probeHealth() : Promise.resolve()

const until = performance.now() + (options.durationMs || 10000)
let index = 0
while (performance.now() < until) {
  const [peer, name] = index % 2 === 0 ? [a, 'a'] : [b, 'b']
  const key = `${name}:${index}`
  sentAt.set(key, performance.now())
  peer.doc.getMap('ticks').set(key, index)
  index += 1
  await sleep(options.editEveryMs || 50)
}
// Let the last edits arrive, then compare the two documents.
const settle = performance.now() + 5000
while (seen.size < index && performance.now() < settle) await sleep(20)
running = false
await prober
const sortedTicks = (peer) => JSON.stringify(Object.entries(peer.doc.getMap('ticks').toJSON()).sort())
const equal = sortedTicks(a) === sortedTicks(b)
const late = latencies.filter((ms) => ms > 2000).length
a.provider.destroy()
b.provider.destroy()
process.stdout.write(JSON.stringify({
  edits: index,
  seen: seen.size,
  within2s: latencies.length - late,
  p50: percentile(latencies, 50),
  p99: percentile(latencies, 99),
  max: percentile(latencies, 100),
  equal,
  worst: worst.sort((x, y) => y[0] - x[0]).slice(0, 5),
  health: {
    count: health.length,
    failures: healthFailures,
    p50: percentile(health, 50),
    p99: percentile(health, 99),
    max: percentile(health, 100)
  }
}) + '\n')
process.exit(0)
