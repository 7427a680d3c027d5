import {rm} from 'node:fs/promises'
import {download} from '../src/lib/download.js'
const url = process.argv[2]
for (let i = 0; i < 2; i++) {
  const t = performance.now(); const c = process.cpuUsage()
  await download({url, dest: '/tmp/dlexp/out.bin'})
  const u = process.cpuUsage(c)
  console.log((536870912 / 1e6 / ((performance.now() - t) / 1000)).toFixed(0), 'MB/s user', (u.user / 1e6).toFixed(2), 'sys', (u.system / 1e6).toFixed(2))
  await rm('/tmp/dlexp/out.bin')
}
