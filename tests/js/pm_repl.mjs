// A line-oriented driver for real prosemirror-collab editors (no browser), used by the tests.
//
// Each editor holds an EditorState with the collab plugin and talks to captify-ws over the JSON
// protocol: {"type":"doc"} on open, {"type":"steps"} to send sendableSteps, and
// receiveTransaction for every {"type":"steps"} it receives. One JSON command per stdin line;
// one JSON answer per stdout line with the same "id".
//
// Commands: open, insert, typeRandom, state, waitIdle, stale, close, exit.

import { mulberry32, serve, sleep, waitFor } from './repl.mjs'
import WebSocket from 'ws'
import { EditorState } from 'prosemirror-state'
import { Step } from 'prosemirror-transform'
import { collab, getVersion, receiveTransaction, sendableSteps } from 'prosemirror-collab'
import { schema } from './pm_schema.mjs'

const editors = new Map()


class Editor {
  constructor (name, url, doc, clientID) {
    this.name = name
    this.documentId = doc
    this.clientID = clientID
    this.state = null
    this.inflight = false
    this.errors = []
    this.received = []
    this.ws = new WebSocket(`${url}?documentId=${encodeURIComponent(doc)}&clientID=${encodeURIComponent(clientID)}`)
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve
      this.ws.on('error', reject)
    })
    this.ws.on('open', () => this.send({ type: 'doc', documentId: doc }))
    this.ws.on('message', (raw) => this.onMessage(JSON.parse(raw.toString())))
  }

  send (message) {
    this.ws.send(JSON.stringify(message))
  }

  onMessage (message) {
    if (message.type === 'doc') {
      this.state = EditorState.create({
        schema,
        doc: schema.nodeFromJSON(message.data.doc),
        plugins: [collab({ version: message.data.version, clientID: this.clientID })]
      })
      this.inflight = false
      this.resolveReady()
    } else if (message.type === 'steps' && this.state) {
      this.received.push(message.data)
      const data = message.data
      if (data.version === getVersion(this.state)) {
        const steps = data.steps.map((json) => Step.fromJSON(schema, json))
        this.state = this.state.apply(receiveTransaction(this.state, steps, data.clientIDs))
        this.inflight = false
        this.flush()
      } else if (data.version > getVersion(this.state)) {
        this.send({ type: 'steps-since', documentId: this.documentId, data: { version: getVersion(this.state) } })
      }
    } else if (message.type === 'error') {
      this.errors.push(message)
      const code = message.data && message.data.code
      if (code === 'history_trimmed') this.send({ type: 'doc', documentId: this.documentId })
      this.inflight = false
    }
  }

  flush () {
    if (this.inflight || !this.state) return
    const sendable = sendableSteps(this.state)
    if (!sendable) return
    this.inflight = true
    this.send({
      type: 'steps',
      documentId: this.documentId,
      data: { version: sendable.version, steps: sendable.steps.map((s) => s.toJSON()), clientID: sendable.clientID }
    })
  }

  insertText (text, pos) {
    const at = pos === undefined ? this.state.doc.content.size - 1 : pos
    this.state = this.state.apply(this.state.tr.insertText(text, at))
    this.flush()
  }
}

function get (name) {
  const editor = editors.get(name)
  if (!editor) throw new Error(`no editor named ${name}`)
  return editor
}


const commands = {
  async open ({ name, url, doc, clientID }) {
    const editor = new Editor(name, url, doc, clientID === undefined ? name : clientID)
    editors.set(name, editor)
    await editor.ready
    return { version: getVersion(editor.state) }
  },
  async insert ({ name, text, pos }) {
    get(name).insertText(text, pos)
    return {}
  },
  // Type `count` words "<name><i> " at random word boundaries, `delayMs` apart (words stay
  // whole, so a test can count them).
  async typeRandom ({ name, count, seed, delayMs }) {
    const editor = get(name)
    const rand = mulberry32(seed || 1)
    for (let i = 0; i < count; i++) {
      const positions = []
      editor.state.doc.descendants((node, pos) => {
        if (!node.isTextblock) return
        const text = node.textContent
        for (let k = 0; k <= text.length; k++) {
          if (k === 0 || text[k - 1] === ' ') positions.push(pos + 1 + k)
        }
      })
      editor.insertText(`${name}${i} `, positions[Math.floor(rand() * positions.length)])
      if (delayMs) await sleep(delayMs)
    }
    return {}
  },
  // Send steps built on an old version on purpose (a stale client).
  async stale ({ name, version, steps }) {
    const editor = get(name)
    editor.send({ type: 'steps', documentId: editor.documentId, data: { version, steps, clientID: editor.clientID } })
    return {}
  },
  async state ({ name }) {
    const editor = get(name)
    return {
      doc: editor.state.doc.toJSON(),
      text: editor.state.doc.textContent,
      version: getVersion(editor.state),
      pending: Boolean(sendableSteps(editor.state)),
      errors: editor.errors,
      received: editor.received.length
    }
  },
  async waitIdle ({ name, timeout }) {
    const editor = get(name)
    await waitFor(() => !editor.inflight && !sendableSteps(editor.state), timeout || 10000, `${name} idle`)
    return { version: getVersion(editor.state) }
  },
  async close ({ name }) {
    get(name).ws.close()
    editors.delete(name)
    return {}
  },
  async exit () {
    for (const editor of editors.values()) editor.ws.close()
    setTimeout(() => process.exit(0), 10)
    return {}
  }
}

serve(commands, {})
