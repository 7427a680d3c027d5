/**
 * One job as plain async functions a test can call one by one (Tango's VMMS shape):
 * copyIn → create → wait → run → copyOut → destroy without network (the input disk must
 * exist before the worker starts), create → wait → copyIn → run → copyOut → destroy with
 * it. Each phase has its own deadline; a failure of the worker itself (it never came up,
 * QEMU died, the agent or ssh stopped answering) is an InfrastructureError carrying the
 * serial console's tail, never the job's failure.
 */
import {createWriteStream} from 'node:fs'
import {mkdir, readFile, rm, stat} from 'node:fs/promises'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {pipeline} from 'node:stream/promises'
import type {Readable} from 'node:stream'

import type {MachineHandle} from '../../providers/provider.js'
import type {Progress} from '../core/progress.js'
import {BoxError, tail} from '../core/errors.js'
import {run as runProgram, spawn} from '../core/exec.js'
import {PROJECT_ROOT} from '../core/paths.js'
import {socketPath} from '../core/short-socket.js'
import {installPrivateKey, sshArgs, waitForSsh, type SshTarget} from '../machine/ssh.js'
import {INPUT_SERIAL, OUTPUT_SERIAL, makeInputImage, makeOutputImage, readOutputImage, stageJob} from './images.js'
import {capFile, CappedOutput, extractOutputs} from './outputs.js'
import type {JobSpec, PhaseTimes} from './spec.js'
import {defaultWorkerSource, destroyWorker, type Worker, type WorkerSource, type WorkerSpec} from './worker.js'

/** The worker failed, not the job: retried by box batch, never counted as the job's failure. */
export class InfrastructureError extends BoxError {
  serialLogTail?: string
}

export interface JobBox {
  name: string
  version: string
  image: MachineHandle['box']
}

export interface JobContext {
  spec: JobSpec
  box: JobBox
  cacheDir: string
  /** Host scratch for this attempt (job folder, images, ssh key); removed at destroy. */
  workDir: string
  /** results/<id>/: stdout, stderr and the out: files land here. */
  resultDir: string
  cpus: number
  memoryMiB: number
  signal?: AbortSignal
  workerSource?: WorkerSource
  /**
   * box batch's setup: shell lines run as root once in the ready state before it is saved
   * (part of its key); over ssh before the inputs go in only in a worker that was booted
   * (network on only).
   */
  setup?: string[]
  /** Shows the making of a ready state. */
  progress?: Progress
  /** --follow: each piece of stdout/stderr as it arrives (with network; without, once the job ended). */
  onOutput?: (stream: 'stdout' | 'stderr', chunk: Buffer) => void
}

/** What box-job reported (its status file). */
export interface GuestStatus {
  exit: number
  signal: string | null
  timedOut: boolean
  cut: boolean
  runMs?: number
}

export interface JobState {
  context: JobContext
  phases: PhaseTimes
  worker?: Worker
  ssh?: SshTarget
  guest?: GuestStatus
  bytesOut: {stdout: number; stderr: number; files: number}
  outputLimitHit: boolean
  refusedOutputs: Array<{name: string; reason: string}>
}

const GUEST_DIR = '/run/box-job'
/** How often a job without network is asked about (a question costs the guest no fork until the job is done). */
const JOB_STATUS_POLL_MS = 100
const BOX_JOB_SCRIPT = join(PROJECT_ROOT, 'provisioners', 'box-job')

export function newJobState(context: JobContext): JobState {
  return {context, phases: {}, bytesOut: {stdout: 0, stderr: 0, files: 0}, outputLimitHit: false, refusedOutputs: []}
}

const files = (state: JobState) => ({
  jobDir: join(state.context.workDir, 'job'),
  inputImage: join(state.context.workDir, 'in.img'),
  outputImage: join(state.context.workDir, 'out.img'),
  emptyDir: join(state.context.workDir, 'empty'),
  guestFiles: join(state.context.workDir, 'from-guest'),
  key: join(state.context.workDir, 'key'),
})

async function timed<T>(
  state: JobState,
  phase: keyof PhaseTimes,
  limitMs: number | undefined,
  work: () => Promise<T>,
): Promise<T> {
  const started = Date.now()
  try {
    return await (limitMs === undefined
      ? work()
      : withinDeadline(
          work(),
          limitMs,
          () => new InfrastructureError(`the ${phase} phase did not finish within ${Math.round(limitMs / 1000)} s`),
        ))
  } finally {
    state.phases[phase] = Date.now() - started
  }
}

/** `work`, or `error()` once `limitMs` has passed first (work goes on, its own failure then ignored). */
async function withinDeadline<T>(work: Promise<T>, limitMs: number, error: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(error()), limitMs)
  })
  work.catch(() => undefined)
  try {
    return await Promise.race([work, limit])
  } finally {
    clearTimeout(timer)
  }
}

async function serialTail(state: JobState): Promise<string | undefined> {
  const log = state.worker?.started.serialLog
  if (!log) return undefined
  const text = await readFile(log, 'utf8').catch(() => '')
  return text.trim() === '' ? '(the serial console printed nothing)' : tail(text.replace(/\r/g, ''), 25)
}

/** Any error of a worker-facing phase becomes an InfrastructureError with the serial log's tail (Ctrl-C stays as it is). */
async function infrastructure(state: JobState, error: unknown, doing: string): Promise<never> {
  if (state.context.signal?.aborted) throw state.context.signal.reason
  const wrapped =
    error instanceof InfrastructureError
      ? error
      : new InfrastructureError(`worker failed while ${doing}: ${(error as Error).message}`, {
          detail: (error as BoxError).detail,
          cause: error,
        })
  wrapped.serialLogTail ??= await serialTail(state)
  throw wrapped
}

/**
 * Copy in. Without network: stage the job folder and make the input and output disks
 * (before create: the worker boots with them). With network: the same folder as a tar
 * stream over ssh into /run/box-job/job.
 */
export async function copyIn(state: JobState): Promise<void> {
  const {spec} = state.context
  const f = files(state)
  await timed(state, 'copyIn', spec.phaseTimeouts.copyIn, async () => {
    if (!spec.network) {
      const bytes = await stageJob(spec, f.jobDir)
      await makeInputImage(f.jobDir, f.inputImage, bytes)
      await makeOutputImage(f.outputImage, spec.outputLimit, spec.outputsLimit, f.emptyDir)
      return
    }
    if (!state.ssh) throw new BoxError('copyIn with network needs a worker that is up (create, wait)')
    for (const line of state.worker?.setupDone ? [] : (state.context.setup ?? [])) {
      const result = await spawn('ssh', sshArgs(state.ssh, ['sudo', 'sh', '-c', line]), {
        reject: false,
        stdin: 'ignore',
        cancelSignal: state.context.signal,
      })
      if (result.exitCode !== 0)
        throw new InfrastructureError(`setup \`${line}\` failed in the worker (exit ${result.exitCode})`, {
          detail: tail(`${String(result.stdout ?? '')}\n${String(result.stderr ?? '')}`, 10),
        })
    }
    await stageJob(spec, f.jobDir)
    const archive = join(state.context.workDir, 'job.tar')
    await runProgram('tar', ['-c', '-f', archive, '-C', f.jobDir, '.'], {purpose: 'packing the job inputs'})
    const script = `set -e; rm -rf ${GUEST_DIR}; mkdir -m 0700 ${GUEST_DIR} ${GUEST_DIR}/job ${GUEST_DIR}/out; tar -x -f - -C ${GUEST_DIR}/job --no-same-owner`
    const result = await spawn('ssh', sshArgs(state.ssh, ['sudo', 'sh', '-c', script]), {
      inputFile: archive,
      reject: false,
      cancelSignal: state.context.signal,
    })
    if (result.exitCode !== 0)
      await infrastructure(
        state,
        new BoxError(`copying the inputs in failed: ${tail(String(result.stderr ?? ''), 5)}`),
        'copying inputs in',
      )
  })
}

function workerSpecOf(state: JobState): WorkerSpec {
  const {context} = state
  const f = files(state)
  return {
    jobId: context.spec.id,
    box: context.box.image,
    boxName: context.box.name,
    boxVersion: context.box.version,
    cpus: context.cpus,
    memoryMiB: context.memoryMiB,
    network: context.spec.network,
    drives: context.spec.network
      ? []
      : [
          {file: f.inputImage, serial: INPUT_SERIAL, readOnly: true},
          {file: f.outputImage, serial: OUTPUT_SERIAL},
        ],
    setup: context.spec.network ? (context.setup ?? []) : [],
  }
}

/**
 * Before create (after copyIn without network: the disk sizes are part of it): make what
 * the worker source starts workers from, once, outside the create phase's deadline. The
 * time goes in the record as the phase `ready` when it was made by this job.
 */
export async function prepare(state: JobState): Promise<void> {
  const {context} = state
  const source = context.workerSource ?? defaultWorkerSource
  if (!source.prepare) return
  const started = Date.now()
  try {
    const {made} = await source.prepare(workerSpecOf(state), {
      cacheDir: context.cacheDir,
      signal: context.signal,
      progress: context.progress,
    })
    if (made) state.phases.ready = Date.now() - started
  } catch (error) {
    await infrastructure(state, error, 'making its ready state')
  }
}

/** Create: a worker from the worker source, with the job's disks when it has no network. */
export async function create(state: JobState): Promise<Worker> {
  const {context} = state
  const source = context.workerSource ?? defaultWorkerSource
  const pending = source(workerSpecOf(state), {
    cacheDir: context.cacheDir,
    signal: context.signal,
    progress: context.progress,
  })
  try {
    state.worker = await timed(state, 'create', context.spec.phaseTimeouts.create, () => pending)
    // The state the worker came from was made by this job's prepare.
    if (state.phases.ready !== undefined) state.worker.start = {...state.worker.start, madeReadyState: true}
  } catch (error) {
    // Past the deadline the worker may still come: it is destroyed when it does.
    pending
      .then(
        (late) => destroyWorker(late),
        () => undefined,
      )
      .catch(() => undefined)
    return infrastructure(state, error, 'starting')
  }
  return state.worker
}

/** Wait until the worker can take the job: box-agent answers (no network) or ssh logs in. */
export async function wait(state: JobState): Promise<void> {
  const worker = requireWorker(state)
  const {spec, signal} = state.context
  const deadline = Date.now() + spec.phaseTimeouts.wait
  try {
    await timed(state, 'wait', undefined, async () => {
      if (!spec.network) {
        if (!worker.provider.askAgent)
          throw new InfrastructureError('this provider has no guest agent channel; jobs without network need one')
        for (;;) {
          signal?.throwIfAborted()
          if (!worker.started.isAlive()) throw new InfrastructureError('the worker stopped before its agent answered')
          const answered = await worker.provider.askAgent(worker.handle, 'ping', {timeoutMs: 1000}).then(
            () => true,
            () => false,
          )
          if (answered) return
          if (Date.now() > deadline)
            throw new InfrastructureError(
              `the worker's agent did not answer within ${Math.round(spec.phaseTimeouts.wait / 1000)} s`,
            )
          await sleep(200)
        }
      }
      if (worker.ssh) {
        // A restored worker: the ready state's own key; sshReady also sets the clock where no agent did.
        state.ssh = worker.ssh
        await withinDeadline(
          worker.sshReady ? worker.sshReady() : Promise.resolve(),
          Math.max(1000, deadline - Date.now()),
          () =>
            new InfrastructureError(
              `the worker's ssh did not answer within ${Math.round(spec.phaseTimeouts.wait / 1000)} s`,
            ),
        )
        return
      }
      const keyFile = await installPrivateKey(join(PROJECT_ROOT, 'static', 'insecure_key'), files(state).key)
      state.ssh = {
        host: '127.0.0.1',
        port: worker.started.sshPort,
        user: state.context.box.image.metadata.box?.user ?? 'vagrant',
        keyFile,
        controlPath: socketPath(state.context.workDir, 'ssh.ctl'),
      }
      await waitForSsh(state.ssh, {
        timeoutMs: Math.max(1000, deadline - Date.now()),
        isAlive: worker.started.isAlive,
        serialLog: worker.started.serialLog,
        sshListening: worker.started.sshListening,
        signal,
      })
    })
  } catch (error) {
    await infrastructure(state, error, 'waiting for it to come up')
  }
}

/**
 * Run the command through box-job: without network box-agent starts it from the input disk
 * and is asked until it has finished; with network it runs over ssh and its output streams
 * here, cut at the limit. The job's own timeout is box-job's; the host gives up on the
 * worker 30 s later (it is then lost: an infrastructure failure).
 */
export async function run(state: JobState): Promise<GuestStatus> {
  const worker = requireWorker(state)
  const {spec, signal} = state.context
  const hostDeadline = Date.now() + spec.timeoutMs + 30_000
  try {
    state.guest = await timed(state, 'run', undefined, async () => {
      if (!spec.network) {
        const answer = await worker.provider.askAgent!(worker.handle, 'job-start', {timeoutMs: 10_000})
        if (!answer.startsWith('started')) throw new InfrastructureError(`the agent did not start the job: ${answer}`)
        for (;;) {
          await sleep(JOB_STATUS_POLL_MS, undefined, {signal})
          if (!worker.started.isAlive())
            throw new InfrastructureError('the worker stopped while the job ran (QEMU exited)')
          const status = await worker.provider.askAgent!(worker.handle, 'job-status', {timeoutMs: 5000}).catch(
            () => undefined,
          )
          if (status?.startsWith('done')) {
            const code = Number(status.split(' ')[1])
            if (code !== 0)
              throw new InfrastructureError(
                `box-job failed in the worker (exit ${code}) before the job's status was written`,
              )
            // The status itself is read from the output disk in copyOut.
            return {exit: 0, signal: null, timedOut: false, cut: false}
          }
          if (Date.now() > hostDeadline) throw new InfrastructureError('the worker stopped answering while the job ran')
        }
      }
      return runOverSsh(state, hostDeadline)
    })
    return state.guest!
  } catch (error) {
    return infrastructure(state, error, 'running the job')
  }
}

async function runOverSsh(state: JobState, hostDeadline: number): Promise<GuestStatus> {
  const {spec, resultDir, onOutput, signal} = state.context
  const target = state.ssh!
  const script = await readFile(BOX_JOB_SCRIPT, 'utf8')
  const stdout = await CappedOutput.create(
    join(resultDir, 'stdout'),
    spec.outputLimit,
    onOutput && ((chunk) => onOutput('stdout', chunk)),
  )
  const stderr = await CappedOutput.create(
    join(resultDir, 'stderr'),
    spec.outputLimit,
    onOutput && ((chunk) => onOutput('stderr', chunk)),
  )
  const child = spawn(
    'ssh',
    sshArgs(target, ['sudo', 'sh', '-s', '--', 'run', `${GUEST_DIR}/job`, `${GUEST_DIR}/out`, 'stream']),
    {
      input: script,
      buffer: false,
      reject: false,
      timeout: Math.max(1000, hostDeadline - Date.now()),
      cancelSignal: signal,
    },
  )
  const [result] = await Promise.all([
    child,
    pipeline(child.stdout as Readable, stdout.stream()),
    pipeline(child.stderr as Readable, stderr.stream()),
  ])
  const {stdout: statusText, exitCode} = await runProgram(
    'ssh',
    sshArgs(target, ['sudo', 'cat', `${GUEST_DIR}/out/status`]),
    {stdin: 'ignore', timeout: 30_000},
  ).catch(() => ({stdout: '', exitCode: 1}))
  if (exitCode !== 0 || statusText.trim() === '') {
    await stdout.finish()
    await stderr.finish()
    throw new InfrastructureError(
      `the job's status could not be read from the worker (ssh exited ${result.exitCode ?? 'by a signal'})`,
    )
  }
  const status = parseStatus(statusText)
  // Per stream: each is cut (and marked) only when it passed the limit itself; box-job's
  // status says whether either did (the job was stopped for it).
  await stdout.finish()
  await stderr.finish()
  state.bytesOut.stdout = stdout.bytes
  state.bytesOut.stderr = stderr.bytes
  state.outputLimitHit = status.cut || stdout.cut || stderr.cut
  return status
}

/** box-job's status file: KEY VALUE lines. */
export function parseStatus(text: string): GuestStatus {
  const values = new Map(
    text
      .split('\n')
      .map((line) => line.trim().split(/\s+/, 2) as [string, string])
      .filter((pair) => pair[0] !== ''),
  )
  const exit = Number(values.get('exit'))
  if (!Number.isInteger(exit))
    throw new InfrastructureError(`box-job wrote no exit code (status: ${JSON.stringify(text.slice(0, 200))})`)
  const signal = values.get('signal')
  return {
    exit,
    signal: signal && signal !== 'none' ? `SIG${signal}` : null,
    timedOut: values.get('timed_out') === '1',
    cut: values.get('cut') === '1',
    runMs: values.has('run_ms') ? Number(values.get('run_ms')) : undefined,
  }
}

/**
 * Copy out: stdout and stderr (no network: from the output disk, cut at the limit here)
 * and the out: files, extracted with every entry checked (outputs.ts).
 */
export async function copyOut(state: JobState): Promise<void> {
  requireWorker(state)
  const {spec, resultDir} = state.context
  const f = files(state)
  try {
    await timed(state, 'copyOut', spec.phaseTimeouts.copyOut, async () => {
      const archive = join(f.guestFiles, 'out.tar')
      if (!spec.network) {
        const found = new Set(await readOutputImage(f.outputImage, f.guestFiles))
        if (!found.has('status'))
          throw new InfrastructureError(
            `the job's status is missing from the output disk (found: ${[...found].join(', ') || 'nothing'})`,
          )
        const status = parseStatus(await readFile(join(f.guestFiles, 'status'), 'utf8'))
        state.guest = status
        const out = await capFile(
          found.has('stdout') ? join(f.guestFiles, 'stdout') : undefined,
          join(resultDir, 'stdout'),
          spec.outputLimit,
          false,
        )
        const err = await capFile(
          found.has('stderr') ? join(f.guestFiles, 'stderr') : undefined,
          join(resultDir, 'stderr'),
          spec.outputLimit,
          false,
        )
        state.bytesOut.stdout = out.bytes
        state.bytesOut.stderr = err.bytes
        state.outputLimitHit = status.cut || out.cut || err.cut
        if (state.context.onOutput) {
          state.context.onOutput('stdout', await readFile(join(resultDir, 'stdout')))
          state.context.onOutput('stderr', await readFile(join(resultDir, 'stderr')))
        }
        if (!found.has('out.tar')) return
      } else {
        if (spec.outputs.length === 0) return
        await mkdir(f.guestFiles, {recursive: true})
        const script = await readFile(BOX_JOB_SCRIPT, 'utf8')
        const child = spawn('ssh', sshArgs(state.ssh!, ['sudo', 'sh', '-s', '--', 'outputs', `${GUEST_DIR}/job`]), {
          input: script,
          buffer: false,
          reject: false,
          cancelSignal: state.context.signal,
        })
        const capped = await CappedOutput.create(archive, spec.outputsLimit + 1024 * 1024)
        await Promise.all([
          child,
          pipeline(child.stdout as Readable, capped.stream()),
          pipeline(child.stderr as Readable, createWriteStream(join(f.guestFiles, 'out.log'))),
        ])
        await capped.finish()
        if (capped.cut)
          throw new BoxError(`the out: files are larger than the outputs limit (${spec.outputsLimit} bytes)`)
      }
      if ((await stat(archive)).size === 0) return
      const extracted = await extractOutputs(archive, resultDir, spec.outputs, spec.outputsLimit)
      state.bytesOut.files = extracted.bytes
      state.refusedOutputs.push(...extracted.refused)
    })
  } catch (error) {
    await infrastructure(state, error, 'copying outputs out')
  }
}

/** Destroy: the worker goes (stopped for sure, state dir removed), then this attempt's scratch. */
export async function destroy(state: JobState): Promise<void> {
  const started = Date.now()
  try {
    // At once: the master's connection ends with the guest anyway.
    await Promise.all([
      state.ssh?.controlPath &&
        spawn('ssh', ['-o', `ControlPath=${state.ssh.controlPath}`, '-O', 'exit', 'box-worker'], {
          reject: false,
          stdin: 'ignore',
          timeout: 3000,
        }),
      state.worker && destroyWorker(state.worker),
    ])
    await rm(state.context.workDir, {recursive: true, force: true})
  } finally {
    state.phases.destroy = Date.now() - started
  }
}

function requireWorker(state: JobState): Worker {
  if (!state.worker) throw new BoxError('this phase needs a worker: call create first')
  return state.worker
}
