import {rm} from 'node:fs/promises'
import {spawnSync} from 'node:child_process'
import {download} from '../src/lib/download.js'
const url = process.argv[2]
const N = 536870912
const res: Record<string, number[]> = {curl: [], sync: [], async: []}
for (let i = 0; i < 4; i++) {
  for (const mode of ['curl', 'sync', 'async']) {
    const t = performance.now()
    if (mode === 'curl') spawnSync('curl', ['-s', '-o', '/tmp/dlexp/out.bin', url])
    else { process.env.BOX_DL_MODE = mode; await download({url, dest: '/tmp/dlexp/out.bin'}) }
    res[mode].push(Math.round(N / 1e6 / ((performance.now() - t) / 1000)))
    await rm('/tmp/dlexp/out.bin')
  }
}
for (const [k, v] of Object.entries(res)) console.log(k.padEnd(6), v.join(' '), 'max', Math.max(...v), 'median', v.sort((a, b) => a - b)[v.length >> 1])
