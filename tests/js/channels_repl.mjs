// A line-oriented driver for the captify-ws channels client (/client/channels.js), in Node.
//
// The module is fetched from the server and imported as it is served. Each client has a name
// and a storage of its own, or another's (`storageOf`: a reloaded tab keeps its storage).
//
// Commands: load, open, drop, snapshot, request, close, exit.

import WebSocket from 'ws'
import { serve } from './repl.mjs'

let mod = null
const clients = new Map()
const storages = new Map()

function memoryStorage () {
  const items = new Map()
  return {
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => { items.set(key, String(value)) },
    removeItem: (key) => { items.delete(key) }
  }
}

function get (name) {
  const entry = clients.get(name)
  if (!entry) throw new Error(`no client named ${name}`)
  return entry
}

const commands = {
  async load ({ url }) {
    const response = await fetch(url)
    if (!response.ok) throw new Error(`GET ${url}: ${response.status}`)
    const text = await response.text()
    mod = await import('data:text/javascript;base64,' + Buffer.from(text).toString('base64'))
    return { exports: Object.keys(mod).sort() }
  },

  async open ({ name, url, channels, implicit, reducer, storageOf }) {
    const storage = storages.get(storageOf || name) || memoryStorage()
    storages.set(name, storage)
    const reduce = reducer === 'notifications' ? mod.notificationsReducer : undefined
    const client = new mod.ChannelClient(url, { WebSocket, storage, implicit, reduce, minDelayMs: 5, maxDelayMs: 50 })
    const entry = { client, delivered: {}, resets: {}, errors: [] }
    const track = (sub) => {
      entry.delivered[sub.channel] = entry.delivered[sub.channel] || []
      entry.resets[sub.channel] = entry.resets[sub.channel] || []
      sub.on('publication', (pub) => { if (pub.offset !== undefined) entry.delivered[sub.channel].push([pub.offset, pub.data]) })
      sub.on('state', (state, info) => { if (info.type) entry.resets[sub.channel].push(info.reason ?? null) })
    }
    for (const channel of channels || []) track(client.subscribe(channel, { reduce }))
    client.on('subscribed', (sub) => { if (!entry.delivered[sub.channel]) track(sub) })
    client.on('error', (error) => entry.errors.push(error))
    clients.set(name, entry)
    return {}
  },

  async drop ({ name }) {
    const { client } = get(name)
    if (client.ws) client.ws.terminate()
    return {}
  },

  async snapshot ({ name }) {
    const entry = get(name)
    const subs = {}
    for (const [channel, sub] of entry.client.subscriptions) {
      subs[channel] = { offset: sub.offset, epoch: sub.epoch, state: sub.state, status: sub.status }
    }
    return { subs, delivered: entry.delivered, resets: entry.resets, errors: entry.errors, connected: entry.client.connected }
  },

  async request ({ name, type, fields }) {
    const data = await get(name).client.request(type, fields || {})
    return { data }
  },

  async close ({ name }) {
    get(name).client.close()
    clients.delete(name)
    return {}
  },

  async exit () {
    setTimeout(() => process.exit(0), 10)
    return {}
  }
}

serve(commands)
