// A Tiptap 3 editor on Tiptap's own HocuspocusProvider (npm @hocuspocus/provider), with
// Collaboration and CollaborationCaret: the page tests/interop/test_tiptap_hocuspocus.py opens
// in headless Chromium. Bundled for the browser with esbuild by the test.
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { HocuspocusProvider } from '@hocuspocus/provider'

let editor = null
let provider = null

window.startEditor = ({ url, name, user, color }) => {
  provider = new HocuspocusProvider({ url, name, token: user })
  editor = new Editor({
    element: document.querySelector('#editor'),
    extensions: [
      StarterKit.configure({ undoRedo: false }),
      Collaboration.configure({ document: provider.document }),
      CollaborationCaret.configure({ provider, user: { name: user, color } })
    ]
  })
}

window.typeAtEnd = (text) => {
  editor.chain().focus('end').insertContent(text).run()
}

window.editorState = () => ({
  text: editor ? editor.getText() : '',
  synced: provider ? provider.isSynced : false,
  unsynced: provider ? provider.unsyncedChanges : -1,
  scope: provider ? provider.authorizedScope ?? null : null,
  carets: [...document.querySelectorAll('.collaboration-carets__label')].map(
    (label) => `${label.textContent} ${label.style.backgroundColor}`)
})
