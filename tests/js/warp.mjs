// Time warp for tests: with CAPTIFY_TIME_WARP=K, this process's clock runs K times faster —
// Date.now(), performance.now(), setTimeout and setInterval — so that real, unmodified client
// code (y-websocket's 30 s silence timer, y-protocols' 15 s renewals) can be observed for
// minutes of its time in seconds of ours. Import it first, before any module reads Date.now
// (lib0/time binds getUnixTime = Date.now when it loads).
const factor = Number(process.env.CAPTIFY_TIME_WARP || '1')

if (factor !== 1) {
  const realNow = Date.now
  const start = realNow()
  Date.now = () => start + Math.floor((realNow() - start) * factor)
  const realPerf = performance.now.bind(performance)
  const perfStart = realPerf()
  performance.now = () => perfStart + (realPerf() - perfStart) * factor
  const { setTimeout: realTimeout, setInterval: realInterval } = globalThis
  globalThis.setTimeout = (fn, ms, ...args) => realTimeout(fn, (ms || 0) / factor, ...args)
  globalThis.setInterval = (fn, ms, ...args) => realInterval(fn, (ms || 0) / factor, ...args)
}

export const warp = factor
