// The captify-ws demo page: a Tiptap 3 editor on a Yjs document, synced through the server's
// y-websocket endpoint (/ws/fabric/<document>), with the carets and names of the others.
// Bundled by demo/build.mjs into src/captify_ws/static/demo/demo.js (no CDN at run time).
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { Placeholder } from '@tiptap/extensions'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const NAMES = ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken',
  'Margaret', 'Dennis', 'Radia', 'Linus', 'Hedy', 'Niklaus', 'Sophie', 'Tim']
const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#0f9a9a', '#c51b8a',
  '#808000', '#9a6324', '#1f78b4']
const pick = (list) => list[Math.floor(Math.random() * list.length)]

// Where we are: /<prefix>/demo/<document>; the WebSocket is /<prefix>/ws/fabric/<document>.
const match = location.pathname.match(/^(.*)\/demo\/([^/]+)\/?$/)
const base = match ? match[1] : ''
const documentName = match ? decodeURIComponent(match[2]) : 'welcome'
const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${base}/ws/fabric`

// Who we are: ?name= wins, then what this tab chose before, then a random name.
const params = new URLSearchParams(location.search)
const stored = JSON.parse(sessionStorage.getItem('captify-demo-user') || 'null')
const user = {
  name: (params.get('name') || stored?.name || pick(NAMES)).slice(0, 40),
  color: stored?.color || pick(COLORS),
}
const remember = () => sessionStorage.setItem('captify-demo-user', JSON.stringify(user))
remember()

const $ = (id) => document.getElementById(id)
$('document-name').textContent = documentName
document.title = `${documentName} · captify-ws demo`
const invite = new URL(location.href)
invite.search = ''
$('invite-link').href = invite.href
$('invite-link').textContent = invite.href
$('ws-url').textContent = `${wsBase}/${documentName}`

const ydoc = new Y.Doc()
const provider = new WebsocketProvider(wsBase, documentName, ydoc)

// The connection indicator: connecting → connected (synced), or why the socket closed.
const status = $('status')
const showStatus = (state, text) => {
  status.dataset.state = state
  status.querySelector('.label').textContent = text
}
// Once the connection was lost, the page stays "offline" until it is back (y-websocket
// retries at once and then with backoff: "connecting" would flicker and hide the outage).
let lost = false
showStatus('connecting', 'connecting…')
provider.on('status', ({ status: s }) => {
  if (s === 'connected') {
    lost = false
    showStatus(provider.synced ? 'connected' : 'connecting', provider.synced ? 'connected' : 'syncing…')
  } else if (s === 'connecting' && !lost) {
    showStatus('connecting', 'connecting…')
  } else {
    lost = true
    if (status.dataset.state !== 'offline') showStatus('offline', 'offline — reconnecting…')
  }
})
provider.on('sync', (synced) => {
  if (synced && provider.wsconnected) showStatus('connected', 'connected')
})
provider.on('connection-close', (event) => {
  lost = true
  if (event && event.code >= 4000) showStatus('offline', `refused: ${event.code} ${event.reason || ''}`.trim())
  else showStatus('offline', 'offline — reconnecting…')
})

const editor = new Editor({
  element: $('editor'),
  extensions: [
    StarterKit.configure({ undoRedo: false }), // Collaboration brings its own undo/redo
    Collaboration.configure({ document: ydoc }),
    CollaborationCaret.configure({ provider, user }),
    Placeholder.configure({ placeholder: 'Type here, then open the invite link in a second tab and type there too…' }),
  ],
  editorProps: { attributes: { 'aria-label': `document ${documentName}`, spellcheck: 'false' } },
  autofocus: true,
})

// Who is here: everyone's name and color, from the Yjs awareness states.
const renderPeople = () => {
  const list = $('people')
  list.replaceChildren()
  for (const [clientID, state] of provider.awareness.getStates()) {
    if (!state.user) continue
    const item = document.createElement('li')
    item.className = 'person'
    item.style.setProperty('--color', state.user.color)
    item.textContent = state.user.name + (clientID === ydoc.clientID ? ' (you)' : '')
    list.append(item)
  }
  $('people-count').textContent = String(list.children.length)
}
provider.awareness.on('change', renderPeople)
renderPeople()

const nameInput = $('name')
nameInput.value = user.name
nameInput.style.setProperty('--color', user.color)
nameInput.addEventListener('input', () => {
  user.name = nameInput.value.trim().slice(0, 40) || pick(NAMES)
  remember()
  editor.commands.updateUser(user)
})

$('copy-invite').addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText(invite.href)
    $('copy-invite').textContent = 'copied'
  } catch {
    $('copy-invite').textContent = 'select the link and copy it'
  }
  setTimeout(() => { $('copy-invite').textContent = 'copy' }, 2000)
})

// For people (and tests) poking at the page from the developer console.
window.captifyDemo = { editor, ydoc, provider, user, documentName }
