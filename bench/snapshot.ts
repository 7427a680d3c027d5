/**
 * Snapshot and fresh-worker figures (issue 19), on the reference box (1 GiB, 2 CPUs) under
 * whatever accelerator the probe picks; medians of RUNS (default 5), with the host's load
 * average before and after (the machine is shared: run it under /tmp/box-qemu.lock):
 *   - save of the running machine (`box snapshot save` through the library: whole call and
 *     the guest's pause), and the state file's size;
 *   - restore of a running snapshot (provider level) → box-agent answers `ping`;
 *   - `box snapshot restore` (CLI) → the first `box ssh -- true` (CLI) completes;
 *   - a fresh worker from the ready state (startFreshWorker: restore → agent, → ssh login)
 *     against a resnap boot of the same box (`box resnap`: halt, boot, ssh);
 *   - disk the new overlay took per restore before the guest ran.
 * Run: npm run build && flock /tmp/box-qemu.lock node --import tsx/esm bench/snapshot.ts
 * (RUNS=N for more runs; RESNAP=0 without the resnap boots.)
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {BoxMetadataSchema} from '../src/lib/box/metadata.js'
import {createProgress} from '../src/lib/core/progress.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {readRecord, type MachineContext} from '../src/lib/machine/context.js'
import {openProject} from '../src/lib/machine/project.js'
import {saveSnapshot} from '../src/lib/machine/snapshots.js'
import {startFreshWorker} from '../src/lib/machine/worker.js'
import {QemuProvider} from '../src/providers/qemu/index.js'
import {testCacheDir} from '../test/support/cache.js'
import {loadAverages} from './stats.js'

const RUNS = Number(process.env.RUNS ?? 5)
const BIN = join(PROJECT_ROOT, 'bin', 'box')
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!
const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`
const range = (values: number[]) =>
  `median ${seconds(median(values))} (${seconds(Math.min(...values))}–${seconds(Math.max(...values))}, n=${values.length})`

const cacheDir = testCacheDir()
const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir})
const work = await mkdtemp(join(tmpdir(), 'box-bench-snapshot-'))
const project = join(work, 'project')
const dataDir = join(work, 'data')
const env = {BOX_DATA_DIR: dataDir, BOX_CACHE_DIR: cacheDir, NO_COLOR: '1'}
const cli = (args: string[]) => execa(BIN, args, {cwd: project, env, stdin: 'ignore'})
const figures: Record<string, string> = {}
/** Printed at once too: a run cut short still shows what it measured. */
const figure = (name: string, value: string) => {
  figures[name] = value
  console.log(`${name}: ${value}`)
}
console.log(`load before: ${loadAverages()}`)

try {
  await execa('mkdir', ['-p', project])
  await writeFile(join(project, 'Boxfile'), 'box: reference\nmemory: 1024\ncpus: 2\n')
  await cli(['add', 'reference', boxFile])
  await cli(['up'])
  const {machines, context: opened} = await openProject({version: '0', names: [], dataDir, cacheDir, cwd: project})
  const context: MachineContext = {...opened, progress: createProgress({silent: true})}
  const machine = machines[0]!
  const stateDir = join(project, '.box', 'machines', 'default')
  const provider = new QemuProvider(cacheDir)

  // Save of the running machine.
  const saves: number[] = []
  const pauses: number[] = []
  const sizes: number[] = []
  for (let i = 0; i < RUNS; i++) {
    const saved = await saveSnapshot(context, machine, `bench${i}`)
    saves.push(saved.saveMs)
    pauses.push(saved.pauseMs!)
    sizes.push(saved.stateBytes!)
  }
  figure('save of the running machine (whole call)', range(saves))
  figure('  of which the guest was paused', range(pauses))
  figure(
    'state file size',
    `median ${(median(sizes) / 1e6).toFixed(0)} MB (${sizes.map((s) => (s / 1e6).toFixed(0)).join(', ')})`,
  )

  // Restore → box-agent answers, at the provider (what box snapshot restore does before ssh).
  const record = (await readRecord(stateDir))!
  const metadata = BoxMetadataSchema.parse(JSON.parse(await readFile(join(record.box.path, 'metadata.json'), 'utf8')))
  const handle = {
    name: 'default',
    stateDir,
    box: {dir: record.box.path, metadata},
    cpus: 2,
    memoryMiB: 1024,
    forwardedPorts: [],
  }
  const toAgent: number[] = []
  for (let i = 0; i < RUNS; i++) {
    await execa('ssh', ['-o', `ControlPath=${provider.sshControlPath({stateDir})}`, '-O', 'exit', 'x'], {reject: false})
    const started = performance.now()
    const restored = await provider.snapshots.restore(handle, 'bench0', {})
    await provider.askAgent({stateDir}, 'ping', {timeoutMs: 10_000})
    toAgent.push(performance.now() - started)
    // box ssh needs the record to name the new port.
    await writeFile(
      join(stateDir, 'machine.json'),
      JSON.stringify({...record, sshPort: restored.started!.sshPort, forwardedPorts: []}),
    )
  }
  figure('restore (provider) → box-agent answers', range(toAgent))

  // box snapshot restore → first box ssh -- true, as a user runs them.
  const toSsh: number[] = []
  for (let i = 0; i < RUNS; i++) {
    const started = performance.now()
    await cli(['snapshot', 'restore', 'bench0'])
    await cli(['ssh', '--', 'true'])
    toSsh.push(performance.now() - started)
  }
  figure('`box snapshot restore` → first `box ssh -- true` done (two CLI runs)', range(toSsh))

  // Resnap boots of the same box (RESNAP=0 leaves them out: the snapshot figures only).
  if (process.env.RESNAP !== '0') {
    const resnaps: number[] = []
    for (let i = 0; i < RUNS; i++) {
      const started = performance.now()
      await cli(['resnap'])
      resnaps.push(performance.now() - started)
    }
    figure('`box resnap` (halt, boot with resnap, ssh)', range(resnaps))
  }
  await cli(['destroy', '-f'])

  // Fresh workers from the ready state, made in a cache of this run's own.
  const workerCache = join(work, 'cache')
  const spec = {box: {name: 'reference'}, cpus: 2, memoryMiB: 1024, network: true}
  const build = performance.now()
  const first = await startFreshWorker(spec, {dataDir, cacheDir: workerCache})
  figure('first worker: making the ready state (resnap boot, save) + restore', seconds(performance.now() - build))
  await first.destroy()
  const workerAgent: number[] = []
  const workerSsh: number[] = []
  const written: number[] = []
  for (let i = 0; i < RUNS; i++) {
    const worker = await startFreshWorker(spec, {dataDir, cacheDir: workerCache})
    workerAgent.push(worker.timings.agentMs)
    workerSsh.push(worker.timings.sshMs!)
    written.push(worker.timings.diskBytesBeforeRun ?? 0)
    await worker.destroy()
  }
  figure('fresh worker: restore → box-agent answers (clock set)', range(workerAgent))
  figure('fresh worker: restore → first ssh login', range(workerSsh))
  figure('disk taken by the new overlay before the guest runs', `median ${(median(written) / 1024).toFixed(0)} KiB`)
} finally {
  await execa(BIN, ['destroy', '-f'], {cwd: project, env, reject: false})
  await rm(work, {recursive: true, force: true})
}

console.log(`load after: ${loadAverages()}`)
console.log('---')
for (const [name, value] of Object.entries(figures)) console.log(`${name}: ${value}`)
