// Builds the demo page's bundle: demo/main.js and the npm packages pinned in tests/js
// (Tiptap, yjs, y-websocket) → src/captify_ws/static/demo/demo.js, with esbuild.
//
//   node demo/build.mjs            (or `make demo`) rewrites the shipped bundle
//   node demo/build.mjs --out DIR  writes it to DIR instead (tests/test_demo.py compares)
//
// Next to the bundle, demo.js.inputs.json records every file that went into it with its
// SHA-256 and one hash over them all; tests/test_demo.py recomputes that hash and fails when
// an input changed (a new package version, an edited main.js) and the bundle was not rebuilt.
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const esbuild = createRequire(join(root, 'tests/js/package.json'))('esbuild')
const outIndex = process.argv.indexOf('--out')
const outDir = outIndex > 0 ? process.argv[outIndex + 1] : join(root, 'src/captify_ws/static/demo')

const result = await esbuild.build({
  absWorkingDir: root,
  entryPoints: ['demo/main.js'],
  nodePaths: [join(root, 'tests/js/node_modules')],
  bundle: true,
  format: 'iife',
  target: ['es2020'],
  minify: true,
  legalComments: 'eof',
  write: false,
  metafile: true,
  logLevel: 'warning',
})
const bundle = result.outputFiles[0].contents

const sha256 = (data) => createHash('sha256').update(data).digest('hex')
const inputs = Object.keys(result.metafile.inputs).concat(['demo/build.mjs']).sort()
const files = Object.fromEntries(inputs.map((path) => [path, sha256(readFileSync(join(root, path)))]))
const record = {
  generatedBy: 'node demo/build.mjs (make demo); do not edit',
  esbuild: esbuild.version,
  inputsSha256: sha256(`esbuild ${esbuild.version}\n` + inputs.map((p) => `${p} ${files[p]}\n`).join('')),
  bundleSha256: sha256(bundle),
  files,
}
mkdirSync(outDir, { recursive: true })
writeFileSync(join(outDir, 'demo.js'), bundle)
writeFileSync(join(outDir, 'demo.js.inputs.json'), JSON.stringify(record, null, 1) + '\n')
console.log(`${relative(process.cwd(), join(outDir, 'demo.js'))}: ${bundle.length} bytes from ${inputs.length} files`)
