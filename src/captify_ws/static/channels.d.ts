// Types of /client/channels.js, the captify-ws channels client.

export interface Position {
  offset: number
  epoch: string
}

/** A `pub` frame. Ephemeral publications have no offset and no epoch. */
export interface Publication<D = unknown> {
  type: 'pub'
  channel: string
  offset?: number
  epoch?: string
  event: string
  data: D
  /** the publication's state patch (null values remove keys) */
  patch?: Record<string, unknown>
  /** milliseconds since the Unix epoch */
  ts: number
  ephemeral?: true
}

export interface ChannelError {
  code: number
  message: string
  channel?: string
}

export interface StateInfo {
  /** why the state was replaced: 'epoch' | 'trimmed' | 'expired' | 'too_far'; absent for a
   *  fresh subscription or a change by a publication */
  reason?: string
  /** 'subscribed' | 'resync' when the server sent the state */
  type?: string
  /** the event whose patch changed the state */
  event?: string
}

export type Reducer<S = any> = (state: S | undefined, pub: Publication) => S

/** Merge a state patch: null removes a key. */
export function mergePatch<S extends object> (state: S | undefined, patch: Record<string, unknown>): S

/** {unread_count, unread_version, latest} of a /ws/notifications channel, from its events. */
export function notificationsReducer (state: NotificationsState | undefined, pub: Publication): NotificationsState

/** A /ws/agent run: the compacted snapshot's shape, kept from live events. */
export interface AgentRunState {
  run_id: string
  status: 'pending' | 'running' | 'completed' | 'failed' | 'cancelled'
  owner: string | null
  messages: Array<{ id: string, role: string, text: string, completed: boolean }>
  tool_calls: Array<{ id: string, name: string | null, args: unknown, result?: unknown, error?: unknown, completed: boolean }>
  result?: unknown
  error?: unknown
  cancelled_by?: string | null
  last_ts: number
  partial?: boolean
}
export function agentReducer (state: AgentRunState | undefined, pub: Publication): AgentRunState

export interface NotificationsState {
  unread_count: number
  unread_version: number
  latest: Array<{ id: number, kind: string, payload: unknown, created_at: number, read: boolean }>
}

export interface SubscribeOptions<S = any> {
  /** how a publication changes the state; default: merge its `patch` */
  reduce?: Reducer<S>
}

export interface StorageLike {
  getItem (key: string): string | null
  setItem (key: string, value: string): void
  removeItem (key: string): void
}

export interface ClientOptions {
  /** the WebSocket class (default: globalThis.WebSocket; in Node 20 pass `ws`) */
  WebSocket?: any
  /** where positions and states are kept (default: sessionStorage, else memory) */
  storage?: StorageLike
  storageKey?: string
  /** subprotocols, e.g. ['captify', token] */
  protocols?: string | string[]
  /** the endpoint subscribes a channel for you (/ws/notifications) */
  implicit?: boolean
  /** the reducer of the implicit channel */
  reduce?: Reducer
  minDelayMs?: number
  maxDelayMs?: number
  /** connect at once (default true) */
  connect?: boolean
}

declare class Emitter {
  on (event: string, handler: (...args: any[]) => void): () => void
  off (event: string, handler: (...args: any[]) => void): void
}

export class Subscription<S = any> extends Emitter {
  readonly client: ChannelClient
  readonly channel: string
  status: 'subscribing' | 'live' | 'closed'
  offset: number | undefined
  epoch: string | undefined
  state: S | undefined
  readonly since: Position | undefined
  on (event: 'state', handler: (state: S, info: StateInfo) => void): () => void
  on (event: 'publication', handler: (pub: Publication) => void): () => void
  on (event: 'subscribed', handler: (message: Record<string, unknown>) => void): () => void
  on (event: 'error', handler: (error: ChannelError) => void): () => void
  /** one event type: the handler gets the data and the whole publication */
  on (event: string, handler: (data: any, pub: Publication) => void): () => void
  unsubscribe (): void
}

export class ChannelClient extends Emitter {
  constructor (url: string | (() => string), options?: ClientOptions)
  readonly subscriptions: Map<string, Subscription>
  connected: boolean
  subscribe<S = any> (channel: string, options?: SubscribeOptions<S>): Subscription<S>
  /** a handler's command, e.g. request('mark_read', { ids: [1, 2] }); rejects with .code */
  request<R = any> (type: string, fields?: Record<string, unknown>): Promise<R>
  connect (): void
  close (): void
  on (event: 'open', handler: () => void): () => void
  on (event: 'close', handler: (info: { code: number, reason: string }) => void): () => void
  on (event: 'subscribed', handler: (sub: Subscription, message: Record<string, unknown>) => void): () => void
  on (event: 'state', handler: (sub: Subscription, info: StateInfo) => void): () => void
  on (event: 'publication', handler: (pub: Publication, sub: Subscription) => void): () => void
  on (event: 'error', handler: (error: ChannelError) => void): () => void
  on (event: string, handler: (...args: any[]) => void): () => void
}
