// What the test drivers share: a seeded random generator, polling, and the line protocol
// (one JSON command per stdin line, one JSON answer per stdout line with the same "id").
import readline from 'node:readline'

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export function mulberry32 (seed) {
  return () => {
    seed |= 0; seed = seed + 0x6D2B79F5 | 0
    let t = Math.imul(seed ^ seed >>> 15, 1 | seed)
    t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t
    return ((t ^ t >>> 14) >>> 0) / 4294967296
  }
}

export async function waitFor (predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what}`)
    await sleep(10)
  }
}

export function serve (commands, hello) {
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', async (line) => {
    if (!line.trim()) return
    let message
    try { message = JSON.parse(line) } catch (e) { return }
    try {
      const handler = commands[message.op]
      if (!handler) throw new Error(`unknown op ${message.op}`)
      const result = await handler(message)
      process.stdout.write(JSON.stringify({ id: message.id, ok: true, ...result }) + '\n')
    } catch (e) {
      process.stdout.write(JSON.stringify({ id: message.id, ok: false, error: String(e && e.message || e) }) + '\n')
    }
  })
  rl.on('close', () => process.exit(0))
  process.stdout.write(JSON.stringify({ ready: true, ...hello }) + '\n')
}
