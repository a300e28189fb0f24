// A line-oriented driver for real @hocuspocus/provider HocuspocusProviders (2.15, 3.4, 4.x),
// used by the Python tests (same line protocol as provider_repl.mjs, see repl.mjs).
//
// Sockets (HocuspocusProviderWebsocket) and providers have names. A provider owns a Y.Doc with
// a Y.Text "text", a Y.Map "map" and a Y.XmlFragment "xml"; it opens on a named socket (several
// providers share it: many documents on one WebSocket) or on its own. Its token comes from a
// function reading `entry.token`, so `setToken` changes what the next token request answers.
//
//   node hocuspocus_repl.mjs
//
// Commands: socket, open, waitSynced, waitUnsynced0, insert, mapSet, randomEdits, snapshot,
// state, setAwareness, awareness, sendStateless, setToken, detach, attach, destroy,
// disconnectSocket, connectSocket, socketStatus, waitUntil, waitState, exit.

import * as Y from 'yjs'
import WebSocket from 'ws'
import { mulberry32, serve, sleep, waitFor } from './repl.mjs'
import * as v2 from '@hocuspocus/provider-v2'
import * as v3 from '@hocuspocus/provider-v3'
import * as v4 from '@hocuspocus/provider'

const impls = { v2, v3, v4 }
const sockets = new Map()
const providers = new Map()

function get (name) {
  const p = providers.get(name)
  if (!p) throw new Error(`no provider named ${name}`)
  return p
}

function snapshot (entry) {
  const doc = entry.doc
  return {
    text: doc.getText('text').toString(),
    map: doc.getMap('map').toJSON(),
    xml: doc.getXmlFragment('xml').toString(),
    clientID: doc.clientID
  }
}

function state (entry) {
  const p = entry.provider
  return {
    synced: p.isSynced,
    authenticated: p.isAuthenticated,
    scope: p.authorizedScope ?? null,
    unsynced: p.unsyncedChanges,
    hasUnsyncedChanges: p.hasUnsyncedChanges,
    authenticatedEvents: entry.authenticated,
    failures: entry.failures,
    closes: entry.closes,
    stateless: entry.stateless,
    tokenRequests: entry.tokenRequests
  }
}

function socketOptions (extra) {
  return { WebSocketPolyfill: WebSocket, ...extra }
}

const commands = {
  async socket ({ name, url, impl, messageReconnectTimeout }) {
    const { HocuspocusProviderWebsocket } = impls[impl || 'v4']
    const extra = messageReconnectTimeout ? { messageReconnectTimeout } : {}
    const ws = new HocuspocusProviderWebsocket(socketOptions({ url, ...extra }))
    const entry = { ws, closes: [], statuses: [] }
    ws.on('close', ({ event }) => entry.closes.push(event ? event.code : null))
    ws.on('status', ({ status }) => entry.statuses.push(status))
    sockets.set(name, entry)
    return {}
  },
  async open ({ name, socket, url, doc, impl, token, awareness, sessionAwareness, forceSyncInterval }) {
    const { HocuspocusProvider } = impls[impl || 'v4']
    const ydoc = new Y.Doc()
    const entry = {
      doc: ydoc, token: token ?? null, impl: impl || 'v4', authenticated: [], failures: [],
      closes: [], stateless: [], tokenRequests: 0, synced: false
    }
    const options = {
      name: doc,
      document: ydoc,
      token: () => { entry.tokenRequests += 1; return entry.token },
      onSynced: () => { entry.synced = true },
      onAuthenticated: (data) => entry.authenticated.push(data && data.scope ? data.scope : null),
      onAuthenticationFailed: ({ reason }) => entry.failures.push(reason),
      onClose: ({ event }) => entry.closes.push({ code: event.code, reason: event.reason }),
      onStateless: ({ payload }) => entry.stateless.push(payload)
    }
    if (token === undefined || token === null) options.token = null
    if (awareness === null) options.awareness = null
    if (sessionAwareness) options.sessionAwareness = true
    if (forceSyncInterval) options.forceSyncInterval = forceSyncInterval
    if (socket) {
      options.websocketProvider = sockets.get(socket).ws
    } else if (entry.impl === 'v2') {
      // v2 builds its own socket without passing WebSocketPolyfill on: give it one.
      options.websocketProvider = new impls.v2.HocuspocusProviderWebsocket(socketOptions({ url }))
      entry.ownSocket = options.websocketProvider
    } else {
      Object.assign(options, socketOptions({ url }))
    }
    const provider = new HocuspocusProvider(options)
    entry.provider = provider
    providers.set(name, entry)
    // v3 and v4 providers on a shared socket attach themselves only when asked to.
    if (socket && entry.impl !== 'v2') provider.attach()
    return { clientID: ydoc.clientID }
  },
  async waitSynced ({ name, timeout }) {
    const entry = get(name)
    await waitFor(() => entry.provider.isSynced, timeout || 10000, `${name} synced`)
    return state(entry)
  },
  async waitUnsynced0 ({ name, timeout }) {
    const entry = get(name)
    await waitFor(() => entry.provider.isSynced && !entry.provider.hasUnsyncedChanges,
      timeout || 10000, `${name} has no unsynced changes`)
    return state(entry)
  },
  async insert ({ name, index, text }) {
    const t = get(name).doc.getText('text')
    t.insert(index === undefined ? t.length : index, text)
    return {}
  },
  async mapSet ({ name, key, value }) {
    get(name).doc.getMap('map').set(key, value)
    return {}
  },
  async randomEdits ({ name, count, seed, delayMs }) {
    const rand = mulberry32(seed || 1)
    const doc = get(name).doc
    for (let i = 0; i < count; i++) {
      const r = rand()
      const text = doc.getText('text')
      if (r < 0.5) {
        text.insert(Math.floor(rand() * (text.length + 1)), `${name}${i};`)
      } else if (r < 0.65 && text.length > 0) {
        const at = Math.floor(rand() * text.length)
        text.delete(at, Math.min(3, text.length - at))
      } else if (r < 0.85) {
        doc.getMap('map').set(`k${Math.floor(rand() * 10)}`, `${name}-${i}`)
      } else {
        const frag = doc.getXmlFragment('xml')
        const el = new Y.XmlElement('p')
        el.insert(0, [new Y.XmlText(`${name}${i}`)])
        frag.insert(Math.floor(rand() * (frag.length + 1)), [el])
      }
      if (delayMs) await sleep(delayMs)
    }
    return {}
  },
  async snapshot ({ name }) {
    return snapshot(get(name))
  },
  async state ({ name }) {
    return state(get(name))
  },
  async setAwareness ({ name, state }) {
    get(name).provider.awareness.setLocalState(state)
    return {}
  },
  async awareness ({ name }) {
    const entry = get(name)
    const states = {}
    for (const [id, s] of entry.provider.awareness.getStates()) states[id] = s
    return { states, clientID: entry.doc.clientID }
  },
  async sendStateless ({ name, payload }) {
    get(name).provider.sendStateless(payload)
    return {}
  },
  async setToken ({ name, token }) {
    get(name).token = token
    return {}
  },
  async detach ({ name }) {
    get(name).provider.detach()
    return {}
  },
  async attach ({ name }) {
    const entry = get(name)
    entry.provider.attach()
    return {}
  },
  async destroy ({ name }) {
    const entry = get(name)
    entry.provider.destroy()
    if (entry.ownSocket) entry.ownSocket.destroy()
    providers.delete(name)
    return {}
  },
  async disconnectSocket ({ socket }) {
    sockets.get(socket).ws.disconnect()
    return {}
  },
  async connectSocket ({ socket }) {
    await sockets.get(socket).ws.connect()
    return {}
  },
  async socketStatus ({ socket }) {
    const entry = sockets.get(socket)
    return { status: entry.ws.status, closes: entry.closes, statuses: entry.statuses }
  },
  // Wait until a provider's snapshot field equals a value (JSON-compared) or contains a string.
  async waitUntil ({ name, field, equals, contains, timeout }) {
    const entry = get(name)
    const ok = () => {
      const value = snapshot(entry)[field]
      if (contains !== undefined) return typeof value === 'string' && value.includes(contains)
      return JSON.stringify(value) === JSON.stringify(equals)
    }
    await waitFor(ok, timeout || 10000, `${name}.${field}`)
    return snapshot(entry)
  },
  // Wait until a field of state() equals a value, or (for lists) has at least `length` items.
  async waitState ({ name, field, equals, length, timeout }) {
    const entry = get(name)
    const ok = () => {
      const value = state(entry)[field]
      if (length !== undefined) return value.length >= length
      return JSON.stringify(value) === JSON.stringify(equals)
    }
    await waitFor(ok, timeout || 10000, `${name}.${field}`)
    return state(entry)
  },
  async exit () {
    for (const entry of providers.values()) {
      entry.provider.destroy()
      if (entry.ownSocket) entry.ownSocket.destroy()
    }
    for (const entry of sockets.values()) entry.ws.destroy()
    setTimeout(() => process.exit(0), 10)
    return {}
  }
}

serve(commands, { impls: Object.keys(impls) })
