/**
 * The Slurm engine: `box batch JOBS.yaml --on slurm` submits the whole job file as one job
 * array; array task i runs job i on whatever node Slurm picks (`box batch task`, slurm-task.ts).
 *
 * What travels how:
 * - The job list: inside the generated batch script, as base64 data box's task reads on stdin
 *   (Slurm copies the batch script to the node itself, so the list needs no shared disk, and
 *   nothing from the job file is ever part of shell text).
 * - The box: each node fetches `box_url` into its own store (checksum-verified, once per node,
 *   under a lock), so boxes need no shared disk either.
 * - Inputs and results: on the shared path (`--shared` or BOX_SLURM_SHARED). Slurm copies no
 *   file back (it writes a task's output file on the node, at the path given), so results
 *   come back the way Slurm's own output does: the results folder must be on a path the nodes
 *   see at the same place. Each task checks that with a token the submit host wrote and fails
 *   as an infrastructure error (retried elsewhere) on a node that does not see it.
 *
 * Status comes from `squeue --json` for tasks Slurm still holds, and from result.json for the
 * rest: no accounting database (slurmdbd) is needed.
 */
import {randomBytes} from 'node:crypto'
import {mkdir, readFile, rename, stat, writeFile} from 'node:fs/promises'
import {isAbsolute, join, relative, resolve, sep} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {BoxError, ExitCode} from '../../core/errors.js'
import {findOnPath, run} from '../../core/exec.js'
import {shQuote} from '../../core/shell-quote.js'
import type {BatchCounts, BatchEvent, BatchResult} from '../batch.js'
import {WORKER_DEFAULTS} from '../box.js'
import {RESULT_FILE} from '../job.js'
import {loadJobFile, type JobFile} from '../jobfile.js'
import {checkInputsExist, type JobRecord, type JobSpec} from '../spec.js'
import type {BatchEngine, EngineOptions} from './engine.js'

export interface SlurmBatchOptions extends EngineOptions {
  partition?: string
  /** The array's cap: at most this many tasks at once across the cluster (`--array=0-N%M`). */
  maxRunning?: number
  /** Slurm's time limit per task (sbatch --time: "30", "1:00:00", "2-0"). */
  timeLimit?: string
  /** The path every node sees at the same place (BOX_SLURM_SHARED). */
  shared?: string
  /** Follow the array to its end (and return every record). */
  wait?: boolean
  /** Submit held (nothing starts until `scontrol release`): bench/slurm.ts measures submission with it. */
  hold?: boolean
  /** The box command on the nodes (default: this node and this box's script, same paths on every node). */
  boxCommand?: string[]
  /** How often --wait asks squeue. */
  pollMs?: number
}

/** What the submit host writes beside the results: how status and cancel find the array. */
export interface SlurmBatchState {
  engine: 'slurm'
  batchId: string
  jobName: string
  jobFile: string
  resultsDir: string
  stateDir: string
  arrayJobId: string
  ids: string[]
  submittedAt: string
  maxRunning?: number
  cancelledAt?: string
}

/** The job list a task reads (the batch script's data). */
export interface TaskPlan {
  version: 1
  batchId: string
  jobName: string
  token: string
  resultsDir: string
  stateDir: string
  box: {name: string; url?: string; version?: string; checksum?: string}
  cpus?: number
  memoryMiB?: number
  setup: string[]
  retries: number
  jobs: JobSpec[]
  sbatch: {partition?: string; timeLimit?: string; cpusPerTask: number}
  boxCommand: string[]
}

export interface SlurmSubmission {
  engine: 'slurm'
  batchId: string
  arrayJobId: string
  jobs: number
  resultsDir: string
  stateFile: string
  /** From the start of `box batch` to sbatch's answer (every task queued). */
  submitMs: number
}

export const STATE_FOLDER = '.box-batch'
export const STATE_FILE = 'slurm.json'
export const TOKEN_FILE = 'token'

/** The Debian package that has the Slurm client programs. */
const SLURM_CLIENT_PACKAGE = 'slurm-client'

export function slurmSharedPath(options: {shared?: string}): string | undefined {
  const value = options.shared ?? process.env.BOX_SLURM_SHARED
  return value ? resolve(value) : undefined
}

function isUnder(path: string, dir: string): boolean {
  const rel = relative(dir, path)
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel))
}

/** A Slurm client program, or the error that names the package. */
async function slurmProgram(name: string): Promise<string> {
  const path = await findOnPath(name)
  if (!path) {
    throw new BoxError(`${name} is not on PATH: box batch --on slurm needs the Slurm client programs`, {
      exitCode: ExitCode.USAGE,
      suggestions: [
        `install them: sudo apt-get install ${SLURM_CLIENT_PACKAGE} (the whole of Slurm: slurm-wlm)`,
        'or run the batch on this host: leave out --on slurm',
      ],
    })
  }
  return path
}

/** slurmctld answers (scontrol ping), else a clear error before anything is submitted. */
export async function checkController(): Promise<void> {
  const scontrol = await slurmProgram('scontrol')
  const result = await run(scontrol, ['ping'], {timeout: 30_000}).catch((error: unknown) => error as BoxError)
  if (result instanceof BoxError || !/\bUP\b/.test(result.stdout)) {
    const said = result instanceof BoxError ? (result.detail ?? result.message) : result.stdout
    throw new BoxError('the Slurm controller (slurmctld) is not reachable: nothing was submitted', {
      exitCode: ExitCode.FAILURE,
      detail: said.trim(),
      suggestions: [
        'check that slurmctld runs and that SLURM_CONF (or /etc/slurm/slurm.conf) names it',
        'scontrol ping says what this host sees',
      ],
    })
  }
}

async function partitions(): Promise<string[]> {
  const sinfo = await slurmProgram('sinfo')
  const {stdout} = await run(sinfo, ['-h', '-o', '%R'], {purpose: 'listing the Slurm partitions', timeout: 60_000})
  return [
    ...new Set(
      stdout
        .split('\n')
        .map((line) => line.trim())
        .filter(Boolean),
    ),
  ]
}

/** Every host path a node would need: inputs, and a box_url that is a local file. */
function checkNodesCanSee(jobFile: JobFile, shared: string | undefined): void {
  const hint = shared
    ? [`put it under the shared path ${shared}`]
    : [
        'name the path every node sees at the same place: --shared DIR (or BOX_SLURM_SHARED=DIR), and keep inputs under it',
      ]
  for (const job of jobFile.jobs) {
    for (const input of job.inputs) {
      if (!shared || !isUnder(input.host, shared)) {
        throw new BoxError(
          `job ${job.id}: input ${input.host} is a path on this host only; the nodes cannot see it (nothing was submitted)`,
          {exitCode: ExitCode.USAGE, suggestions: hint},
        )
      }
    }
  }
  const url = jobFile.boxUrl
  if (url && !/^https?:\/\//i.test(url)) {
    const path = resolve(jobFile.dir, url.replace(/^file:\/\//, ''))
    if (!shared || !isUnder(path, shared)) {
      throw new BoxError(
        `box_url ${url} is a file on this host only; the nodes cannot fetch it (nothing was submitted)`,
        {
          exitCode: ExitCode.USAGE,
          suggestions: ['serve the box over HTTP(S) (a catalog or a .box with box_checksum)', ...hint],
        },
      )
    }
  }
}

/** The batch script: the job list as data on the task's stdin, never as shell text. */
export function batchScript(plan: TaskPlan): string {
  const data = Buffer.from(JSON.stringify(plan))
    .toString('base64')
    .replace(/.{1,76}/g, '$&\n')
  return [
    '#!/bin/sh',
    `# box batch ${plan.batchId}: array task N runs job N of the list below (base64 JSON, read by box).`,
    `exec ${plan.boxCommand.map((word) => shQuote(word)).join(' ')} batch task <<'BOX_BATCH_PLAN'`,
    data.trimEnd(),
    'BOX_BATCH_PLAN',
    '',
  ].join('\n')
}

/** sbatch's arguments for tasks `array` of the plan (the first submission and each retry). */
export function sbatchArgs(
  plan: TaskPlan,
  options: {array: string; scriptFile: string; attempt: number; exclude?: string[]; hold?: boolean},
): string[] {
  const args = [
    '--parsable',
    '--job-name',
    plan.jobName,
    '--array',
    options.array,
    '--output',
    join(plan.stateDir, 'task-%a-%A.out'),
    '--chdir',
    plan.stateDir,
    '--cpus-per-task',
    String(plan.sbatch.cpusPerTask),
    // box retries worker failures itself (on another node); Slurm's requeue would start the task from the top with no record of why.
    '--no-requeue',
    '--export',
    `ALL,BOX_BATCH_ATTEMPT=${options.attempt}${options.exclude?.length ? `,BOX_BATCH_EXCLUDE=${options.exclude.join(':')}` : ''}`,
  ]
  if (plan.sbatch.partition) args.push('--partition', plan.sbatch.partition)
  if (plan.sbatch.timeLimit) args.push('--time', plan.sbatch.timeLimit)
  if (options.exclude?.length) args.push('--exclude', options.exclude.join(','))
  if (options.hold) args.push('--hold')
  args.push(options.scriptFile)
  return args
}

/** Submit; sbatch --parsable answers "JOBID" or "JOBID;CLUSTER". */
export async function sbatch(args: string[]): Promise<string> {
  const program = await slurmProgram('sbatch')
  const {stdout} = await run(program, args, {purpose: 'submitting the job array (sbatch)', timeout: 120_000})
  const id = stdout.trim().split(';')[0]!
  if (!/^\d+$/.test(id)) throw new BoxError(`sbatch answered ${JSON.stringify(stdout.trim())}, not a job id`)
  return id
}

const SLURM_TIME = /^(\d+-)?\d+(:\d+){0,2}$|^\d+-\d+$/

export async function submitSlurmBatch(options: SlurmBatchOptions): Promise<SlurmSubmission> {
  const started = Date.now()
  // Everything is checked before sbatch runs: a refusal leaves nothing in the queue.
  await slurmProgram('sbatch')
  if (options.maxRunning !== undefined && (!Number.isInteger(options.maxRunning) || options.maxRunning < 1)) {
    throw new BoxError('--max-running must be a whole number of at least 1', {exitCode: ExitCode.USAGE})
  }
  if (options.timeLimit !== undefined && !SLURM_TIME.test(options.timeLimit)) {
    throw new BoxError(`--time ${JSON.stringify(options.timeLimit)} is not a Slurm time limit`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['write minutes (30), H:MM:SS (1:00:00) or D-HH (2-0)'],
    })
  }
  const jobFile = await loadJobFile(resolve(options.cwd, options.jobFile))
  if (!jobFile.box) {
    throw new BoxError('box batch --on slurm needs the box by name (box: NAME), with box_url: where nodes fetch it', {
      exitCode: ExitCode.USAGE,
      suggestions: ['add box: NAME to the job file'],
    })
  }
  for (const job of jobFile.jobs) await checkInputsExist(job.inputs, `job ${job.id}: in`)
  const shared = slurmSharedPath(options)
  checkNodesCanSee(jobFile, shared)
  const resultsDir = resolve(options.cwd, options.resultsDir ?? join(jobFile.dir, 'results'))
  if (shared && !isUnder(resultsDir, shared)) {
    throw new BoxError(
      `the results folder ${resultsDir} is not under the shared path ${shared}: the nodes could not write it`,
      {exitCode: ExitCode.USAGE, suggestions: [`give --results a folder under ${shared}`]},
    )
  }
  await checkController()
  if (options.partition && !(await partitions()).includes(options.partition)) {
    throw new BoxError(`Slurm has no partition ${options.partition}`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`the partitions: ${(await partitions()).join(', ')}`],
    })
  }
  const stateRoot = join(resultsDir, STATE_FOLDER)
  const earlier = await readState(resultsDir).catch(() => undefined)
  if (earlier) {
    const live = (await squeueJobs()).filter((job) => job.name === earlier.jobName && isLiveState(job.state))
    if (live.length > 0) {
      throw new BoxError(
        `a batch into ${resultsDir} is still in Slurm (array ${earlier.arrayJobId}): nothing was submitted`,
        {
          exitCode: ExitCode.USAGE,
          suggestions: [
            `follow it: box batch status ${options.jobFile}`,
            `or stop it: box batch cancel ${options.jobFile}`,
          ],
        },
      )
    }
  }

  const batchId = `${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-')}-${randomBytes(3).toString('hex')}`
  const stateDir = join(stateRoot, batchId)
  await mkdir(stateDir, {recursive: true, mode: 0o700})
  const token = randomBytes(16).toString('hex')
  await writeFile(join(stateDir, TOKEN_FILE), `${token}\n`, {mode: 0o600})
  const plan: TaskPlan = {
    version: 1,
    batchId,
    jobName: `box-batch-${batchId}`,
    token,
    resultsDir,
    stateDir,
    box: {
      name: jobFile.box,
      url:
        jobFile.boxUrl && /^https?:\/\//i.test(jobFile.boxUrl)
          ? jobFile.boxUrl
          : jobFile.boxUrl
            ? resolve(jobFile.dir, jobFile.boxUrl)
            : undefined,
      version: jobFile.boxVersion,
      checksum: jobFile.boxChecksum,
    },
    cpus: jobFile.cpus,
    memoryMiB: jobFile.memoryMiB,
    setup: jobFile.setup,
    retries: jobFile.retries,
    jobs: jobFile.jobs,
    sbatch: {
      partition: options.partition,
      timeLimit: options.timeLimit,
      cpusPerTask: jobFile.cpus ?? WORKER_DEFAULTS.cpus,
    },
    boxCommand: options.boxCommand ?? [process.execPath, process.argv[1]!],
  }
  const scriptFile = join(stateDir, 'task.sh')
  await writeFile(scriptFile, batchScript(plan), {mode: 0o700})
  const array = `0-${jobFile.jobs.length - 1}${options.maxRunning ? `%${options.maxRunning}` : ''}`
  const arrayJobId = await sbatch(sbatchArgs(plan, {array, scriptFile, attempt: 1, hold: options.hold}))
  const state: SlurmBatchState = {
    engine: 'slurm',
    batchId,
    jobName: plan.jobName,
    jobFile: jobFile.file,
    resultsDir,
    stateDir,
    arrayJobId,
    ids: jobFile.jobs.map((job) => job.id),
    submittedAt: new Date().toISOString(),
    maxRunning: options.maxRunning,
  }
  await writeState(resultsDir, state)
  return {
    engine: 'slurm',
    batchId,
    arrayJobId,
    jobs: jobFile.jobs.length,
    resultsDir,
    stateFile: join(stateRoot, STATE_FILE),
    submitMs: Date.now() - started,
  }
}

async function writeState(resultsDir: string, state: SlurmBatchState): Promise<void> {
  const file = join(resultsDir, STATE_FOLDER, STATE_FILE)
  await writeFile(`${file}.tmp`, `${JSON.stringify(state, null, 2)}\n`)
  await rename(`${file}.tmp`, file)
}

export async function readState(resultsDir: string): Promise<SlurmBatchState> {
  const file = join(resultsDir, STATE_FOLDER, STATE_FILE)
  const text = await readFile(file, 'utf8').catch(() => {
    throw new BoxError(`no Slurm batch was submitted into ${resultsDir}`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['submit one: box batch JOBS.yaml --on slurm', 'or name its results folder with --results'],
    })
  })
  return JSON.parse(text) as SlurmBatchState
}

/** The state of the batch whose job file (and --results) this is. */
export async function findBatch(options: {
  jobFile: string
  resultsDir?: string
  cwd: string
}): Promise<SlurmBatchState> {
  const jobFile = resolve(options.cwd, options.jobFile)
  await stat(jobFile).catch(() => {
    throw new BoxError(`the job file ${jobFile} does not exist`, {exitCode: ExitCode.USAGE})
  })
  const resultsDir = resolve(options.cwd, options.resultsDir ?? join(resolve(jobFile, '..'), 'results'))
  return readState(resultsDir)
}

// ---- squeue --------------------------------------------------------------------------------

export interface QueuedJob {
  jobId: string
  name: string
  /** The array task (undefined for the pending rest of an array, see tasks). */
  taskId?: number
  /** The pending tasks this entry stands for ("0-5%2": 0..5). */
  tasks: number[]
  state: string
  reason: string
  nodes: string
  exitCode: number
}

/** "0-5%2", "1,3-4", "0-9:3" → the task ids. */
export function parseArrayTasks(text: string): number[] {
  const ids: number[] = []
  for (const part of text.replace(/%\d+$/, '').split(',').filter(Boolean)) {
    const match = /^(\d+)(?:-(\d+)(?::(\d+))?)?$/.exec(part)
    if (!match) continue
    const from = Number(match[1])
    const to = match[2] === undefined ? from : Number(match[2])
    const step = match[3] === undefined ? 1 : Number(match[3])
    for (let id = from; id <= to; id += step) ids.push(id)
  }
  return ids
}

const LIVE_STATES = new Set([
  'PENDING',
  'RUNNING',
  'CONFIGURING',
  'COMPLETING',
  'SUSPENDED',
  'REQUEUED',
  'RESIZING',
  'SIGNALING',
  'STAGE_OUT',
  'STOPPED',
])
export function isLiveState(state: string): boolean {
  return LIVE_STATES.has(state)
}

/** Every job slurmctld still holds (22.05's --json ignores squeue's filters: the caller filters). */
export async function squeueJobs(): Promise<QueuedJob[]> {
  const squeue = await slurmProgram('squeue')
  const {stdout} = await run(squeue, ['--json'], {
    purpose: 'asking Slurm for the queue (squeue --json)',
    timeout: 60_000,
  })
  const parsed = JSON.parse(stdout) as {jobs?: Array<Record<string, unknown>>}
  return (parsed.jobs ?? []).map((job) => {
    const taskId = typeof job.array_task_id === 'number' ? job.array_task_id : undefined
    const taskString = typeof job.array_task_string === 'string' ? job.array_task_string : ''
    return {
      jobId: String(job.job_id),
      name: String(job.name ?? ''),
      taskId,
      tasks: taskId === undefined ? parseArrayTasks(taskString) : [taskId],
      state: String(job.job_state ?? ''),
      reason: String(job.state_reason ?? ''),
      nodes: String(job.nodes ?? ''),
      exitCode: typeof job.exit_code === 'number' ? job.exit_code : 0,
    }
  })
}

// ---- status --------------------------------------------------------------------------------

export type SlurmJobState = 'queued' | 'running' | 'done' | 'failed' | 'infrastructure' | 'cancelled' | 'lost'

export interface SlurmJobStatus {
  id: string
  index: number
  state: SlurmJobState
  /** The Slurm job id of the task ("12_3" style is arrayJobId_index; retries have their own). */
  slurmJobId?: string
  node?: string
  reason?: string
  attempts?: number
  exitCode?: number
  /** The record's status when there is one (ok, failed, timeout, output-limit, infrastructure). */
  status?: JobRecord['status']
  /** Where the last worker failure was (the retry excludes that node). */
  failedOn?: string
}

export interface SlurmBatchStatus {
  batchId: string
  arrayJobId: string
  resultsDir: string
  counts: Record<SlurmJobState, number> & {total: number}
  jobs: SlurmJobStatus[]
  /** Every job has its final answer. */
  finished: boolean
}

export interface NodeRecord extends JobRecord {
  slurm?: {jobId: string; node: string; batchId: string}
}

async function readRecord(resultsDir: string, id: string): Promise<NodeRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(resultsDir, id, RESULT_FILE), 'utf8')) as NodeRecord
  } catch {
    return undefined
  }
}

export async function batchStatus(state: SlurmBatchState): Promise<SlurmBatchStatus> {
  const queue = (await squeueJobs()).filter((job) => job.name === state.jobName)
  const jobs: SlurmJobStatus[] = []
  for (const [index, id] of state.ids.entries()) {
    const live = queue.find((job) => isLiveState(job.state) && job.tasks.includes(index))
    const record = await readRecord(state.resultsDir, id)
    // A record from an earlier batch into the same folder is not this batch's answer.
    const ours = record && record.slurm?.batchId === state.batchId ? record : undefined
    const entry: SlurmJobStatus = {
      id,
      index,
      state: 'lost',
      attempts: ours?.attempts,
      status: ours?.status,
      exitCode: ours?.exitCode,
      node: ours?.slurm?.node,
      slurmJobId: ours?.slurm?.jobId,
      failedOn: ours?.status === 'infrastructure' ? ours.slurm?.node : undefined,
    }
    if (live) {
      entry.state = live.state === 'PENDING' ? 'queued' : 'running'
      entry.reason = live.state === 'PENDING' ? live.reason : undefined
      entry.node = live.state === 'PENDING' ? undefined : live.nodes
      entry.slurmJobId = live.taskId === undefined ? `${live.jobId}_[${index}]` : live.jobId
    } else if (ours) {
      entry.state = ours.status === 'ok' ? 'done' : ours.status === 'infrastructure' ? 'infrastructure' : 'failed'
    } else if (state.cancelledAt) {
      entry.state = 'cancelled'
    } else {
      // No record and Slurm is done with it: say how Slurm ended it (TIMEOUT, NODE_FAIL, …) while it still remembers.
      entry.reason = queue.find((job) => job.tasks.includes(index))?.state
    }
    jobs.push(entry)
  }
  const counts = {
    total: jobs.length,
    queued: 0,
    running: 0,
    done: 0,
    failed: 0,
    infrastructure: 0,
    cancelled: 0,
    lost: 0,
  }
  for (const job of jobs) counts[job.state]++
  const finished = counts.queued === 0 && counts.running === 0
  return {batchId: state.batchId, arrayJobId: state.arrayJobId, resultsDir: state.resultsDir, counts, jobs, finished}
}

// ---- cancel --------------------------------------------------------------------------------

export interface SlurmCancelResult {
  batchId: string
  arrayJobId: string
  cancelled: number
}

/** scancel every job of the batch (the array and the retries nodes submitted): they share the job name. */
export async function cancelBatch(state: SlurmBatchState): Promise<SlurmCancelResult> {
  const live = (await squeueJobs()).filter((job) => job.name === state.jobName && isLiveState(job.state))
  const scancel = await slurmProgram('scancel')
  const ids = [...new Set(live.map((job) => job.jobId))]
  if (ids.length > 0) await run(scancel, ids, {purpose: 'cancelling the batch (scancel)', timeout: 60_000})
  await writeState(state.resultsDir, {...state, cancelledAt: new Date().toISOString()})
  return {
    batchId: state.batchId,
    arrayJobId: state.arrayJobId,
    cancelled: live.reduce((sum, job) => sum + job.tasks.length, 0),
  }
}

// ---- --wait ----------------------------------------------------------------------------------

/**
 * Follow the batch until every job has its answer, with the same events (and so the same
 * progress line) as the local batch. Ctrl-C stops following; the jobs go on in Slurm.
 */
export async function waitForBatch(
  state: SlurmBatchState,
  options: {onEvent?: (event: BatchEvent) => void; signal?: AbortSignal; pollMs?: number; started?: number},
): Promise<BatchResult & {status: SlurmBatchStatus}> {
  const started = options.started ?? Date.now()
  const seen = new Map<string, string>()
  let status: SlurmBatchStatus
  for (;;) {
    status = await batchStatus(state)
    const finishedCount = status.counts.done + status.counts.failed + status.counts.infrastructure
    const elapsed = Date.now() - started
    const ratePerMinute = finishedCount > 0 ? (finishedCount / elapsed) * 60_000 : 0
    const left = status.counts.queued + status.counts.running
    const counts: BatchCounts = {
      total: status.counts.total,
      queued: status.counts.queued,
      running: status.counts.running,
      done: status.counts.done,
      failed: status.counts.failed + status.counts.infrastructure,
      skipped: 0,
      ratePerMinute,
      etaMs: ratePerMinute > 0 && left > 0 ? (left / ratePerMinute) * 60_000 : undefined,
    }
    for (const job of status.jobs) {
      const key = `${job.state}:${job.attempts ?? 0}:${job.slurmJobId ?? ''}`
      if (seen.get(job.id) === key) continue
      const before = seen.get(job.id)
      seen.set(job.id, key)
      if (job.state === 'running') {
        options.onEvent?.({
          type: 'started',
          id: job.id,
          attempt: (job.status === 'infrastructure' ? (job.attempts ?? 0) : 0) + 1,
          counts,
        })
      } else if (job.state === 'queued' && job.status === 'infrastructure' && before !== undefined) {
        options.onEvent?.({
          type: 'retry',
          id: job.id,
          attempt: job.attempts ?? 1,
          reason: `worker failed on ${job.failedOn ?? 'a node'}; queued again`,
          counts,
        })
      } else if (job.state === 'done' || job.state === 'failed' || job.state === 'infrastructure') {
        const record = await readRecord(state.resultsDir, job.id)
        if (record) options.onEvent?.({type: 'finished', record, counts})
      }
    }
    if (status.finished) break
    if (options.signal?.aborted) {
      throw new BoxError(
        `stopped following batch ${state.batchId}; its jobs go on in Slurm (array ${state.arrayJobId})`,
        {
          exitCode: ExitCode.INTERRUPTED,
          suggestions: [
            `follow it again: box batch status --wait ${state.jobFile}`,
            `stop it: box batch cancel ${state.jobFile}`,
          ],
        },
      )
    }
    await sleep(options.pollMs ?? 2000, undefined, {signal: options.signal}).catch(() => {})
  }
  const records: JobRecord[] = []
  for (const id of state.ids) {
    const record = await readRecord(state.resultsDir, id)
    if (record && record.slurm?.batchId === state.batchId) records.push(record)
  }
  return {
    jobFile: state.jobFile,
    resultsDir: state.resultsDir,
    parallel: state.maxRunning ?? 0,
    records,
    skipped: [],
    elapsedMs: Date.now() - started,
    status,
  }
}

export type SlurmRunResult =
  (SlurmSubmission & {waited: false}) | (BatchResult & SlurmSubmission & {waited: true; status: SlurmBatchStatus})

export const slurmEngine: BatchEngine<SlurmBatchOptions, SlurmRunResult> = {
  name: 'slurm',
  async run(options) {
    const started = Date.now()
    const submission = await submitSlurmBatch(options)
    if (!options.wait) return {...submission, waited: false}
    const state = await readState(submission.resultsDir)
    const result = await waitForBatch(state, {
      onEvent: options.onEvent,
      signal: options.signal,
      pollMs: options.pollMs,
      started,
    })
    return {...submission, ...result, waited: true}
  },
}
