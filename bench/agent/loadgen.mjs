// Load generator of the agent benchmark: N lean subscribers of one agent run on /ws/agent,
// one JSON line of results.
//
//   node loadgen.mjs --url http://127.0.0.1:PORT --server-pid PID --subscribers 1000
//        --tokens 2000 --rate 100 --probes 50
//
// Every subscriber must receive every token of the run (counted from the deltas: each token is
// "<i>:<unix ms> ") and the terminal event. Latency = receipt time at one of P probe
// subscribers − the time the producer made the token (same clock). Server CPU from
// /proc/PID/stat from the start of the run until every subscriber has run.completed, divided
// by the tokens delivered (tokens × subscribers).
import { readFileSync } from 'node:fs'
import http from 'node:http'

const { default: WebSocket } = await import(new URL('../../tests/js/node_modules/ws/wrapper.mjs', import.meta.url))

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, index, all) => {
  if (arg.startsWith('--')) pairs.push([arg.slice(2), all[index + 1]])
  return pairs
}, []))
const base = args.url
const N = Number(args.subscribers || 1000)
const TOKENS = Number(args.tokens || 2000)
const RATE = Number(args.rate || 100)
const PROBES = Math.min(N, Number(args.probes || 50))
const serverPid = Number(args['server-pid'] || 0)
const runId = `bench-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const wallMs = () => performance.timeOrigin + performance.now()

function cpuSeconds (pid) {
  const rest = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(rest[11]) + Number(rest[12])) / 100
}

function percentiles (samples) {
  const sorted = Float64Array.from(samples).sort()
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]
  const r = (x) => Math.round(x * 100) / 100
  return { n: sorted.length, p50: r(q(0.5)), p90: r(q(0.9)), p99: r(q(0.99)), max: r(sorted[sorted.length - 1]) }
}

function post (path, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body)
    const request = http.request(base + path, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (response) => {
      let text = ''
      response.on('data', (chunk) => { text += chunk })
      response.on('end', () => (response.statusCode === 200 ? resolve(JSON.parse(text)) : reject(new Error(`${response.statusCode} ${text}`))))
    })
    request.on('error', reject)
    request.end(data)
  })
}

const wsUrl = base.replace(/^http/, 'ws') + '/ws/agent'
const subscribers = []
const latencies = []
let frames = 0
let completed = 0
let ending = null
function subscribe (index) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl)
    const sub = { ws, tokens: 0, done: false }
    ws.on('open', () => ws.send(JSON.stringify({ type: 'subscribe', id: 1, channel: `agent:${runId}` })))
    ws.on('message', (raw) => {
      const message = JSON.parse(raw)
      if (message.type === 'subscribed') { resolve(sub); return }
      if (message.type !== 'pub') return
      frames++
      if (message.event === 'token') {
        const now = wallMs()
        const pieces = message.data.delta.split(' ')
        for (const piece of pieces) {
          if (!piece) continue
          sub.tokens++
          if (index < PROBES) latencies.push(now - Number(piece.split(':')[1]))
        }
      } else if (message.event === 'run.completed' && !sub.done) {
        sub.done = true
        completed++
        ending = message.data
      }
    })
    ws.on('error', reject)
  })
}

for (let i = 0; i < N; i += 50) {
  const batch = []
  for (let k = i; k < Math.min(N, i + 50); k++) batch.push(subscribe(k))
  subscribers.push(...await Promise.all(batch))
}
await sleep(500)
const cpuStart = cpuSeconds(serverPid)
const started = performance.now()
await post('/bench/run', { run_id: runId, tokens: TOKENS, rate: RATE })
const deadline = performance.now() + (TOKENS / RATE) * 1000 + Number(args['grace-s'] || 60) * 1000
while (completed < N && performance.now() < deadline) await sleep(20)
const elapsed = performance.now() - started
const cpu = cpuSeconds(serverPid) - cpuStart
const delivered = subscribers.reduce((sum, s) => sum + s.tokens, 0)
for (const sub of subscribers) sub.ws.terminate()
const stats = await new Promise((resolve, reject) => {
  http.get(`${base}/bench/stats/${runId}`, (response) => {
    let text = ''
    response.on('data', (chunk) => { text += chunk })
    response.on('end', () => resolve(JSON.parse(text)))
  }).on('error', reject)
})
// run.started, message.started and run.completed are publications too
const publications = stats.publications + (ending ? 0 : 1)
console.log(JSON.stringify({
  subscribers: N,
  tokens: TOKENS,
  rate: RATE,
  publications,
  coalescing_factor: publications ? Math.round((TOKENS / (publications - 3)) * 100) / 100 : null,
  tokens_delivered: delivered,
  tokens_missing: TOKENS * N - delivered,
  completed,
  finished: completed === N,
  producer_status: stats.status,
  frames,
  elapsed_ms: Math.round(elapsed),
  server_cpu_s: Math.round(cpu * 100) / 100,
  server_cpu_us_per_token: Math.round((cpu * 1e6 / delivered) * 1000) / 1000,
  latency_ms: percentiles(latencies)
}))
process.exit(0)
