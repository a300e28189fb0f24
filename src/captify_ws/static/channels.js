// captify-ws channels client: ESM, no dependencies. Served at /client/channels.js; types in
// /client/channels.d.ts. It does the bookkeeping of the channel protocol so that an app never
// silently misses a publication:
//
// * it keeps each channel's position {offset, epoch} (and state) in sessionStorage, so a
//   reloaded tab subscribes with `since` and gets exactly what it missed;
// * it drops publications it already has (by offset), and on a gap or another epoch it
//   resubscribes with `since`;
// * on `recovered:false` and `resync` it replaces the state with the server's;
// * it reconnects with backoff and resubscribes every channel with `since`.
//
//   import { ChannelClient } from '/client/channels.js'
//   const client = new ChannelClient('ws://localhost:3000/ws/workflow')
//   const run = client.subscribe('workflow:run-7')
//   run.on('state', (state) => render(state))            // the whole state, after any change
//   run.on('step.status', (data, pub) => log(data))       // one event type
//
// /ws/notifications subscribes the user's own channel for you: pass { implicit: true } and
// listen with client.on('subscribed', (sub) => …).

const FATAL_CLOSE = new Set([1008, 4400, 4401, 4403])
const RETRYABLE_ERROR = new Set([1011, 1013, 4408, 4429])

function memoryStorage () {
  const items = new Map()
  return {
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => { items.set(key, String(value)) },
    removeItem: (key) => { items.delete(key) }
  }
}

function defaultStorage () {
  try {
    if (typeof sessionStorage !== 'undefined' && sessionStorage) return sessionStorage
  } catch (_) { /* storage disabled (privacy settings): fall through */ }
  return memoryStorage()
}

/** Merge a publication's state patch into a state: `null` removes a key. */
export function mergePatch (state, patch) {
  const next = { ...(state || {}) }
  for (const [key, value] of Object.entries(patch || {})) {
    if (value === null) delete next[key]
    else next[key] = value
  }
  return next
}

/**
 * The state of a /ws/notifications channel, kept up to date from its events:
 * {unread_count, unread_version, latest: [newest first]}. Counts are absolute; the highest
 * unread_version wins, so tabs converge whatever order events arrive in.
 */
export function notificationsReducer (state, pub) {
  const current = state || { unread_count: 0, unread_version: 0, latest: [] }
  const data = pub.data || {}
  if (pub.event !== 'notification.created' && pub.event !== 'notification.read') return current
  const next = { ...current, latest: [...(current.latest || [])] }
  if (typeof data.unread_version === 'number' && data.unread_version >= (current.unread_version || 0)) {
    next.unread_count = data.unread_count
    next.unread_version = data.unread_version
  }
  if (pub.event === 'notification.created') {
    if (!next.latest.some((item) => item.id === data.id)) {
      const { unread_count: _c, unread_version: _v, ...item } = data
      next.latest.push(item)
      next.latest.sort((a, b) => b.id - a.id)
    }
  } else {
    const ids = new Set(data.ids || [])
    next.latest = next.latest.map((item) =>
      ids.has(item.id) || (data.ids === undefined && (data.up_to == null || item.id <= data.up_to))
        ? { ...item, read: true }
        : item)
  }
  return next
}

const ENDED = new Set(['completed', 'failed', 'cancelled'])

/**
 * The state of a /ws/agent run, kept up to date from its events — the same shape as the
 * compacted snapshot a late or reloading tab gets: {run_id, status, owner, messages: [{id,
 * role, text, completed}], tool_calls: [{id, name, args, result?, error?, completed}],
 * result?, error?, cancelled_by?, last_ts}. Events after the terminal one are ignored.
 */
export function agentReducer (state, pub) {
  const next = state
    ? { ...state, messages: [...(state.messages || [])], tool_calls: [...(state.tool_calls || [])] }
    : { run_id: pub.channel.slice(pub.channel.indexOf(':') + 1), status: 'pending', owner: null, messages: [], tool_calls: [], last_ts: 0 }
  next.last_ts = Math.max(next.last_ts || 0, pub.ts || 0)
  if (ENDED.has(next.status)) return next
  const data = pub.data || {}
  const event = pub.event
  if (event === 'run.started') {
    next.status = 'running'
    next.owner = data.owner ?? null
  } else if (event === 'message.started' || event === 'token' || event === 'message.completed') {
    const id = String(data.message_id)
    let index = next.messages.findIndex((m) => m.id === id)
    if (index < 0) {
      next.messages.push({ id, role: 'assistant', text: '', completed: false })
      index = next.messages.length - 1
    }
    const message = { ...next.messages[index] }
    if (event === 'message.started' && typeof data.role === 'string') message.role = data.role
    else if (event === 'token') message.text += String(data.delta ?? '')
    else if (event === 'message.completed') message.completed = true
    next.messages[index] = message
  } else if (event === 'tool_call') {
    const call = { id: String(data.id), name: data.name, args: data.args ?? null, completed: false }
    const index = next.tool_calls.findIndex((c) => c.id === call.id)
    if (index < 0) next.tool_calls.push(call)
    else next.tool_calls[index] = call
  } else if (event === 'tool_result') {
    const id = String(data.id)
    let index = next.tool_calls.findIndex((c) => c.id === id)
    if (index < 0) {
      next.tool_calls.push({ id, name: null, args: null })
      index = next.tool_calls.length - 1
    }
    const call = { ...next.tool_calls[index], completed: true }
    if ('result' in data) call.result = data.result
    if ('error' in data) call.error = data.error
    next.tool_calls[index] = call
  } else if (event === 'run.completed') {
    next.status = 'completed'
    if ('result' in data) next.result = data.result
  } else if (event === 'run.failed') {
    next.status = 'failed'
    next.error = data.error
  } else if (event === 'run.cancelled') {
    next.status = 'cancelled'
    next.cancelled_by = data.by ?? null
  }
  return next
}

class Emitter {
  constructor () { this._handlers = new Map() }

  /** Listen to `event`; returns the function that stops listening. */
  on (event, handler) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set())
    this._handlers.get(event).add(handler)
    return () => this.off(event, handler)
  }

  off (event, handler) {
    const set = this._handlers.get(event)
    if (set) set.delete(handler)
  }

  emit (event, ...args) {
    const set = this._handlers.get(event)
    if (!set) return
    for (const handler of [...set]) {
      try { handler(...args) } catch (error) { setTimeout(() => { throw error }) }
    }
  }
}

/** One channel of a client: its position, its state, and its events. */
export class Subscription extends Emitter {
  constructor (client, channel, options = {}) {
    super()
    this.client = client
    this.channel = channel
    this.reduce = options.reduce || ((state, pub) => (pub.patch ? mergePatch(state, pub.patch) : state))
    /** 'subscribing' | 'live' | 'closed' */
    this.status = 'subscribing'
    this.offset = undefined
    this.epoch = undefined
    this.state = undefined
    this.implicit = Boolean(options.implicit)
    const saved = client._saved[channel]
    if (saved && typeof saved.offset === 'number' && typeof saved.epoch === 'string') {
      this.offset = saved.offset
      this.epoch = saved.epoch
      this.state = saved.state
    }
  }

  /** The position to recover from, or undefined. */
  get since () {
    return this.offset === undefined ? undefined : { offset: this.offset, epoch: this.epoch }
  }

  unsubscribe () {
    this.client._unsubscribe(this)
  }
}

export class ChannelClient extends Emitter {
  /**
   * @param url  ws(s)://host/ws/<endpoint>, or a function returning it (a fresh token each
   *             time it connects)
   * @param options see channels.d.ts
   */
  constructor (url, options = {}) {
    super()
    this.url = url
    this.options = options
    this.WebSocket = options.WebSocket || globalThis.WebSocket
    this.storage = options.storage || defaultStorage()
    this.storageKey = options.storageKey || 'captify:channels:' + (typeof url === 'string' ? url.split('?')[0] : 'default')
    this.implicit = Boolean(options.implicit)
    this.minDelayMs = options.minDelayMs ?? 200
    this.maxDelayMs = options.maxDelayMs ?? 10000
    this.subscriptions = new Map()
    this.ws = null
    this.connected = false
    this._saved = this._load()
    this._pending = new Map()
    this._nextId = 1
    this._delay = this.minDelayMs
    this._closed = false
    this._timer = null
    this._dirty = false
    if (typeof addEventListener === 'function') {
      addEventListener('pagehide', () => this._flush())
    }
    if (options.connect !== false) this.connect()
  }

  // -- public API ----------------------------------------------------------------------

  /** Subscribe to `channel` (once per client); recovers from the stored position. */
  subscribe (channel, options = {}) {
    let sub = this.subscriptions.get(channel)
    if (sub) return sub
    sub = new Subscription(this, channel, options)
    this.subscriptions.set(channel, sub)
    if (this.connected) this._sendSubscribe(sub)
    return sub
  }

  /** Send a handler's command ({type:'mark_read', ids:[…]}); resolves with the reply data. */
  request (type, fields = {}) {
    return new Promise((resolve, reject) => {
      if (!this.connected) { reject(new Error('not connected')); return }
      const id = this._id()
      this._pending.set(id, { kind: 'request', resolve, reject })
      this._send({ ...fields, type, id })
    })
  }

  connect () {
    this._closed = false
    if (this.ws) return
    let url = typeof this.url === 'function' ? this.url() : this.url
    if (this.implicit) {
      const name = this._saved.__implicit__
      const saved = name && this._saved[name]
      if (saved && typeof saved.offset === 'number') {
        const query = `offset=${saved.offset}&epoch=${encodeURIComponent(saved.epoch)}`
        url += (url.includes('?') ? '&' : '?') + query
      }
    }
    const ws = new this.WebSocket(url, this.options.protocols)
    this.ws = ws
    ws.onopen = () => {
      this.connected = true
      this._delay = this.minDelayMs
      this.emit('open')
      for (const sub of this.subscriptions.values()) {
        if (!sub.implicit) this._sendSubscribe(sub)
      }
    }
    ws.onmessage = (event) => this._receive(event.data)
    ws.onclose = (event) => this._onClose(ws, event.code, event.reason)
    ws.onerror = () => {}
  }

  /** Close for good (no reconnect). Positions stay stored for the next client. */
  close () {
    this._closed = true
    clearTimeout(this._timer)
    this._flush()
    if (this.ws) this.ws.close(1000)
  }

  // -- connection ----------------------------------------------------------------------

  _id () {
    const id = this._nextId
    this._nextId = this._nextId >= Number.MAX_SAFE_INTEGER ? 1 : this._nextId + 1
    return id
  }

  _send (message) {
    if (this.ws && this.connected) this.ws.send(JSON.stringify(message))
  }

  _sendSubscribe (sub) {
    const id = this._id()
    sub.status = 'subscribing'
    this._pending.set(id, { kind: 'subscribe', channel: sub.channel })
    const message = { type: 'subscribe', id, channel: sub.channel }
    if (sub.since) message.since = sub.since
    this._send(message)
  }

  _onClose (ws, code, reason) {
    if (this.ws !== ws) return
    this.ws = null
    this.connected = false
    for (const sub of this.subscriptions.values()) {
      if (sub.status === 'live') sub.status = 'subscribing'
    }
    for (const pending of this._pending.values()) {
      if (pending.reject) pending.reject(new Error(`connection closed (${code})`))
    }
    this._pending.clear()
    this._flush()
    this.emit('close', { code, reason })
    if (this._closed) return
    if (FATAL_CLOSE.has(code)) {
      this.emit('error', { code, message: reason || 'connection refused' })
      return
    }
    const delay = this._delay * (0.5 + Math.random() / 2)
    this._delay = Math.min(this._delay * 2, this.maxDelayMs)
    this._timer = setTimeout(() => this.connect(), delay)
  }

  // -- messages ------------------------------------------------------------------------

  _receive (data) {
    let message
    try { message = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data)) } catch (_) { return }
    const pending = message.id !== undefined ? this._pending.get(message.id) : undefined
    if (pending && message.type !== 'pub') this._pending.delete(message.id)
    switch (message.type) {
      case 'pub': this._onPub(message); break
      case 'subscribed': this._onSubscribed(message); break
      case 'resync': this._onState(this.subscriptions.get(message.channel), message); break
      case 'unsubscribed': this._onUnsubscribed(message); break
      case 'reply': if (pending && pending.resolve) pending.resolve(message.data); break
      case 'error': this._onError(message, pending); break
      default: this.emit('message', message)
    }
  }

  _onSubscribed (message) {
    let sub = this.subscriptions.get(message.channel)
    if (!sub && this.implicit && message.id === undefined) {
      sub = new Subscription(this, message.channel, { implicit: true, reduce: this.options.reduce })
      this.subscriptions.set(message.channel, sub)
      this._saved.__implicit__ = message.channel
    }
    if (!sub) return
    if (message.recovered) {
      // The missed publications follow, in order; the position advances with each.
      sub.epoch = message.epoch
      if (sub.offset === undefined) sub.offset = 0
      sub.status = 'live'
    } else {
      this._onState(sub, message)
    }
    this.emit('subscribed', sub, message)
    sub.emit('subscribed', message)
  }

  _onState (sub, message) {
    if (!sub) return
    sub.state = message.state
    sub.offset = message.offset
    sub.epoch = message.epoch
    sub.status = 'live'
    this._save(sub)
    const info = { reason: message.reason, type: message.type }
    sub.emit('state', sub.state, info)
    this.emit('state', sub, info)
  }

  _onPub (pub) {
    const sub = this.subscriptions.get(pub.channel)
    if (!sub || sub.status === 'closed') return
    if (pub.offset === undefined) { // ephemeral: live only, no position
      this._deliver(sub, pub)
      return
    }
    if (sub.status !== 'live') return // a resubscribe is on its way: it replays these
    if (pub.epoch !== sub.epoch || pub.offset > sub.offset + 1) {
      this._resubscribe(sub)
      return
    }
    if (pub.offset <= sub.offset) return // a duplicate
    sub.offset = pub.offset
    const before = sub.state
    sub.state = sub.reduce(sub.state, pub)
    this._save(sub)
    this._deliver(sub, pub)
    if (sub.state !== before) sub.emit('state', sub.state, { event: pub.event })
  }

  _deliver (sub, pub) {
    sub.emit('publication', pub)
    sub.emit(pub.event, pub.data, pub)
    this.emit('publication', pub, sub)
  }

  _resubscribe (sub) {
    sub.status = 'subscribing'
    this._send({ type: 'unsubscribe', channel: sub.channel })
    this._sendSubscribe(sub)
  }

  _onUnsubscribed (message) {
    const sub = this.subscriptions.get(message.channel)
    if (!sub || message.code === undefined) return // the answer to our own unsubscribe
    sub.status = 'closed'
    this.subscriptions.delete(sub.channel)
    this._forget(sub.channel)
    const error = { code: message.code, message: message.reason || 'unsubscribed' }
    sub.emit('error', error)
    this.emit('error', { ...error, channel: sub.channel })
  }

  _onError (message, pending) {
    const error = { code: message.code, message: message.message, channel: message.channel }
    if (pending && pending.kind === 'request') {
      const failure = new Error(message.message)
      failure.code = message.code
      pending.reject(failure)
      return
    }
    const sub = message.channel ? this.subscriptions.get(message.channel) : undefined
    if (sub && (pending || message.id === undefined) && sub.status !== 'live') {
      if (RETRYABLE_ERROR.has(message.code)) {
        setTimeout(() => { if (this.subscriptions.get(sub.channel) === sub && this.connected) this._sendSubscribe(sub) }, this._delay)
      } else {
        sub.status = 'closed'
        this.subscriptions.delete(sub.channel)
      }
      sub.emit('error', error)
    }
    this.emit('error', error)
  }

  _unsubscribe (sub) {
    if (this.subscriptions.get(sub.channel) !== sub) return
    this.subscriptions.delete(sub.channel)
    sub.status = 'closed'
    this._forget(sub.channel)
    this._send({ type: 'unsubscribe', channel: sub.channel })
  }

  // -- storage -------------------------------------------------------------------------

  _load () {
    try {
      const text = this.storage.getItem(this.storageKey)
      const saved = text ? JSON.parse(text) : {}
      return saved && typeof saved === 'object' ? saved : {}
    } catch (_) {
      return {}
    }
  }

  _save (sub) {
    this._saved[sub.channel] = { offset: sub.offset, epoch: sub.epoch, state: sub.state }
    if (!this._dirty) {
      this._dirty = true
      setTimeout(() => this._flush(), 50)
    }
  }

  _forget (channel) {
    delete this._saved[channel]
    if (this._saved.__implicit__ === channel) delete this._saved.__implicit__
    this._dirty = true
    this._flush()
  }

  _flush () {
    if (!this._dirty) return
    this._dirty = false
    try {
      this.storage.setItem(this.storageKey, JSON.stringify(this._saved))
    } catch (_) { /* full or disabled: positions stay in memory */ }
  }
}
