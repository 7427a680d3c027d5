/**
 * box run / box batch on real QEMU workers from the reference box (issue 15). Every job's
 * worker is restored from a ready state; boots are the cost, so there are three in all:
 * the no-network ready state of the runJob tests (made by the first), the network-on one
 * with a setup line of the limit tests (one worker, its phases called one by one, several
 * jobs through box-job over ssh), and the no-network one of the CLI tests (the box there
 * is the store's copy, another image folder). Run under the QEMU lock:
 *   flock /tmp/box-qemu.lock npx vitest run test/e2e/jobs.test.ts
 */
import {lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile} from 'node:fs/promises'
import {homedir, tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {runJob} from '../../src/lib/jobs/job.js'
import {
  copyIn,
  copyOut,
  create,
  destroy,
  newJobState,
  prepare,
  run,
  wait,
  type JobBox,
  type JobState,
} from '../../src/lib/jobs/phases.js'
import type {JobRecord, JobSpec} from '../../src/lib/jobs/spec.js'
import {defaultWorkerSource, workersDir, type WorkerSource} from '../../src/lib/jobs/worker.js'
import {box as cli, type CliEnv} from '../support/cli.js'
import {jobSpec, referenceJobBox} from '../support/job-box.js'

/** QEMU processes whose command line mentions `text`: none may be left after a job. */
async function qemuMentioning(text: string): Promise<string[]> {
  const {stdout} = await execa('pgrep', ['-af', 'qemu-system'], {reject: false})
  return stdout.split('\n').filter((line) => line.includes(text))
}

async function readRecord(dir: string): Promise<JobRecord> {
  return JSON.parse(await readFile(join(dir, 'result.json'), 'utf8')) as JobRecord
}

describe('jobs in fresh workers', {timeout: 600_000}, () => {
  let root: string
  let cacheDir: string
  let jobBox: JobBox
  let boxFile: string
  let boxDir: string
  /** The first job's /proc boot_id: every worker restored from one ready state has it. */
  let readyBootId: string

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'box-jobs-'))
    // A cache of its own: every worker of these tests lives under it, so pgrep can prove none is left.
    cacheDir = join(root, 'cache')
    ;({box: jobBox, boxFile, dir: boxDir} = await referenceJobBox())
  })

  afterAll(async () => {
    expect(await qemuMentioning(cacheDir)).toEqual([])
    await rm(root, {recursive: true, force: true})
    await rm(boxDir, {recursive: true, force: true})
  })

  const context = (spec: JobSpec, resultDir: string) => ({
    spec,
    box: jobBox,
    cacheDir,
    resultDir,
    cpus: 1,
    memoryMiB: 768,
  })

  it('a trivial job without network: input disk in, output disk back, one record', async () => {
    const input = join(root, 'submission')
    await mkdir(input)
    await writeFile(join(input, 'name.txt'), 'alice\n')
    const resultDir = join(root, 'echo')
    const spec = jobSpec({
      id: 'echo',
      command:
        'echo "hello $(cat /tmp/job/name.txt)"; id -un; id -u; echo done > /tmp/job/feedback.txt; ' +
        'echo left > /tmp/left-by-echo; cat /proc/sys/kernel/random/boot_id >&2',
      inputs: [{host: input, guest: '/tmp/job'}],
      outputs: ['/tmp/job/feedback.txt'],
    })
    const record = await runJob(context(spec, resultDir))
    console.log(`trivial job, no network, making the ready state: ${JSON.stringify(record.phases)}`)
    expect(record, JSON.stringify(record)).toMatchObject({
      id: 'echo',
      box: {name: 'reference'},
      status: 'ok',
      exitCode: 0,
      signal: null,
      timedOut: false,
      outputLimitHit: false,
      network: false,
      refusedOutputs: [],
    })
    const [greeting, user, uid] = (await readFile(join(resultDir, 'stdout'), 'utf8')).trim().split('\n')
    expect(greeting).toBe('hello alice')
    // Neither root nor the box's login user (who has sudo).
    expect(user).toBe('job')
    expect(Number(uid)).toBeGreaterThan(0)
    expect(await readFile(join(resultDir, 'feedback.txt'), 'utf8')).toBe('done\n')
    // The first job of this cache made the ready state (outside create's deadline), then was restored from it.
    expect(Object.keys(record.phases)).toEqual(['copyIn', 'ready', 'create', 'wait', 'run', 'copyOut', 'destroy'])
    expect(record.worker).toMatchObject({how: 'restored', madeReadyState: true, readyState: expect.any(String)})
    readyBootId = (await readFile(join(resultDir, 'stderr'), 'utf8')).trim()
    expect(readyBootId).toMatch(/^[0-9a-f-]{36}$/)
    expect(record.bytesOut).toEqual({
      stdout: greeting!.length + user!.length + uid!.length + 3,
      stderr: readyBootId.length + 1,
      files: 5,
    })
    expect(await readRecord(resultDir)).toEqual(record)
  })

  it('the next job is restored from the same ready state and sees nothing the first one left', async () => {
    const resultDir = join(root, 'next')
    const first = await readRecord(join(root, 'echo'))
    const record = await runJob(
      context(
        jobSpec({
          id: 'next',
          // And a job's process holds only stdin, stdout and stderr, none of box-agent's (its virtio
          // port, its root helper): ls lists its own, 3 being the folder it reads.
          command:
            'cat /proc/sys/kernel/random/boot_id; ls /tmp/left-by-echo 2>/dev/null || echo absent; echo $(ls /proc/self/fd)',
        }),
        resultDir,
      ),
    )
    console.log(`trivial job from the ready state, no network: ${JSON.stringify(record.phases)}`)
    expect(record, JSON.stringify(record)).toMatchObject({status: 'ok', exitCode: 0})
    expect(record.worker).toEqual({
      how: 'restored',
      readyState: first.worker!.readyState,
      madeReadyState: false,
      loadMs: expect.any(Number),
    })
    expect(Object.keys(record.phases)).toEqual(['copyIn', 'create', 'wait', 'run', 'copyOut', 'destroy'])
    // The same saved machine (one boot), yet a new disk and RAM as saved: the first job's file is gone.
    expect((await readFile(join(resultDir, 'stdout'), 'utf8')).trim().split('\n')).toEqual([
      readyBootId,
      'absent',
      '0 1 2 3',
    ])
  })

  it('a command that never ends: killed at the timeout, exit 124, the worker destroyed', async () => {
    const resultDir = join(root, 'forever')
    const record = await runJob(
      context(jobSpec({id: 'forever', command: 'echo started; sleep 600', timeoutMs: 3000}), resultDir),
    )
    expect(record).toMatchObject({status: 'timeout', exitCode: 124, timedOut: true, signal: 'SIGKILL'})
    expect(record.worker?.how).toBe('restored')
    expect(await readFile(join(resultDir, 'stdout'), 'utf8')).toBe('started\n')
    expect(await qemuMentioning(cacheDir)).toEqual([])
    expect(await readdir(workersDir(cacheDir))).toEqual([])
  })

  it("QEMU killed mid-job: an infrastructure failure with the serial log, not the job's", async () => {
    // A worker source that kills its own QEMU once the job runs: what a host OOM kill looks like.
    const killing: WorkerSource = async (spec, options) => {
      const worker = await defaultWorkerSource(spec, options)
      void (async () => {
        for (let i = 0; i < 600; i++) {
          const status = await worker.provider.askAgent!(worker.handle, 'job-status', {timeoutMs: 1000}).catch(() => '')
          if (status === 'running') {
            process.kill(Number(await readFile(join(worker.stateDir, 'qemu.pid'), 'utf8')), 'SIGKILL')
            return
          }
          await new Promise((resolve) => setTimeout(resolve, 200))
        }
      })()
      return worker
    }
    const record = await runJob({
      ...context(jobSpec({id: 'killed', command: 'sleep 60'}), join(root, 'killed')),
      workerSource: killing,
    })
    expect(record).toMatchObject({status: 'infrastructure', exitCode: 75, timedOut: false})
    expect(record.error!.message).toMatch(/the worker stopped while the job ran/)
    expect(record.error!.serialLogTail).toMatch(/\S/)
    expect(await qemuMentioning(cacheDir)).toEqual([])
  })

  describe('limits, on one worker with network (phases one by one)', () => {
    // Run once in the ready state before it is saved: the count stays 1 whatever runs after.
    const SETUP = ['echo ran >> /etc/box-setup-count && chmod 644 /etc/box-setup-count']
    let worker: JobState
    const phasesDir = () => join(root, 'phases')

    beforeAll(async () => {
      await mkdir(phasesDir(), {recursive: true})
      worker = newJobState({
        ...context(jobSpec({id: 'shared', command: 'true', network: true}), join(phasesDir(), 'shared')),
        workDir: join(phasesDir(), 'work-shared'),
        setup: SETUP,
      })
      await mkdir(worker.context.workDir, {recursive: true})
      await prepare(worker)
      await create(worker)
      await wait(worker)
    })

    afterAll(async () => {
      if (worker) await destroy(worker)
      expect(await qemuMentioning(cacheDir)).toEqual([])
    })

    /** One more job on the shared worker: its own state, the worker and ssh borrowed. */
    async function job(spec: Partial<JobSpec> & Pick<JobSpec, 'id' | 'command'>, follow?: (chunk: Buffer) => void) {
      const resultDir = join(phasesDir(), spec.id)
      const workDir = join(phasesDir(), `work-${spec.id}`)
      await mkdir(resultDir, {recursive: true})
      await mkdir(workDir, {recursive: true})
      const state = newJobState({
        ...context(jobSpec({...spec, network: true}), resultDir),
        workDir,
        setup: SETUP,
        onOutput: follow && ((_stream, chunk) => follow(chunk)),
      })
      state.worker = worker.worker
      state.ssh = worker.ssh
      await copyIn(state)
      const started = Date.now()
      const status = await run(state)
      const runMs = Date.now() - started
      await copyOut(state)
      return {state, status, resultDir, runMs}
    }

    it('streams output (--follow) and brings back outputs over ssh', async () => {
      const chunks: Buffer[] = []
      const {status, resultDir, state} = await job(
        {
          id: 'follow',
          command: [
            'sh',
            '-c',
            'echo one; echo two >&2; mkdir -p /tmp/o; echo r > /tmp/o/r.txt; echo "setup $(wc -l < /etc/box-setup-count)"',
          ],
          outputs: ['/tmp/o'],
        },
        (chunk) => chunks.push(chunk),
      )
      expect(status).toMatchObject({exit: 0, timedOut: false, cut: false})
      expect(Buffer.concat(chunks).toString()).toContain('one\n')
      expect(await readFile(join(resultDir, 'stderr'), 'utf8')).toBe('two\n')
      expect(await readFile(join(resultDir, 'o', 'r.txt'), 'utf8')).toBe('r\n')
      expect(state.bytesOut.files).toBe(2)
      expect(await readFile(join(resultDir, 'stdout'), 'utf8')).toBe('one\nsetup 1\n')
      expect(worker.worker!.start).toMatchObject({how: 'restored', madeReadyState: true})
      expect(worker.phases.ready).toBeGreaterThan(0)
    })

    it('the output limit is per stream: stderr cut with its marker, stdout whole and unmarked', async () => {
      const {state, resultDir} = await job({
        id: 'stderr-flood',
        command: 'echo small; head -c 5000000 /dev/zero | tr "\\0" e >&2',
        outputLimit: 64 * 1024,
        timeoutMs: 60_000,
      })
      expect(await readFile(join(resultDir, 'stdout'), 'utf8')).toBe('small\n')
      const stderr = await readFile(join(resultDir, 'stderr'), 'utf8')
      expect(stderr).toMatch(/^e{65536}\n\[box: output cut at .*\]\n$/)
      expect(state.outputLimitHit).toBe(true)
      expect(state.bytesOut).toMatchObject({stdout: 6, stderr: 64 * 1024})
    })

    it('a job that prints 100 MB at a 1 MB limit: the host gets at most 1.1 MB and the job is stopped', async () => {
      const {state, resultDir} = await job({
        id: 'flood',
        command: 'head -c 100000000 /dev/zero | tr "\\0" x; echo finished',
        outputLimit: 1024 * 1024,
        timeoutMs: 120_000,
      })
      const size = (await stat(join(resultDir, 'stdout'))).size
      expect(size).toBeLessThanOrEqual(1.1 * 1000 * 1000 + 1024 * 100)
      expect(size).toBeLessThanOrEqual(1_100_000)
      expect(state.outputLimitHit).toBe(true)
      expect(state.bytesOut.stdout).toBe(1024 * 1024)
      expect(await readFile(join(resultDir, 'stdout'), 'utf8')).toMatch(/\[box: output cut at .*\]\n$/)
    })

    it('a fork bomb is held by the process limit and the job still ends', async () => {
      const {status, resultDir, runMs} = await job({
        id: 'forkbomb',
        command: 'bomb() { bomb | bomb & }; bomb; sleep 3; echo the shell survived',
        nproc: 50,
        timeoutMs: 60_000,
      })
      expect(status.timedOut).toBe(false)
      expect(runMs).toBeLessThan(60_000)
      expect(await readFile(join(resultDir, 'stderr'), 'utf8')).toMatch(/fork|Resource temporarily unavailable/i)
      // Nothing of the job user is left in the worker.
      const {stdout} = await execa('ssh', [
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        'UserKnownHostsFile=/dev/null',
        '-o',
        'LogLevel=ERROR',
        '-o',
        `ControlPath=${worker.ssh!.controlPath}`,
        '-i',
        worker.ssh!.keyFile,
        '-p',
        String(worker.ssh!.port),
        `${worker.ssh!.user}@127.0.0.1`,
        'sleep 1; pgrep -u job | wc -l',
      ])
      expect(stdout.trim()).toBe('0')
    })

    it('a job that fills the disk is stopped by the file-size limit', async () => {
      const {status, resultDir} = await job({
        id: 'fill',
        command: 'head -c 50000000 /dev/zero > /tmp/big; echo "exit $?"; stat -c %s /tmp/big',
        fileSizeLimit: 1024 * 1024,
      })
      expect(status.exit).toBe(0)
      const out = await readFile(join(resultDir, 'stdout'), 'utf8')
      expect(out).toMatch(/exit 1\d\d/)
      expect(out.trim().split('\n').at(-1)).toBe(String(1024 * 1024))
    })

    it('hostile outputs (a link to ~/.ssh and a file through it, devices) are never followed or created', async () => {
      const before = await readdir(join(homedir(), '.ssh')).catch(() => [])
      const {state, resultDir} = await job({
        id: 'hostile',
        command:
          'mkdir -p /tmp/h && cd /tmp/h && ln -s ' +
          join(homedir(), '.ssh') +
          ' ssh && ln -s ../../../../etc up && echo fine > ok.txt',
        outputs: ['/tmp/h', '/dev/null', '/tmp/h/ssh/authorized_keys'],
      })
      expect(await readFile(join(resultDir, 'h', 'ok.txt'), 'utf8')).toBe('fine\n')
      const refused = state.refusedOutputs.map((entry) => entry.name).sort()
      expect(refused).toEqual(expect.arrayContaining(['tmp/h/ssh', 'tmp/h/up', 'dev/null']))
      expect(await readdir(join(resultDir, 'h'))).toEqual(['ok.txt'])
      await expect(lstat(join(resultDir, 'null'))).rejects.toThrow()
      await expect(lstat(join(resultDir, 'authorized_keys'))).rejects.toThrow()
      expect(await readdir(join(homedir(), '.ssh')).catch(() => [])).toEqual(before)
    })
  })

  describe('through the CLI', () => {
    let env: CliEnv
    let project: string

    beforeAll(async () => {
      project = join(root, 'project')
      await mkdir(join(project, 'submissions', 'alice'), {recursive: true})
      await mkdir(join(project, 'submissions', 'bob'), {recursive: true})
      await writeFile(join(project, 'submissions', 'alice', 'answer'), '42\n')
      await writeFile(join(project, 'submissions', 'bob', 'answer'), '41\n')
      // The reference box has no make: the grader is a shell script, run as Tango runs a Makefile.
      await writeFile(
        join(project, 'grade.sh'),
        'cd /tmp/job\nif [ "$(cat answer)" = 42 ]; then echo pass > feedback.txt; else echo fail > feedback.txt; fi\ncat feedback.txt\n',
      )
      env = {cwd: project, dataDir: join(root, 'data'), cacheDir}
      const added = await cli(env, ['add', 'reference', boxFile])
      expect(added.exitCode, added.stderr).toBe(0)
    })

    it('refuses an input that does not exist or climbs out, before any worker starts', async () => {
      const missing = await cli(env, ['run', '--box', 'reference', '--in', 'nope:/tmp/x', '--', 'true'])
      expect(missing.exitCode).toBe(2)
      expect(missing.stderr).toMatch(/nope does not exist/)
      const escape = await cli(env, ['run', '--box', 'reference', '--in', '../../etc:/tmp/x', '--', 'true'])
      expect(escape.exitCode).toBe(2)
      expect(escape.stderr).toMatch(/climbs out with "\.\."/)
      await writeFile(
        join(project, 'bad.yaml'),
        'box: reference\njobs:\n  - id: a\n    command: [true]\n    networks: off\n',
      )
      const bad = await cli(env, ['batch', 'bad.yaml'])
      expect(bad.exitCode).toBe(2)
      expect(bad.stderr).toContain(`${join(project, 'bad.yaml')}:5:5: unknown field "jobs.0.networks"`)
      expect(await qemuMentioning(cacheDir)).toEqual([])
    })

    it('a batch: --parallel 2, an unreachable worker retried as an infrastructure failure, Ctrl-C, --resume', async () => {
      const jobs = `box: reference
memory: 768
cpus: 1
retries: 1
defaults: {timeout: 60s, output_limit: 1M, network: off}
jobs:
  - id: alice
    command: [sh, /tmp/grader/grade.sh]
    in: [submissions/alice:/tmp/job, grade.sh:/tmp/grader/grade.sh]
    out: [/tmp/job/feedback.txt]
  - id: never-up
    command: [sh, -c, exit 0]
    timeouts: {create: 100ms}
  - id: bob
    command: "sleep 15; sh /tmp/grader/grade.sh"
    in: [submissions/bob:/tmp/job, grade.sh:/tmp/grader/grade.sh]
    out: [/tmp/job/feedback.txt]
`
      await writeFile(join(project, 'jobs.yaml'), jobs)
      // Interrupted once the first job has finished: every worker stops, finished results stay.
      // (bob waits first: restored workers are quick, and the batch must still be running at Ctrl-C.)
      const child = execa(join(process.cwd(), 'bin', 'box'), ['batch', 'jobs.yaml', '--parallel', '2'], {
        cwd: project,
        reject: false,
        env: {BOX_DATA_DIR: env.dataDir, BOX_CACHE_DIR: env.cacheDir, NO_COLOR: '1'},
      })
      let stderr = ''
      await new Promise<void>((resolve) => {
        child.stderr!.on('data', (chunk: Buffer) => {
          stderr += chunk.toString()
          if (/^(alice|bob): ok/m.test(stderr)) resolve()
        })
        void child.then(() => resolve())
      })
      child.kill('SIGINT')
      const interrupted = await child
      expect(interrupted.exitCode, interrupted.stderr).toBe(130)
      expect(await qemuMentioning(cacheDir)).toEqual([])
      const finishedFirst: string[] = []
      for (const id of await readdir(join(project, 'results'))) {
        const record = await readRecord(join(project, 'results', id)).catch(() => undefined)
        if (record && record.status !== 'infrastructure') finishedFirst.push(id)
      }
      expect(finishedFirst.length).toBeGreaterThan(0)
      expect(finishedFirst.length).toBeLessThan(3)

      const resumed = await cli(env, ['batch', 'jobs.yaml', '--parallel', '2', '--resume', '--json'])
      const result = JSON.parse(resumed.stdout) as {records: JobRecord[]; skipped: string[]}
      const records = new Map<string, JobRecord>()
      for (const id of ['alice', 'never-up', 'bob']) records.set(id, await readRecord(join(project, 'results', id)))
      expect(records.get('alice')).toMatchObject({status: 'ok', exitCode: 0})
      expect(records.get('bob')).toMatchObject({status: 'ok', exitCode: 0})
      expect(await readFile(join(project, 'results', 'alice', 'feedback.txt'), 'utf8')).toBe('pass\n')
      expect(await readFile(join(project, 'results', 'bob', 'feedback.txt'), 'utf8')).toBe('fail\n')
      expect(await readFile(join(project, 'results', 'alice', 'stdout'), 'utf8')).toBe('pass\n')
      // Never came up: a worker failure, tried twice (retries: 1), never the job's failure.
      expect(records.get('never-up')).toMatchObject({status: 'infrastructure', exitCode: 75, attempts: 2})
      expect(records.get('never-up')!.error!.message).toMatch(/the create phase did not finish within/)
      // Both from the ready state this cache made for the store's copy of the box.
      expect(records.get('alice')!.worker?.how).toBe('restored')
      expect(records.get('bob')!.worker?.readyState).toBe(records.get('alice')!.worker?.readyState)
      expect(resumed.exitCode).toBe(75)
      expect(result.skipped.length + result.records.length).toBe(3)
      expect(result.skipped.sort()).toEqual(finishedFirst.sort())
      expect(await qemuMentioning(cacheDir)).toEqual([])
    })

    it("box run through the CLI: the job's own exit code, its record, outputs in box-run/<id>/; Ctrl-C stops the worker", async () => {
      // The machine's settings are the batch's (1 CPU, 768 MiB): its ready state is restored.
      await writeFile(join(project, 'Boxfile'), 'box: reference\nmemory: 768\ncpus: 1\n')
      const ran = await cli(env, [
        'run',
        '--machine',
        'default',
        '--in',
        'submissions/alice:/tmp/job',
        '--out',
        '/tmp/job/answer',
        '--json',
        '--',
        'cat /tmp/job/answer; exit 3',
      ])
      expect(ran.exitCode, ran.stderr).toBe(3)
      const record = JSON.parse(ran.stdout) as JobRecord
      expect(record).toMatchObject({status: 'failed', exitCode: 3, timedOut: false, worker: {how: 'restored'}})
      const resultDir = join(project, 'box-run', record.id)
      expect(await readRecord(resultDir)).toEqual(record)
      expect(await readFile(join(resultDir, 'stdout'), 'utf8')).toBe('42\n')
      expect(await readFile(join(resultDir, 'answer'), 'utf8')).toBe('42\n')

      const child = execa(join(process.cwd(), 'bin', 'box'), ['run', '--machine', 'default', '--', 'sleep 120'], {
        cwd: project,
        reject: false,
        env: {BOX_DATA_DIR: env.dataDir, BOX_CACHE_DIR: env.cacheDir, NO_COLOR: '1'},
      })
      // Interrupted once its worker runs (the job's QEMU is up).
      const deadline = Date.now() + 120_000
      while ((await qemuMentioning(cacheDir)).length === 0 && Date.now() < deadline) await sleep(100)
      expect(await qemuMentioning(cacheDir)).not.toEqual([])
      child.kill('SIGINT')
      const interrupted = await child
      expect(interrupted.exitCode, interrupted.stderr).toBe(130)
      expect(await qemuMentioning(cacheDir)).toEqual([])
    })
  })
})
