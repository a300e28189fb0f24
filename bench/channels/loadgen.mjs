// Load generator of the channel benchmark: captify-ws channels beside Socket.IO, the same
// scenarios, lean clients on raw `ws` for both (captify's channel protocol; Engine.IO v4 /
// Socket.IO v5 frames on the WebSocket transport), one JSON line of results.
//
//   node loadgen.mjs --target captify|socketio --url http://127.0.0.1:PORT --server-pid PID
//        --scenario fanout --subscribers 1000 --publications 200 --rate 20 --probes 50
//        --scenario recovery --missed 1000
//
// fanout: N subscribers on one channel/room; a publisher sends K publications at R per second
// (captify: POST /api/v1/publish on a keep-alive connection; Socket.IO: an emit from a
// publisher socket). Every subscriber must receive every publication. Latency = receipt time
// at one of P probe subscribers − send time (same clock); server CPU from /proc/PID/stat from
// the first publication until every copy arrived, divided by the copies delivered.
//
// recovery: a subscriber holds a position (captify: its offset; Socket.IO: the offset of one
// packet received, which connection-state recovery needs), drops its connection, K
// publications are made, and it reconnects: time from the new socket to the last missed
// publication received, and the bytes it received meanwhile.
import WebSocket from 'ws'
import http from 'node:http'
import { readFileSync } from 'node:fs'

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, index, all) => {
  if (arg.startsWith('--')) pairs.push([arg.slice(2), all[index + 1] && !all[index + 1].startsWith('--') ? all[index + 1] : 'true'])
  return pairs
}, []))
const target = args.target
const base = args.url
const wsBase = base.replace(/^http/, 'ws')
const serverPid = Number(args['server-pid'] || 0)
const scenario = args.scenario || 'fanout'
const N = Number(args.subscribers || 1000)
const K = Number(args.publications || 200)
const RATE = Number(args.rate || 20)
const PROBES = Math.min(N, Number(args.probes || 50))
const MISSED = Number(args.missed || 1000)
const SETTLE_MS = Number(args['settle-s'] || 30) * 1000
const room = `bench-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
const channel = `workflow:${room}`

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const now = () => performance.now()

function cpuSeconds (pid) {
  if (!pid) return null
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(rest[11]) + Number(rest[12])) / 100
}

function percentiles (samples) {
  if (!samples.length) return null
  const sorted = Float64Array.from(samples).sort()
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]
  const r = (x) => Math.round(x * 1000) / 1000
  return { n: sorted.length, p50: r(q(0.5)), p90: r(q(0.9)), p99: r(q(0.99)), max: r(sorted[sorted.length - 1]) }
}

async function waitFor (predicate, timeoutMs, what) {
  const deadline = now() + timeoutMs
  while (!predicate()) {
    if (now() > deadline) throw new Error(`timeout: ${what}`)
    await sleep(5)
  }
}

// -- captify-ws ------------------------------------------------------------------------------

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })

function post (path, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body)
    const request = http.request(base + path, {
      method: 'POST', agent, headers: { 'content-type': 'application/json', authorization: `Bearer ${args['api-key'] || 'bench'}`, 'content-length': Buffer.byteLength(data) }
    }, (response) => {
      let text = ''
      response.on('data', (chunk) => { text += chunk })
      response.on('end', () => (response.statusCode === 200 ? resolve(JSON.parse(text)) : reject(new Error(`${response.statusCode} ${text}`))))
    })
    request.on('error', reject)
    request.end(data)
  })
}

class CaptifySubscriber {
  constructor (probe) {
    this.probe = probe
    this.count = 0
    this.bytes = 0
    this.latencies = []
    this.offset = undefined
    this.epoch = undefined
    this.answered = false
  }

  open (since) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${wsBase}/ws/workflow`, { perMessageDeflate: false })
      this.ws = ws
      ws.on('open', () => {
        const message = { type: 'subscribe', id: 1, channel }
        if (since) message.since = since
        ws.send(JSON.stringify(message))
      })
      ws.on('message', (data) => {
        this.bytes += data.length
        if (!this.answered) {
          const answer = JSON.parse(data)
          if (answer.type !== 'subscribed') { reject(new Error(String(data))); return }
          this.answered = true
          this.offset = answer.offset
          this.epoch = answer.epoch
          resolve(answer)
          return
        }
        this.count++
        if (this.probe) {
          const pub = JSON.parse(data)
          this.latencies.push(now() - pub.data.t)
          this.offset = pub.offset
        }
      })
      ws.on('error', reject)
    })
  }
}

const captify = {
  async subscriber (probe) { const s = new CaptifySubscriber(probe); await s.open(); return s },
  async publisher () { return { publish: (data) => post('/api/v1/publish', { channel, event: 'pub', data }) } },
  async prepareRecovery () {
    const s = new CaptifySubscriber(true)
    await s.open()
    const since = { offset: s.offset, epoch: s.epoch }
    s.ws.terminate()
    return { since }
  },
  async publishMissed (count) {
    for (let start = 0; start < count; start += 100) {
      const publications = []
      for (let i = start; i < Math.min(count, start + 100); i++) publications.push({ channel, event: 'pub', data: { t: 0, i } })
      await post('/api/v1/publish/batch', { publications })
    }
  },
  async recover ({ since }, count) {
    const s = new CaptifySubscriber(false)
    const t0 = now()
    const answer = await s.open(since)
    await waitFor(() => s.count >= count, SETTLE_MS, 'recovered publications')
    const ms = now() - t0
    s.ws.close()
    return { ms, bytes: s.bytes, received: s.count, recovered: answer.recovered }
  }
}

// -- Socket.IO (Engine.IO v4, Socket.IO protocol v5, WebSocket transport) -------------------

class SocketIOClient {
  constructor (probe) {
    this.probe = probe
    this.count = 0
    this.bytes = 0
    this.latencies = []
    this.pid = undefined
    this.offset = undefined
    this.connected = false
    this.acks = new Map()
    this.nextAck = 1
  }

  open (auth) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${wsBase}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false })
      this.ws = ws
      ws.on('message', (raw) => {
        this.bytes += raw.length
        const text = raw.toString()
        const type = text[0]
        if (type === '0') { ws.send(auth ? '40' + JSON.stringify(auth) : '40'); return }
        if (type === '2') { ws.send('3'); return }
        if (type !== '4') return
        const kind = text[1]
        if (kind === '0') { // CONNECT answer: {sid, pid}
          const body = JSON.parse(text.slice(2))
          this.pid = body.pid
          this.connected = true
          resolve(body)
        } else if (kind === '2') { // EVENT ["pub", data, offset]
          this.count++
          if (this.probe) {
            const packet = JSON.parse(text.slice(2))
            this.latencies.push(now() - packet[1].t)
            this.offset = packet[packet.length - 1]
          }
        } else if (kind === '3') { // ACK
          const match = /^43(\d+)/.exec(text)
          const ack = match && this.acks.get(Number(match[1]))
          if (ack) ack()
        } else if (kind === '4') reject(new Error(text))
      })
      ws.on('error', reject)
    })
  }

  emit (...packet) { this.ws.send('42' + JSON.stringify(packet)) }

  emitWithAck (...packet) {
    const id = this.nextAck++
    return new Promise((resolve) => {
      this.acks.set(id, resolve)
      this.ws.send('42' + id + JSON.stringify(packet))
    })
  }
}

const socketio = {
  async subscriber (probe) {
    const s = new SocketIOClient(probe)
    await s.open()
    await s.emitWithAck('join', room)
    return s
  },
  async publisher () {
    const p = new SocketIOClient(false)
    await p.open()
    return { publish: async (data) => p.emit('publish', room, data), client: p }
  },
  async prepareRecovery () {
    const s = new SocketIOClient(true)
    await s.open()
    await s.emitWithAck('join', room)
    const p = await socketio.publisher()
    this._publisher = p
    p.publish({ t: now(), i: -1 }) // recovery needs one packet received (its offset)
    await waitFor(() => s.count === 1, 5000, 'the first packet')
    const state = { pid: s.pid, offset: s.offset }
    s.ws.terminate() // an unclean close: the server keeps the session
    await sleep(50)
    return state
  },
  async publishMissed (count) {
    const p = this._publisher
    for (let i = 0; i < count; i++) p.publish({ t: 0, i })
    // the publisher's own socket must have sent everything before the reconnect
    await p.client.emitWithAck('join', room + '-sync')
  },
  async recover (state, count) {
    const s = new SocketIOClient(false)
    const t0 = now()
    const answer = await s.open({ pid: state.pid, offset: state.offset })
    await waitFor(() => s.count >= count, SETTLE_MS, 'recovered packets')
    const ms = now() - t0
    s.ws.close()
    return { ms, bytes: s.bytes, received: s.count, recovered: answer.pid === state.pid }
  }
}

// -- scenarios -------------------------------------------------------------------------------

const impl = target === 'captify' ? captify : socketio

async function fanout () {
  const subscribers = []
  const probeEvery = Math.max(1, Math.floor(N / PROBES))
  for (let i = 0; i < N; i += 50) {
    const batch = []
    for (let j = i; j < Math.min(N, i + 50); j++) batch.push(impl.subscriber(j % probeEvery === 0))
    subscribers.push(...await Promise.all(batch))
  }
  const publisher = await impl.publisher()
  await sleep(500)
  const cpu0 = cpuSeconds(serverPid)
  const t0 = now()
  for (let i = 0; i < K; i++) {
    const due = t0 + (i * 1000) / RATE
    const wait = due - now()
    if (wait > 0) await sleep(wait)
    await publisher.publish({ t: now(), i })
  }
  const expected = N * K
  const delivered = () => subscribers.reduce((sum, s) => sum + s.count, 0)
  let settled = true
  try { await waitFor(() => delivered() >= expected, SETTLE_MS, 'every copy') } catch (_) { settled = false }
  const seconds = (now() - t0) / 1000
  const cpu = cpuSeconds(serverPid) - cpu0
  const copies = delivered()
  const latencies = subscribers.flatMap((s) => s.latencies)
  for (const s of subscribers) s.ws.terminate()
  if (publisher.client) publisher.client.ws.terminate()
  return {
    copies,
    copies_missing: expected - copies,
    settled,
    seconds: Math.round(seconds * 1000) / 1000,
    server_cpu_s: Math.round(cpu * 1000) / 1000,
    server_cpu_us_per_copy: Math.round((cpu / copies) * 1e6 * 100) / 100,
    latency_ms: percentiles(latencies)
  }
}

async function recovery () {
  const state = await impl.prepareRecovery()
  await impl.publishMissed(MISSED)
  await sleep(200)
  const cpu0 = cpuSeconds(serverPid)
  const result = await impl.recover(state, MISSED)
  const cpu = cpuSeconds(serverPid) - cpu0
  return { missed: MISSED, ...result, ms: Math.round(result.ms * 100) / 100, server_cpu_ms: Math.round(cpu * 1000) }
}

const started = now()
const result = scenario === 'fanout' ? await fanout() : await recovery()
console.log(JSON.stringify({
  target, scenario, params: { subscribers: N, publications: K, rate: RATE, probes: PROBES, missed: MISSED },
  ...result, wall_s: Math.round((now() - started) / 10) / 100
}))
process.exit(0)
