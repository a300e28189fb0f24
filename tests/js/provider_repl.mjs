// A line-oriented driver for real y-websocket WebsocketProviders, used by the Python tests.
//
// Reads one JSON command per line on stdin and answers one JSON line on stdout with the same
// "id". Each provider has a name; it owns a Y.Doc with a Y.Text "text", a Y.Map "map" and a
// Y.XmlFragment "xml". Providers use `ws` as WebSocketPolyfill and disableBc: true, so clients
// in this process can only sync through the server.
//
//   node provider_repl.mjs [--impl v3|v2|v1]
//
// Commands: open, waitSynced, insert, deleteText, unicodeEdits, mapSet, xmlInsert, randomEdits,
// decode, delta, snapshot, setAwareness,
// awareness, disconnect, connect, close, waitUntil, stateUpdate, madeUpdates, applyUpdate, status,
// exit.

import './warp.mjs' // first: CAPTIFY_TIME_WARP speeds up this process's clock
import * as Y from 'yjs'
import WebSocket from 'ws'
import { mulberry32, serve, sleep, waitFor } from './repl.mjs'
import { prosemirrorJSONToYXmlFragment, yXmlFragmentToProsemirrorJSON } from 'y-prosemirror'
import { schema as pmSchema } from './pm_schema.mjs'

let tiptap = null
async function tiptapSchema () {
  if (!tiptap) {
    const { getSchema } = await import('@tiptap/core')
    const { default: StarterKit } = await import('@tiptap/starter-kit')
    tiptap = getSchema([StarterKit])
  }
  return tiptap
}

const implArg = process.argv.indexOf('--impl')
const impl = implArg >= 0 ? process.argv[implArg + 1] : 'v3'
const modules = { v3: 'y-websocket', v2: 'y-websocket-v2', v1: 'y-websocket-v1' }
const { WebsocketProvider } = await import(modules[impl])

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

function awarenessStates (entry) {
  const out = {}
  for (const [id, state] of entry.provider.awareness.getStates()) out[id] = state
  return out
}


const commands = {
  async open ({ name, url, doc, params, awareness }) {
    const ydoc = new Y.Doc()
    const provider = new WebsocketProvider(url, doc, ydoc, {
      WebSocketPolyfill: WebSocket, disableBc: true, params: params || {}
    })
    if (awareness === null) provider.awareness.setLocalState(null)
    const entry = { doc: ydoc, provider, synced: false, closes: [], seen: [], made: [] }
    // Every update this client made itself (not received from the server), in order.
    ydoc.on('update', (update, origin) => { if (origin !== provider) entry.made.push(update) })
    // Every remote awareness change, with carets resolved to indexes of the text now.
    provider.awareness.on('change', ({ added, updated, removed }) => {
      for (const id of [...added, ...updated]) {
        if (id === ydoc.clientID) continue
        const state = provider.awareness.getStates().get(id)
        let caret = null
        if (state && state.cursor && state.cursor.head) {
          const abs = Y.createAbsolutePositionFromRelativePosition(
            Y.createRelativePositionFromJSON(state.cursor.head), ydoc)
          caret = abs ? abs.index : null
        }
        entry.seen.push({ id, name: state && state.user ? state.user.name : null, caret })
      }
      for (const id of removed) entry.seen.push({ id, removed: true })
    })
    provider.on('sync', (synced) => { if (synced) entry.synced = true })
    provider.on('connection-close', (event) => { entry.closes.push(event ? event.code : null) })
    providers.set(name, entry)
    return { clientID: ydoc.clientID }
  },
  async waitSynced ({ name, timeout }) {
    const entry = get(name)
    await waitFor(() => entry.synced && entry.provider.wsconnected, timeout || 10000, 'sync')
    return { synced: true }
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
  async xmlInsert ({ name, tag, text }) {
    const el = new Y.XmlElement(tag)
    el.insert(0, [new Y.XmlText(text)])
    const frag = get(name).doc.getXmlFragment('xml')
    frag.insert(frag.length, [el])
    return {}
  },
  async randomEdits ({ name, count, seed, delayMs }) {
    const entry = get(name)
    const rand = mulberry32(seed || 1)
    const doc = entry.doc
    for (let i = 0; i < count; i++) {
      const r = rand()
      const text = doc.getText('text')
      if (r < 0.45) {
        text.insert(Math.floor(rand() * (text.length + 1)), `${name}${i};`)
      } else if (r < 0.6 && text.length > 0) {
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
  // Insert count tokens "<name>:<i>;" at random token boundaries (no deletes), delayMs apart,
  // so that every token stays whole in the merged text.
  async insertTokens ({ name, count, seed, delayMs }) {
    const entry = get(name)
    const rand = mulberry32(seed || 1)
    const text = entry.doc.getText('text')
    for (let i = 0; i < count; i++) {
      if (!providers.has(name)) break
      const current = text.toString()
      const boundaries = [0]
      for (let k = 0; k < current.length; k++) if (current[k] === ';') boundaries.push(k + 1)
      text.insert(boundaries[Math.floor(rand() * boundaries.length)], `${name}:${i};`)
      if (delayMs) await sleep(delayMs)
    }
    return {}
  },
  // Random edits of the Y.Text "text": insertions at UTF-16 indices anywhere, inside surrogate
  // pairs included, mixing astral characters, CJK, accents and combining marks; deletions of
  // random ranges, often of one code unit (half of a pair); formatting of whole characters.
  async unicodeEdits ({ name, count, seed, delayMs }) {
    const entry = get(name)
    const rand = mulberry32(seed || 1)
    const alphabet = ['a', 'é', 'e\u0301', '👷', '😀', '𝕏', '中', '文', '🇫🇷', ' ', 'ß']
    for (let i = 0; i < count; i++) {
      if (!providers.has(name)) break
      const text = entry.doc.getText('text')
      const r = rand()
      if (r < 0.55 || text.length === 0) {
        let piece = ''
        for (let k = 1 + Math.floor(rand() * 4); k > 0; k--) piece += alphabet[Math.floor(rand() * alphabet.length)]
        text.insert(Math.floor(rand() * (text.length + 1)), piece)
      } else if (r < 0.85) {
        const at = Math.floor(rand() * text.length)
        text.delete(at, rand() < 0.6 ? 1 : Math.min(text.length - at, 1 + Math.floor(rand() * 4)))
      } else {
        // Formatting at code point boundaries only: formatting half a pair makes Yjs clients
        // diverge among themselves (docs/yjs-interop.md), so nothing could match them.
        const bounds = [0]
        for (const char of text.toString()) bounds.push(bounds[bounds.length - 1] + char.length)
        const from = Math.floor(rand() * (bounds.length - 1))
        const to = Math.min(bounds.length - 1, from + 1 + Math.floor(rand() * 3))
        text.format(bounds[from], bounds[to] - bounds[from], { bold: rand() < 0.7 ? true : null })
      }
      if (delayMs) await sleep(delayMs)
    }
    return {}
  },
  async deleteText ({ name, index, length }) {
    get(name).doc.getText('text').delete(index, length)
    return {}
  },
  // Decode a Yjs update (base64) into a fresh Y.Doc: what a client that loads it holds.
  async decode ({ update }) {
    const doc = new Y.Doc()
    Y.applyUpdate(doc, Buffer.from(update, 'base64'))
    return { text: doc.getText('text').toString(), delta: doc.getText('text').toDelta(), pending: doc.store.pendingStructs !== null }
  },
  async delta ({ name }) {
    return { delta: get(name).doc.getText('text').toDelta() }
  },
  // y-prosemirror's own view of a Y.XmlFragment (what a Tiptap/y-prosemirror editor shows).
  // With schema 'tiptap': the document a Tiptap 3 editor (StarterKit, Collaboration) builds
  // from the fragment, through @tiptap/y-tiptap and getSchema([StarterKit]).
  async pmJSON ({ name, fragment, schema }) {
    const frag = get(name).doc.getXmlFragment(fragment || 'prosemirror')
    if (schema === 'tiptap') {
      const { yXmlFragmentToProseMirrorRootNode } = await import('@tiptap/y-tiptap')
      return { doc: yXmlFragmentToProseMirrorRootNode(frag, await tiptapSchema()).toJSON() }
    }
    return { doc: yXmlFragmentToProsemirrorJSON(frag) }
  },
  // Fill an empty fragment from ProseMirror JSON, as y-prosemirror does (schema 'tiptap': as
  // a Tiptap 3 editor does, @tiptap/y-tiptap with StarterKit's schema).
  async pmInit ({ name, fragment, doc, schema }) {
    const frag = get(name).doc.getXmlFragment(fragment || 'prosemirror')
    if (schema === 'tiptap') {
      const yTiptap = await import('@tiptap/y-tiptap')
      yTiptap.prosemirrorJSONToYXmlFragment(await tiptapSchema(), doc, frag)
    } else {
      prosemirrorJSONToYXmlFragment(pmSchema, doc, frag)
    }
    return {}
  },
  // Tiptap 3 StarterKit's schema as @tiptap/core builds it (node/mark names and attributes).
  async tiptapSchema () {
    const schema = await tiptapSchema()
    const attrs = (spec) => Object.fromEntries(Object.entries(spec.attrs || {})
      .map(([key, attr]) => [key, { default: attr.default === undefined ? null : attr.default }]))
    const specs = (types) => Object.values(types).map((type) => ({
      name: type.name, attrs: attrs(type.spec), content: type.spec.content || null,
      group: type.spec.group || null }))
    return { nodes: specs(schema.nodes), marks: specs(schema.marks), topNode: schema.topNodeType.name }
  },
  // Type into the text of the block at `block` (what an editor bound to Yjs does).
  async pmType ({ name, fragment, block, index, text }) {
    const frag = get(name).doc.getXmlFragment(fragment || 'prosemirror')
    const element = frag.get(block || 0)
    let ytext = element.get(0)
    if (!ytext) { ytext = new Y.XmlText(); element.insert(0, [ytext]) }
    ytext.insert(index || 0, text)
    return {}
  },
  async snapshot ({ name }) {
    return snapshot(get(name))
  },
  async stateUpdate ({ name }) {
    return { update: Buffer.from(Y.encodeStateAsUpdate(get(name).doc)).toString('base64') }
  },
  // The updates this client made itself, base64, oldest first.
  async madeUpdates ({ name }) {
    return { updates: get(name).made.map((u) => Buffer.from(u).toString('base64')) }
  },
  async applyUpdate ({ name, update }) {
    Y.applyUpdate(get(name).doc, Buffer.from(update, 'base64'))
    return {}
  },
  async setAwareness ({ name, state }) {
    get(name).provider.awareness.setLocalState(state)
    return {}
  },
  async awareness ({ name }) {
    const entry = get(name)
    return { states: awarenessStates(entry), clientID: entry.doc.clientID }
  },
  async awarenessSeen ({ name }) {
    return { seen: get(name).seen }
  },
  async disconnect ({ name }) {
    get(name).provider.disconnect()
    return {}
  },
  async connect ({ name }) {
    const entry = get(name)
    entry.synced = false
    entry.provider.connect()
    return {}
  },
  async status ({ name }) {
    const entry = get(name)
    // silentMs: how long ago the provider last received a message (y-websocket closes the
    // socket when this passes its 30 s messageReconnectTimeout)
    return {
      synced: entry.synced,
      connected: entry.provider.wsconnected,
      closes: entry.closes,
      silentMs: Date.now() - entry.provider.wsLastMessageReceived
    }
  },
  async close ({ name }) {
    const entry = get(name)
    entry.provider.destroy()
    entry.doc.destroy()
    providers.delete(name)
    return {}
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
  async exit () {
    for (const entry of providers.values()) entry.provider.destroy()
    setTimeout(() => process.exit(0), 10)
    return {}
  }
}

serve(commands, { impl })
