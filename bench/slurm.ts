/**
 * box batch --on slurm figures, against a real cluster (SLURM_CONF, or one this script starts
 * with scripts/slurm-cluster). Run the built CLI (npm run build first):
 *   node --import tsx/esm bench/slurm.ts submit [runs]        100-job array, submitted held: from
 *       `box batch --on slurm` to every task queued in squeue, then scancel (boots nothing)
 *   flock /tmp/box-qemu.lock node --import tsx/esm bench/slurm.ts overhead [runs]
 *       one trivial job: local `box run` against a 1-job `box batch --on slurm --wait` (boots)
 *   node --import tsx/esm bench/slurm.ts dispatch [runs]
 *       Slurm's share of a job's time, without a boot: a 1-job batch whose box is missing (retries: 0)
 *       from `box batch --on slurm` to its record, against a local `box run` failing the same way
 *   flock /tmp/box-qemu.lock node --import tsx/esm bench/slurm.ts throughput [jobs] [parallel]
 *       N trivial jobs through Slurm (--max-running P) against the local box batch (--parallel P)
 */
import {createHash} from 'node:crypto'
import {chmod, mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {testCacheDir} from '../test/support/cache.js'
import {median} from './stats.js'

const mode = process.argv[2] ?? 'submit'
const cli = join(PROJECT_ROOT, 'bin', 'run.js')
const root = await mkdtemp(join(tmpdir(), 'box-bench-slurm-'))
await chmod(root, 0o755)
let clusterDir: string | undefined
let slurmConf = process.env.SLURM_CONF
if (!slurmConf) {
  clusterDir = join(root, 'cluster')
  await execa(join(PROJECT_ROOT, 'scripts', 'slurm-cluster'), ['start', clusterDir], {stdio: 'inherit'})
  slurmConf = join(clusterDir, 'slurm.conf')
}
const env = {BOX_DATA_DIR: join(root, 'data'), BOX_CACHE_DIR: join(root, 'cache'), NO_COLOR: '1', SLURM_CONF: slurmConf}

const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`

async function box(args: string[], cwd: string) {
  return execa(process.execPath, [cli, ...args], {cwd, env, stdin: 'ignore', reject: false})
}

/** The reference box as a file the nodes can read (one host: any local path; nodes fetch it into their store). */
async function referenceBox(): Promise<{file: string; sum: string}> {
  const {path} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
  return {
    file: path,
    sum: createHash('sha256')
      .update(await readFile(path))
      .digest('hex'),
  }
}

async function jobFile(dir: string, jobs: number, head: string): Promise<string> {
  await mkdir(dir, {recursive: true})
  const file = join(dir, 'jobs.yaml')
  const lines = Array.from({length: jobs}, (_, i) => `  - {id: job-${i}, command: [echo, "${i}"]}`)
  await writeFile(file, `${head}\njobs:\n${lines.join('\n')}\n`)
  return file
}

async function queuedTasks(name: string): Promise<number> {
  const {stdout} = await execa('squeue', ['--json'], {env})
  const jobs = (
    JSON.parse(stdout) as {
      jobs: Array<{name: string; job_state: string; array_task_id: number | null; array_task_string: string}>
    }
  ).jobs
  let count = 0
  for (const job of jobs.filter((j) => j.name === name && j.job_state === 'PENDING')) {
    if (typeof job.array_task_id === 'number') count++
    else {
      const match = /^(\d+)-(\d+)/.exec(job.array_task_string)
      if (match) count += Number(match[2]) - Number(match[1]) + 1
    }
  }
  return count
}

try {
  if (mode === 'submit') {
    const runs = Number(process.argv[3] ?? 5)
    const times: number[] = []
    const inBox: number[] = []
    for (let run = 0; run < runs; run++) {
      const dir = join(root, `submit-${run}`)
      // Held: nothing boots; box_url is never fetched.
      const file = await jobFile(dir, 100, 'box: reference\nbox_url: https://boxes.example.org/reference.box')
      const started = performance.now()
      const submit = await box(['batch', file, '--on', 'slurm', '--hold', '--json'], dir)
      if (submit.exitCode !== 0) throw new Error(submit.stdout + submit.stderr)
      const result = JSON.parse(submit.stdout) as {batchId: string; submitMs: number; arrayJobId: string}
      while ((await queuedTasks(`box-batch-${result.batchId}`)) < 100) await sleep(20)
      times.push(performance.now() - started)
      inBox.push(result.submitMs)
      await execa('scancel', [result.arrayJobId], {env})
    }
    console.log(
      `100-job array, box batch --on slurm to all 100 tasks queued: median ${seconds(median(times))} (min ${seconds(Math.min(...times))}, max ${seconds(Math.max(...times))}, ${runs} runs)`,
    )
    console.log(`  of which inside box (job file checks, scontrol ping, sbatch): median ${seconds(median(inBox))}`)
  } else if (mode === 'dispatch') {
    const runs = Number(process.argv[3] ?? 5)
    const viaSlurm: number[] = []
    const local: number[] = []
    for (let run = 0; run < runs; run++) {
      const dir = join(root, `dispatch-${run}`)
      const file = await jobFile(dir, 1, 'box: not-stored\nretries: 0')
      const started = Date.now()
      const submit = await box(['batch', file, '--on', 'slurm', '--json'], dir)
      if (submit.exitCode !== 0) throw new Error(submit.stdout + submit.stderr)
      const recordFile = join(dir, 'results', 'job-0', 'result.json')
      let record: {status: string; finishedAt: string} | undefined
      while (!record) {
        record = await readFile(recordFile, 'utf8').then(
          (text) => JSON.parse(text),
          () => undefined,
        )
        if (!record) await sleep(20)
      }
      if (record.status !== 'infrastructure') throw new Error(`unexpected record ${JSON.stringify(record)}`)
      viaSlurm.push(Date.parse(record.finishedAt) - started)
      const t0 = performance.now()
      await box(['run', '--box', 'not-stored', '--', 'echo'], dir)
      local.push(performance.now() - t0)
    }
    console.log(
      `submit → record of a job that fails at box lookup: Slurm median ${seconds(median(viaSlurm))} (${viaSlurm.map(seconds).join(', ')}); local box run median ${seconds(median(local))}; Slurm adds ${seconds(median(viaSlurm) - median(local))}`,
    )
  } else if (mode === 'overhead') {
    const runs = Number(process.argv[3] ?? 3)
    const {file: boxFile, sum} = await referenceBox()
    // Local: the box in this store first, so neither side pays for the import in the figure.
    const add = await box(['add', 'reference', boxFile], root)
    if (add.exitCode !== 0) throw new Error(add.stderr)
    const local: number[] = []
    const slurm: number[] = []
    for (let run = 0; run < runs; run++) {
      let started = performance.now()
      const one = await box(['run', '--box', 'reference', '--', 'echo', 'hi'], root)
      if (one.exitCode !== 0) throw new Error(one.stderr)
      local.push(performance.now() - started)
      const dir = join(root, `overhead-${run}`)
      const file = await jobFile(dir, 1, `box: reference\nbox_url: ${boxFile}\nbox_checksum: sha256:${sum}`)
      started = performance.now()
      const batch = await box(['batch', file, '--on', 'slurm', '--shared', '/', '--wait', '--json'], dir)
      if (batch.exitCode !== 0) throw new Error(batch.stderr)
      slurm.push(performance.now() - started)
    }
    console.log(
      `one trivial job (echo), resnap boot: local box run median ${seconds(median(local))}; box batch --on slurm --wait median ${seconds(median(slurm))}; overhead ${seconds(median(slurm) - median(local))} (${runs} runs each)`,
    )
    console.log(`  local: ${local.map(seconds).join(', ')}; slurm: ${slurm.map(seconds).join(', ')}`)
  } else if (mode === 'throughput') {
    const jobs = Number(process.argv[3] ?? 40)
    const parallel = Number(process.argv[4] ?? 2)
    const {file: boxFile, sum} = await referenceBox()
    const head = `box: reference\nbox_url: ${boxFile}\nbox_checksum: sha256:${sum}`
    const add = await box(['add', 'reference', boxFile], root)
    if (add.exitCode !== 0) throw new Error(add.stderr)
    const slurmFile = await jobFile(join(root, 'through-slurm'), jobs, head)
    let started = performance.now()
    const viaSlurm = await box(
      ['batch', slurmFile, '--on', 'slurm', '--shared', '/', '--max-running', String(parallel), '--wait', '--json'],
      join(root, 'through-slurm'),
    )
    const slurmMs = performance.now() - started
    const localFile = await jobFile(join(root, 'through-local'), jobs, head)
    started = performance.now()
    const viaLocal = await box(
      ['batch', localFile, '--parallel', String(parallel), '--json'],
      join(root, 'through-local'),
    )
    const localMs = performance.now() - started
    const ok = (stdout: string) =>
      (JSON.parse(stdout) as {records: Array<{status: string}>}).records.filter((r) => r.status === 'ok').length
    console.log(
      `${jobs} trivial jobs at ${parallel} at once: Slurm ${((jobs / slurmMs) * 60_000).toFixed(1)} jobs/min (${seconds(slurmMs)}, ${ok(viaSlurm.stdout)} ok); local box batch ${((jobs / localMs) * 60_000).toFixed(1)} jobs/min (${seconds(localMs)}, ${ok(viaLocal.stdout)} ok)`,
    )
  } else {
    throw new Error(`unknown mode ${mode}: submit, overhead or throughput`)
  }
} finally {
  if (clusterDir) await execa(join(PROJECT_ROOT, 'scripts', 'slurm-cluster'), ['stop', clusterDir], {reject: false})
  await rm(root, {recursive: true, force: true})
}
