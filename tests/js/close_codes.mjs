// Opens real y-websocket WebsocketProviders one after another and reports the close code each
// one received first (tests/test_close_codes.py). Every provider sends sync step 1 and its
// awareness as soon as the socket opens, so the server's close always meets a client that is
// sending at that moment.
//
//   node close_codes.mjs '{"url":"ws://…/ws/fabric","doc":"d","tries":100,"parallel":10,
//                          "params":{},"text":0,"awareness":16}'
//
// Prints one JSON line: {"codes":[4401,…],"reasons":["…",…]}. `text` > 0 inserts that many
// characters right after open (to provoke 1009); `awareness` sets a presence field of that many
// characters; `garbage` sends a malformed y-websocket message right after open (1007).
// `hold` opens every provider at once, prints {"ready":true} once all are synced, and keeps them
// sending presence every 20 ms until the server closes them (1012 on restart, 1000 on delete).

import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'

const options = JSON.parse(process.argv[2])
const tries = options.tries || 100
const parallel = options.parallel || 10
const timeoutMs = options.timeoutMs || 10000

function once () {
  return new Promise((resolve) => {
    const ydoc = new Y.Doc()
    const provider = new WebsocketProvider(options.url, options.doc, ydoc, {
      WebSocketPolyfill: WebSocket, disableBc: true, params: options.params || {}, connect: false
    })
    provider.awareness.setLocalStateField('user', { name: 'x'.repeat(options.awareness || 16) })
    let done = false
    const finish = (code, reason) => {
      if (done) return
      done = true
      clearTimeout(timer)
      provider.shouldConnect = false
      provider.destroy()
      resolve({ code, reason })
    }
    const timer = setTimeout(() => finish(null, `timeout: connected=${provider.wsconnected} ` +
      `readyState=${provider.ws ? provider.ws.readyState : 'none'}`), timeoutMs)
    provider.on('connection-close', (event) => finish(event ? event.code : null,
      event && event.reason ? String(event.reason) : ''))
    provider.on('status', ({ status }) => {
      if (status === 'connected' && options.text) {
        ydoc.getText('text').insert(0, 'y'.repeat(options.text))
      }
      if (status === 'connected' && options.garbage) {
        provider.ws.send(new Uint8Array([0x00, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff]))
      }
    })
    provider.connect()
    if (options.hold) held.push({ provider, ydoc })
  })
}

const held = []
if (options.hold) {
  const pending = Array.from({ length: tries }, once)
  const deadline = Date.now() + timeoutMs
  while (held.length < tries || !held.every(({ provider }) => provider.synced)) {
    if (Date.now() > deadline) break
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  const ticker = setInterval(() => {
    for (const { provider } of held) provider.awareness.setLocalStateField('tick', Date.now())
  }, 20)
  process.stdout.write(JSON.stringify({ ready: true, synced: held.filter(({ provider }) => provider.synced).length }) + '\n')
  const results = await Promise.all(pending)
  clearInterval(ticker)
  process.stdout.write(JSON.stringify({
    codes: results.map((r) => r.code), reasons: results.map((r) => r.reason)
  }) + '\n')
  process.exit(0)
}

const results = []
let next = 0
async function worker () {
  while (next < tries) {
    next += 1
    results.push(await once())
  }
}
await Promise.all(Array.from({ length: Math.min(parallel, tries) }, worker))
process.stdout.write(JSON.stringify({
  codes: results.map((r) => r.code), reasons: results.map((r) => r.reason)
}) + '\n')
process.exit(0)
