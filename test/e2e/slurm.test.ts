/**
 * box batch --on slurm against a real Slurm cluster (Debian's slurm-wlm and munge): the jobs
 * boot real workers, so run it under the QEMU lock:
 *   flock /tmp/box-qemu.lock npx vitest run test/e2e/slurm.test.ts
 * With SLURM_CONF set (.ci/run starts a cluster) the test uses that cluster; otherwise it starts
 * its own with scripts/slurm-cluster (two slurmd on this host) in a temp folder and stops it
 * by its pid files afterwards.
 */
import {createHash} from 'node:crypto'
import {chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import type {SlurmBatchStatus} from '../../src/lib/jobs/engines/slurm.js'
import {startTestServer, type TestServer} from '../integration/download-server.js'
import {testCacheDir} from '../support/cache.js'
import {BIN} from '../support/cli.js'

const CLUSTER_SCRIPT = join(PROJECT_ROOT, 'scripts', 'slurm-cluster')

let root: string
let clusterDir: string | undefined
let slurmConf: string
let server: TestServer
let boxSum: string

/** The built CLI with this test's store, cache and cluster. */
function box(args: string[], options: {cwd: string; env?: Record<string, string>; timeout?: number}) {
  return execa(BIN, args, {
    cwd: options.cwd,
    reject: false,
    stdin: 'ignore',
    timeout: options.timeout ?? 900_000,
    env: {
      BOX_DATA_DIR: join(root, 'data'),
      BOX_CACHE_DIR: join(root, 'cache'),
      NO_COLOR: '1',
      SLURM_CONF: slurmConf,
      ...options.env,
    },
  })
}

async function squeueNames(): Promise<string[]> {
  const {stdout} = await execa('squeue', ['--json'], {env: {SLURM_CONF: slurmConf}})
  return (JSON.parse(stdout) as {jobs: Array<{name: string; job_state: string}>}).jobs
    .filter((job) => ['PENDING', 'RUNNING', 'COMPLETING', 'CONFIGURING'].includes(job.job_state))
    .map((job) => job.name)
}

/** QEMU processes of this test's workers (their files live under this test's cache). */
async function ourQemus(): Promise<string[]> {
  const {stdout} = await execa('pgrep', ['-a', '-f', `qemu-system.*${root}`], {reject: false})
  return stdout.split('\n').filter(Boolean)
}

async function jobFile(dir: string, jobs: unknown[], extra: Record<string, unknown> = {}): Promise<string> {
  await mkdir(dir, {recursive: true})
  const file = join(dir, 'jobs.yaml')
  const head = {box: 'reference', box_url: server.url('/reference.box'), box_checksum: `sha256:${boxSum}`, ...extra}
  const lines = Object.entries(head)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => `${key}: ${JSON.stringify(value)}`)
  await writeFile(file, `${lines.join('\n')}\njobs:\n${jobs.map((job) => `  - ${JSON.stringify(job)}`).join('\n')}\n`)
  return file
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'box-slurm-'))
  // slurmd runs the tasks as this user; munge must be able to reach its folder.
  await chmod(root, 0o755)
  if (process.env.SLURM_CONF) {
    slurmConf = process.env.SLURM_CONF
  } else {
    clusterDir = join(root, 'cluster')
    await execa(CLUSTER_SCRIPT, ['start', clusterDir, '2'], {timeout: 120_000})
    slurmConf = join(clusterDir, 'slurm.conf')
  }
  const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
  const data = await readFile(boxFile)
  boxSum = createHash('sha256').update(data).digest('hex')
  server = await startTestServer()
  server.files.set('/reference.box', {data, etag: `"${boxSum.slice(0, 16)}"`})
})

afterAll(async () => {
  await server?.close()
  if (clusterDir) await execa(CLUSTER_SCRIPT, ['stop', clusterDir], {timeout: 120_000, reject: false})
  // Nothing of this test may outlive it: no worker QEMU.
  expect(await ourQemus()).toEqual([])
  await rm(root, {recursive: true, force: true})
})

describe('box batch --on slurm', () => {
  it('refuses before submitting: an input the nodes cannot see, no sbatch on PATH, no controller', async () => {
    const dir = join(root, 'refused')
    await mkdir(join(dir, 'submission'), {recursive: true})
    const file = await jobFile(dir, [{id: 'alice', command: ['ls', '/tmp/job'], in: ['submission:/tmp/job']}])
    const before = await squeueNames()

    const local = await box(['batch', file, '--on', 'slurm'], {cwd: dir})
    expect(local.exitCode).toBe(2)
    expect(local.stderr).toContain(
      `input ${join(dir, 'submission')} is a path on this host only; the nodes cannot see it`,
    )
    expect(local.stderr).toContain('--shared')

    // The same input under the shared path passes that check; a results folder outside it does not.
    const outside = await box(['batch', file, '--on', 'slurm', '--shared', dir, '--results', join(root, 'elsewhere')], {
      cwd: dir,
    })
    expect(outside.exitCode).toBe(2)
    expect(outside.stderr).toContain('is not under the shared path')

    // No Slurm client on PATH: only node is there.
    const bare = join(root, 'bare-path')
    await mkdir(bare, {recursive: true})
    await symlink(process.execPath, join(bare, 'node'))
    const noSlurm = await box(['batch', file, '--on', 'slurm'], {cwd: dir, env: {PATH: bare}})
    expect(noSlurm.exitCode).toBe(2)
    expect(noSlurm.stderr).toContain('sbatch is not on PATH')
    expect(noSlurm.stderr).toContain('apt-get install slurm-client')

    // A slurm.conf whose controller port nobody listens on.
    const deadConf = join(root, 'dead-slurm.conf')
    await writeFile(deadConf, (await readFile(slurmConf, 'utf8')).replace(/^SlurmctldPort=.*$/m, 'SlurmctldPort=16999'))
    const plain = await jobFile(join(root, 'dead'), [{id: 'one', command: ['true']}])
    const noController = await box(['batch', plain, '--on', 'slurm'], {cwd: root, env: {SLURM_CONF: deadConf}})
    expect(noController.exitCode).toBe(1)
    expect(noController.stderr).toContain('the Slurm controller (slurmctld) is not reachable: nothing was submitted')

    // A job file with an unknown field: its place is named, nothing submitted.
    const bad = join(root, 'bad')
    await mkdir(bad, {recursive: true})
    await writeFile(
      join(bad, 'jobs.yaml'),
      `box: reference\njobs:\n  - id: one\n    command: [true]\n    colour: red\n`,
    )
    const badFile = await box(['batch', join(bad, 'jobs.yaml'), '--on', 'slurm'], {cwd: bad})
    expect(badFile.exitCode).not.toBe(0)
    expect(badFile.stderr).toMatch(/jobs\.yaml:5:5/)

    for (const result of [local, outside, noSlurm, noController, badFile])
      expect(result.stdout).not.toContain('submitted')
    expect(await squeueNames()).toEqual(before)
    await expect(stat(join(dir, 'results', '.box-batch'))).rejects.toThrow()
  }, 120_000)

  it('runs every job of the file as one array and brings back every record', async () => {
    const dir = join(root, 'batch')
    const file = await jobFile(dir, [
      {id: 'one', command: ['echo', 'one']},
      {id: 'two', command: 'echo two >&2; exit 3'},
      {id: 'three', command: 'mkdir -p /tmp/out && echo three > /tmp/out/answer.txt', out: ['/tmp/out/answer.txt']},
    ])
    const downloadsBefore = server.requests.filter(
      (request) => request.path === '/reference.box' && request.status === 200,
    ).length
    const started = Date.now()
    const run = await box(['batch', file, '--on', 'slurm', '--max-running', '2', '--time', '20', '--wait', '--json'], {
      cwd: dir,
    })
    const result = JSON.parse(run.stdout) as {
      arrayJobId: string
      records: Array<{id: string; status: string; exitCode: number; slurm: {node: string}}>
      status: SlurmBatchStatus
    }
    expect(run.exitCode, run.stderr).toBe(1) // job two failed (its own exit 3)
    console.log(`3 jobs through Slurm in ${Math.round((Date.now() - started) / 1000)} s`)

    const records = Object.fromEntries(result.records.map((record) => [record.id, record]))
    expect(Object.keys(records).sort()).toEqual(['one', 'three', 'two'])
    expect(records.one).toMatchObject({status: 'ok', exitCode: 0})
    expect(records.two).toMatchObject({status: 'failed', exitCode: 3})
    expect(records.three).toMatchObject({status: 'ok', exitCode: 0})
    for (const id of ['one', 'two', 'three']) {
      const onDisk = JSON.parse(await readFile(join(dir, 'results', id, 'result.json'), 'utf8'))
      expect(onDisk).toEqual(records[id])
      expect(onDisk.slurm.node.length).toBeGreaterThan(0)
      expect(onDisk.box.name).toBe('reference')
    }
    expect(await readFile(join(dir, 'results', 'one', 'stdout'), 'utf8')).toBe('one\n')
    expect(await readFile(join(dir, 'results', 'two', 'stderr'), 'utf8')).toBe('two\n')
    expect(await readFile(join(dir, 'results', 'three', 'answer.txt'), 'utf8')).toBe('three\n')
    // Two tasks started at once and both needed the box: it was downloaded once (one store here).
    const downloads =
      server.requests.filter((request) => request.path === '/reference.box' && request.status === 200).length -
      downloadsBefore
    expect(downloads).toBe(1)

    const status = await box(['batch', 'status', file, '--json'], {cwd: dir})
    expect(status.exitCode).toBe(0)
    const parsed = JSON.parse(status.stdout) as SlurmBatchStatus
    expect(parsed.counts).toMatchObject({total: 3, queued: 0, running: 0, done: 2, failed: 1, infrastructure: 0})
    expect(parsed.finished).toBe(true)
    expect(parsed.arrayJobId).toBe(result.arrayJobId)
    expect(Object.fromEntries(parsed.jobs.map((job) => [job.id, job.state]))).toEqual({
      one: 'done',
      two: 'failed',
      three: 'done',
    })
  }, 1_200_000)

  it('reports a box no node can get as a worker failure, retried on another node', async () => {
    const dir = join(root, 'unreachable')
    const file = await jobFile(dir, [{id: 'lonely', command: ['true']}], {
      box: 'missing',
      box_url: 'http://127.0.0.1:9/missing.box',
      box_checksum: undefined,
      retries: 1,
    })
    const run = await box(['batch', file, '--on', 'slurm', '--wait', '--json'], {cwd: dir})
    expect(run.exitCode).toBe(75)
    const status = JSON.parse((await box(['batch', 'status', file, '--json'], {cwd: dir})).stdout) as SlurmBatchStatus
    expect(status.counts).toMatchObject({infrastructure: 1, failed: 0, done: 0})
    const record = JSON.parse(await readFile(join(dir, 'results', 'lonely', 'result.json'), 'utf8'))
    expect(record).toMatchObject({status: 'infrastructure', exitCode: 75, attempts: 2})
    expect(record.error.message).toContain('could not get box missing')
    // The first attempt's Slurm output file names its node; with more than one node the retry excluded it.
    const stateDir = join(dir, 'results', '.box-batch', status.batchId)
    const outputs = (await readdir(stateDir))
      .filter((name) => name.startsWith('task-0-'))
      .sort((a, b) => Number(a.split('-')[2]!.split('.')[0]) - Number(b.split('-')[2]!.split('.')[0]))
    expect(outputs).toHaveLength(2)
    const first = await readFile(join(stateDir, outputs[0]!), 'utf8')
    const firstNode = /job lonely on (\S+): infrastructure/.exec(first)?.[1]
    expect(first).toContain('submitted again as job')
    const {stdout: sinfo} = await execa('sinfo', ['-h', '-N', '-o', '%N'], {env: {SLURM_CONF: slurmConf}})
    if (new Set(sinfo.split('\n').filter(Boolean)).size > 1) expect(record.slurm.node).not.toBe(firstNode)
    else expect(record.slurm.node).toBe(firstNode)
  }, 300_000)

  it('cancels a running array: the task stops its worker, no QEMU is left', async () => {
    const dir = join(root, 'cancel')
    const file = await jobFile(dir, [{id: 'forever', command: ['sleep', '600'], timeout: '15m'}])
    const submit = await box(['batch', file, '--on', 'slurm', '--json'], {cwd: dir})
    expect(submit.exitCode, submit.stderr).toBe(0)
    // Wait until the worker's QEMU is up (the job is running on its node).
    const deadline = Date.now() + 600_000
    while ((await ourQemus()).length === 0) {
      expect(Date.now()).toBeLessThan(deadline)
      await sleep(1000)
    }
    const running = JSON.parse((await box(['batch', 'status', file, '--json'], {cwd: dir})).stdout) as SlurmBatchStatus
    expect(running.counts.running).toBe(1)

    const cancel = await box(['batch', 'cancel', file, '--json'], {cwd: dir})
    expect(cancel.exitCode, cancel.stderr).toBe(0)
    expect(JSON.parse(cancel.stdout)).toMatchObject({cancelled: 1})
    // Slurm's SIGTERM reaches box in the task; its worker goes before Slurm's KillWait (30 s) ends.
    const gone = Date.now() + 60_000
    while ((await ourQemus()).length > 0 && Date.now() < gone) await sleep(500)
    expect(await ourQemus()).toEqual([])
    // Slurm holds the task as COMPLETING (shown as running) until box in it has exited.
    const ended = Date.now() + 60_000
    let after: SlurmBatchStatus
    do {
      after = JSON.parse((await box(['batch', 'status', file, '--json'], {cwd: dir})).stdout) as SlurmBatchStatus
      if (after.finished) break
      await sleep(500)
    } while (Date.now() < ended)
    expect(after.jobs[0]!.state).toBe('cancelled')
    expect(after.counts).toMatchObject({cancelled: 1, running: 0, queued: 0})
  }, 900_000)

  it("a job that outlives Slurm's --time gets a timeout record (exit 124), not a worker failure", async () => {
    const dir = join(root, 'time-limit')
    const file = await jobFile(dir, [{id: 'slow', command: ['sleep', '600'], timeout: '15m'}])
    // --time 1: one minute; Slurm stops the task as scancel does, and box asks Slurm why.
    const run = await box(['batch', file, '--on', 'slurm', '--time', '1', '--wait', '--json'], {cwd: dir})
    expect(run.exitCode, run.stderr).toBe(1)
    const record = JSON.parse(await readFile(join(dir, 'results', 'slow', 'result.json'), 'utf8'))
    expect(record).toMatchObject({
      status: 'timeout',
      exitCode: 124,
      timedOut: true,
      attempts: 1,
      stoppedBy: "Slurm's time limit (--time 1) stopped the job",
    })
    expect(record.error).toBeUndefined()
    expect(await ourQemus()).toEqual([])
    const status = JSON.parse((await box(['batch', 'status', file, '--json'], {cwd: dir})).stdout) as SlurmBatchStatus
    expect(status.counts).toMatchObject({failed: 1, infrastructure: 0, lost: 0})
  }, 600_000)
})
