/**
 * Job figures (issue 15), on the reference box with resnap boots (the worker source of
 * src/lib/jobs/worker.ts; re-run once the ready state is plugged in there):
 *   - per-job overhead of a trivial job (`echo`), without and with network: wall time of
 *     runJob and its phases, RUNS times each (default 3);
 *   - batch throughput: JOBS trivial jobs (default 40) through runBatch at each --parallel
 *     in PARALLEL (default "1,2,3"), jobs per minute.
 * The machine is shared and TCG timings move with load: the load average is printed.
 * Run (it boots QEMU): npm run build && flock /tmp/box-qemu.lock node --import tsx/esm bench/jobs.ts
 */
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {loadavg, tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {createProgress} from '../src/lib/core/progress.js'
import {runBatch} from '../src/lib/jobs/batch.js'
import {runJob} from '../src/lib/jobs/job.js'
import {jobSpec, referenceJobBox} from '../test/support/job-box.js'
import {testCacheDir} from '../test/support/cache.js'

const RUNS = Number(process.env.RUNS ?? 3)
const JOBS = Number(process.env.JOBS ?? 40)
const PARALLEL = (process.env.PARALLEL ?? '1,2,3').split(',').map(Number)
const SKIP_OVERHEAD = process.env.SKIP_OVERHEAD === '1'

const load = () => loadavg()[0]!.toFixed(1)
const seconds = (ms: number) => (ms / 1000).toFixed(1)

const root = await mkdtemp(join(tmpdir(), 'box-bench-jobs-'))
const cacheDir = join(root, 'cache')
const {box, dir: boxDir} = await referenceJobBox()
try {
  if (!SKIP_OVERHEAD) {
    for (const network of [false, true]) {
      for (let i = 0; i < RUNS; i++) {
        const started = Date.now()
        const record = await runJob({
          spec: jobSpec({id: `echo-${i}`, command: 'echo hello', network}),
          box,
          cacheDir,
          resultDir: join(root, `overhead-${network}-${i}`),
          cpus: 1,
          memoryMiB: 1024,
        })
        const wall = Date.now() - started
        const phases = Object.entries(record.phases)
          .map(([name, ms]) => `${name} ${seconds(ms!)}`)
          .join(', ')
        console.log(
          `trivial job, network ${network ? 'on ' : 'off'}: ${seconds(wall)} s (${record.status}; ${phases}) load ${load()}`,
        )
      }
    }
  }

  // The batch goes through the store like `box batch`: the reference box added once.
  const dataDir = join(root, 'data')
  const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
  await execa(join(PROJECT_ROOT, 'bin', 'box'), ['add', 'reference', boxFile], {
    env: {BOX_DATA_DIR: dataDir, BOX_CACHE_DIR: cacheDir},
  })
  const batchDir = join(root, 'batch')
  await mkdir(batchDir, {recursive: true})
  const jobs = Array.from({length: JOBS}, (_, i) => `  - id: echo-${i}\n    command: [echo, hello]\n`).join('')
  await writeFile(
    join(batchDir, 'jobs.yaml'),
    `box: reference\ncpus: 1\nmemory: 768\ndefaults: {network: off}\njobs:\n${jobs}`,
  )
  for (const parallel of PARALLEL) {
    const before = load()
    const result = await runBatch({
      jobFile: join(batchDir, 'jobs.yaml'),
      parallel,
      resultsDir: join(batchDir, `results-${parallel}`),
      cwd: batchDir,
      dataDir,
      cacheDir,
      version: '0',
      progress: createProgress({silent: true}),
    })
    const ok = result.records.filter((record) => record.status === 'ok').length
    const perMinute = (result.records.length / result.elapsedMs) * 60_000
    console.log(
      `batch of ${JOBS} trivial jobs, --parallel ${parallel}: ${seconds(result.elapsedMs)} s, ${perMinute.toFixed(2)} jobs/min (${ok} ok) load ${before} → ${load()}`,
    )
  }
} finally {
  await rm(root, {recursive: true, force: true})
  await rm(boxDir, {recursive: true, force: true})
}
