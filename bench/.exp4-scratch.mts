import http from 'node:http'
import {rm} from 'node:fs/promises'
import {download} from '../src/lib/download.js'
const url = process.argv[2]
async function measure(label: string, fn: () => Promise<unknown>) {
  const t = performance.now(); const c = process.cpuUsage()
  await fn()
  const sec = (performance.now() - t) / 1000; const u = process.cpuUsage(c)
  console.log(label.padEnd(10), (536870912 / 1e6 / sec).toFixed(0), 'MB/s cpu', ((u.user + u.system) / 1e6).toFixed(2))
}
for (let i = 0; i < 3; i++) {
  await measure('http-null', () => new Promise(r => http.get(url, res => { res.on('data', () => {}); res.on('end', r) })))
  await measure('download', () => download({url, dest: '/tmp/dlexp/out.bin'}))
  await rm('/tmp/dlexp/out.bin')
}
