/**
 * Job figures (issue 15), on the reference box added to a store of its own, as `box run`
 * and `box batch` use it:
 *   - the ready state: the time to make it (a resnap boot and a save, once per settings),
 *     network off and on;
 *   - per-job time of a trivial job (`echo hello`) through the CLI (`bin/box run --json`,
 *     the whole process: node start, box lookup, restore, job, copy-out, teardown), RUNS
 *     times each way (default 5), median, and the phases of the median run;
 *   - batch throughput: JOBS trivial jobs (default 40) through runBatch at each --parallel
 *     in PARALLEL (default "1,2,3"), jobs per minute, median per-job time (the box's
 *     default 1 CPU and 1 GiB: the no-network ready state `box run` made above);
 *   - the same with one resnap boot per job (the worker source before the ready state):
 *     RESNAP_JOBS jobs (default 40; 0 skips it) at --parallel RESNAP_PARALLEL (default 2).
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
import type {JobRecord} from '../src/lib/jobs/spec.js'
import {startResnapWorker, type WorkerSource} from '../src/lib/jobs/worker.js'
import {testCacheDir} from '../test/support/cache.js'
import {median} from './stats.js'

const RUNS = Number(process.env.RUNS ?? 5)
const JOBS = Number(process.env.JOBS ?? 40)
const PARALLEL = (process.env.PARALLEL ?? '1,2,3').split(',').map(Number)
const RESNAP_JOBS = Number(process.env.RESNAP_JOBS ?? 40)
const RESNAP_PARALLEL = Number(process.env.RESNAP_PARALLEL ?? 2)

const load = () => loadavg()[0]!.toFixed(1)
const seconds = (ms: number) => (ms / 1000).toFixed(2)
const phasesText = (record: JobRecord) =>
  Object.entries(record.phases)
    .map(([name, ms]) => `${name} ${seconds(ms!)}`)
    .join(', ')
const jobTotal = (record: JobRecord) => Object.values(record.phases).reduce((sum, ms) => sum + (ms ?? 0), 0)

const root = await mkdtemp(join(tmpdir(), 'box-bench-jobs-'))
const cacheDir = join(root, 'cache')
const dataDir = join(root, 'data')
const env = {BOX_DATA_DIR: dataDir, BOX_CACHE_DIR: cacheDir, NO_COLOR: '1'}
const bin = join(PROJECT_ROOT, 'bin', 'box')
try {
  const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
  await execa(bin, ['add', 'reference', boxFile], {env})
  const work = join(root, 'work')
  await mkdir(work, {recursive: true})

  const boxRun = async (network: 'on' | 'off') => {
    const started = Date.now()
    const result = await execa(
      bin,
      ['run', '--box', 'reference', '--network', network, '--json', '--', 'echo', 'hello'],
      {cwd: work, env, reject: false},
    )
    const wall = Date.now() - started
    const record = JSON.parse(result.stdout) as JobRecord
    if (record.status !== 'ok') throw new Error(`box run failed: ${result.stdout}\n${result.stderr}`)
    return {wall, record}
  }

  for (const network of ['off', 'on'] as const) {
    // The first run makes the ready state (phase `ready`); the runs after it are the figure.
    const first = await boxRun(network)
    console.log(
      `box run, network ${network}, first (makes the ready state): ${seconds(first.wall)} s (ready ${seconds(first.record.phases.ready ?? 0)} s) load ${load()}`,
    )
    const runs: Array<{wall: number; record: JobRecord}> = []
    for (let i = 0; i < RUNS; i++) runs.push(await boxRun(network))
    const walls = runs.map((run) => run.wall)
    const middle = runs.find((run) => run.wall === median(walls)) ?? runs[0]!
    console.log(
      `box run, network ${network}, restored worker: median ${seconds(median(walls))} s wall (min ${seconds(Math.min(...walls))}, max ${seconds(Math.max(...walls))}, n=${RUNS}); ` +
        `in-process phases of the median run: ${phasesText(middle.record)} (load ${load()})`,
    )
  }

  const batchDir = join(root, 'batch')
  await mkdir(batchDir, {recursive: true})
  const jobFile = async (count: number, name: string) => {
    const jobs = Array.from({length: count}, (_, i) => `  - id: echo-${i}\n    command: [echo, hello]\n`).join('')
    await writeFile(join(batchDir, name), `box: reference\ndefaults: {network: off}\njobs:\n${jobs}`)
    return join(batchDir, name)
  }
  const batch = async (file: string, parallel: number, label: string, workerSource?: WorkerSource) => {
    const before = load()
    const result = await runBatch({
      jobFile: file,
      parallel,
      resultsDir: join(batchDir, `results-${label}-${parallel}`),
      cwd: batchDir,
      dataDir,
      cacheDir,
      version: '0',
      progress: createProgress({silent: true}),
      workerSource,
    })
    const ok = result.records.filter((record) => record.status === 'ok').length
    const perMinute = (result.records.length / result.elapsedMs) * 60_000
    const restored = result.records.filter((record) => record.worker?.how === 'restored').length
    console.log(
      `batch of ${result.records.length} trivial jobs (${label}), --parallel ${parallel}: ${seconds(result.elapsedMs)} s, ` +
        `${perMinute.toFixed(1)} jobs/min, median job ${seconds(median(result.records.map(jobTotal)))} s ` +
        `(${ok} ok, ${restored} restored) load ${before} → ${load()}`,
    )
  }
  const ready = await jobFile(JOBS, 'jobs.yaml')
  for (const parallel of PARALLEL) await batch(ready, parallel, 'ready state')
  if (RESNAP_JOBS > 0)
    await batch(await jobFile(RESNAP_JOBS, 'resnap.yaml'), RESNAP_PARALLEL, 'resnap boot per job', startResnapWorker)
} finally {
  await rm(root, {recursive: true, force: true})
}
