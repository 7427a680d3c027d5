/**
 * `box list` wall time with 20 boxes in a temp store (target ≤ 0.3 s).
 * Spawns the built CLI (run `npm run build` first) several times and prints the median,
 * next to the median of a bare `node -e 0` on the same machine at the same moment, so a
 * busy host can be told apart from a slow box. Usage: node --import tsx/esm bench/list.ts [runs]
 * (BOX_BENCH_CLI=path/to/bin/run.js measures another build).
 */
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {execa} from 'execa'

import {addBoxFromFile} from '../src/lib/store/import.js'
import {listBoxes} from '../src/lib/store/query.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {makeBoxFile} from '../test/fixtures/boxes.js'
import {median} from './stats.js'

const BOXES = 20
const runs = Number(process.argv[2] ?? 9)
const cli = process.env.BOX_BENCH_CLI ?? join(PROJECT_ROOT, 'bin', 'run.js')

interface Timing {
  wall: number[]
  /** user + system CPU seconds of the child: much less sensitive to a busy host than wall time. */
  cpu: number[]
}

/** Wall time measured here; CPU time from GNU time (`/usr/bin/time -f`), written to a file to keep stderr clean. */
async function timeRuns(command: string, args: string[], env: Record<string, string>): Promise<Timing> {
  const timing: Timing = {wall: [], cpu: []}
  const cpuFile = join(dir, 'cpu.txt')
  for (let run = 0; run <= runs; run++) {
    const started = process.hrtime.bigint()
    await execa('/usr/bin/time', ['-o', cpuFile, '-f', '%U %S', command, ...args], {env, stdin: 'ignore'})
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    const [user, system] = (await readFile(cpuFile, 'utf8')).trim().split(/\s+/).map(Number)
    if (run === 0) continue // the first run warms the page cache
    timing.wall.push(seconds)
    timing.cpu.push(user + system)
  }
  return timing
}

const dir = await mkdtemp(join(tmpdir(), 'box-bench-list-'))
try {
  const dataDir = join(dir, 'data')
  const file = await makeBoxFile(dir, {imageBytes: 64 * 1024})
  for (let index = 0; index < BOXES; index++) {
    await addBoxFromFile({dataDir, name: `bench/box${index % 10}`, file, version: `1.${index}.0`})
  }
  if ((await listBoxes(dataDir)).length !== BOXES) throw new Error('store setup failed')
  const env = {BOX_DATA_DIR: dataDir, NO_COLOR: '1'}

  const {stdout} = await execa('node', [cli, 'list'], {env})
  if (stdout.trim().split('\n').length !== BOXES + 1)
    throw new Error(`box list printed an unexpected table:\n${stdout}`)

  const list = await timeRuns('node', [cli, 'list'], env)
  const listJson = await timeRuns('node', [cli, 'list', '--json'], env)
  const bareNode = await timeRuns('node', ['-e', '0'], env)
  const format = ({wall, cpu}: Timing) =>
    `wall median ${median(wall).toFixed(3)} s (min ${Math.min(...wall).toFixed(3)}, max ${Math.max(...wall).toFixed(3)}), CPU median ${median(cpu).toFixed(3)} s`
  const {stdout: load} = await execa('cat', ['/proc/loadavg']).catch(() => ({stdout: '?'}))
  console.log(`box list, ${BOXES} boxes, ${runs} runs (load average ${load.split(' ').slice(0, 3).join(' ')})`)
  console.log(`  box list         ${format(list)}`)
  console.log(`  box list --json  ${format(listJson)}`)
  console.log(`  node -e 0        ${format(bareNode)}  (host baseline)`)
  console.log(`target ≤ 0.300 s wall: ${median(list.wall) <= 0.3 ? 'met' : 'NOT met'}`)
} finally {
  await rm(dir, {recursive: true, force: true})
}
