/**
 * One array task on a Slurm node (`box batch task`, run by the generated batch script): the
 * job of SLURM_ARRAY_TASK_ID from the job list on stdin, its box fetched into this node's
 * store (once per node, under a lock), its record in results/<id>/ with where it ran. A
 * worker that failed (or a box this node could not get) is submitted again for another node.
 */
import {createHash} from 'node:crypto'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'

import {BoxError, ExitCode} from '../../core/errors.js'
import {acquireLock} from '../../core/lock.js'
import {run} from '../../core/exec.js'
import type {Progress} from '../../core/progress.js'
import {parseBoxChecksum, resolveJobBox, type ResolvedJobBox} from '../box.js'
import {runJob, writeRecord} from '../job.js'
import {JobExit, type JobRecord} from '../spec.js'
import {batchScript, sbatch, sbatchArgs, TOKEN_FILE, type NodeRecord, type TaskPlan} from './slurm.js'

export interface SlurmTaskOptions {
  /** The batch script's data: base64 of the plan's JSON. */
  planText: string
  env: NodeJS.ProcessEnv
  dataDir: string
  cacheDir: string
  version: string
  progress: Progress
  signal?: AbortSignal
}

export interface SlurmTaskResult {
  record?: NodeRecord
  /** A new Slurm job that runs this job again elsewhere. */
  retriedAs?: string
  exitCode: number
  message: string
}

export function decodePlan(text: string): TaskPlan {
  let plan: TaskPlan
  try {
    plan = JSON.parse(Buffer.from(text.replace(/\s+/g, ''), 'base64').toString('utf8')) as TaskPlan
  } catch (error) {
    throw new BoxError(
      'box batch task: the job list on stdin is not base64 JSON (it is written by box batch --on slurm)',
      {exitCode: ExitCode.USAGE, cause: error},
    )
  }
  if (plan?.version !== 1 || !Array.isArray(plan.jobs))
    throw new BoxError('box batch task: the job list on stdin is not one this box reads', {exitCode: ExitCode.USAGE})
  return plan
}

/** The box for this node: fetched and verified once per node; other tasks wait on the lock, then find it stored. */
export async function ensureNodeBox(
  plan: TaskPlan,
  options: Pick<SlurmTaskOptions, 'dataDir' | 'cacheDir' | 'version' | 'progress' | 'signal'>,
): Promise<ResolvedJobBox> {
  const {name, url, version, checksum} = plan.box
  await mkdir(options.dataDir, {recursive: true})
  const lockFile = join(
    options.dataDir,
    `.fetch-${createHash('sha256')
      .update(`${name}\n${url ?? ''}`)
      .digest('hex')
      .slice(0, 16)}.lock`,
  )
  const release = await acquireLock(lockFile, {
    waitMs: 2 * 3600_000,
    pollMs: 500,
    busy: (pid) => new BoxError(`box ${name} is still being fetched by process ${pid} after two hours`),
  })
  try {
    const {ensureBoxInstalled} = await import('../../store/updates.js')
    const parsed = checksum ? await parseBoxChecksum(checksum) : undefined
    await ensureBoxInstalled({
      dataDir: options.dataDir,
      cacheDir: options.cacheDir,
      name,
      url,
      constraint: version,
      checksum: parsed,
      hostProvider: 'qemu',
      downloadOptions: {retries: 2},
      signal: options.signal,
      progress: options.progress,
    })
  } finally {
    await release()
  }
  return resolveJobBox({
    box: name,
    boxVersion: version,
    cwd: '/',
    dataDir: options.dataDir,
    cacheDir: options.cacheDir,
    boxVersionOfCli: options.version,
    progress: options.progress,
    signal: options.signal,
  })
}

/** The nodes of the partition that could take a retry (not down, drained or failing), minus `exclude`. */
async function otherUsableNodes(partition: string | undefined, exclude: readonly string[]): Promise<string[]> {
  const args = ['-h', '-N', '-o', '%N %t']
  if (partition) args.push('-p', partition)
  const {stdout} = await run('sinfo', args, {purpose: 'listing the nodes for a retry', timeout: 60_000})
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(
      ([node, state]) =>
        node && state && !/down|drain|fail|maint|unk|boot|futur|inval/.test(state) && !exclude.includes(node),
    )
    .map(([node]) => node!)
}

export async function runSlurmTask(options: SlurmTaskOptions): Promise<SlurmTaskResult> {
  const plan = decodePlan(options.planText)
  const index = Number(options.env.SLURM_ARRAY_TASK_ID)
  const job = Number.isInteger(index) ? plan.jobs[index] : undefined
  if (!job)
    throw new BoxError(
      `box batch task: no job ${options.env.SLURM_ARRAY_TASK_ID ?? '(SLURM_ARRAY_TASK_ID unset)'} in the job list of ${plan.jobs.length}`,
      {exitCode: ExitCode.USAGE},
    )
  const node = options.env.SLURMD_NODENAME ?? hostname()
  const slurmJobId = options.env.SLURM_JOB_ID ?? '?'
  const attempt = Number(options.env.BOX_BATCH_ATTEMPT ?? '1') || 1
  const excluded = (options.env.BOX_BATCH_EXCLUDE ?? '').split(':').filter(Boolean)
  const slurm = {jobId: slurmJobId, node, batchId: plan.batchId}

  const retry = async (): Promise<string | undefined> => {
    if (attempt > plan.retries) return undefined
    // Elsewhere when there is an elsewhere; on a one-node partition the same node again.
    const others = await otherUsableNodes(plan.sbatch.partition ?? options.env.SLURM_JOB_PARTITION, [
      ...excluded,
      node,
    ]).catch(() => [])
    const exclude = others.length > 0 ? [...excluded, node] : excluded
    // sbatch reads the script here and hands it to slurmctld: a private copy will do.
    const dir = await mkdtemp(join(tmpdir(), 'box-batch-retry-'))
    try {
      const scriptFile = join(dir, 'task.sh')
      await writeFile(scriptFile, batchScript(plan), {mode: 0o700})
      return await sbatch(sbatchArgs(plan, {array: String(index), scriptFile, attempt: attempt + 1, exclude}))
    } finally {
      await rm(dir, {recursive: true, force: true})
    }
  }

  // The results folder must be the one the submit host reads: its token says so.
  const token = await readFile(join(plan.stateDir, TOKEN_FILE), 'utf8').catch(() => '')
  if (token.trim() !== plan.token) {
    const retriedAs = await retry()
    return {
      exitCode: JobExit.INFRASTRUCTURE,
      retriedAs,
      message: `node ${node} does not see the results folder ${plan.resultsDir} (the shared path is not mounted here)${retriedAs ? `; submitted again as job ${retriedAs}` : ''}`,
    }
  }

  const resultDir = join(plan.resultsDir, job.id)
  const startedAt = new Date().toISOString()
  let resolved: ResolvedJobBox | undefined
  let record: NodeRecord
  const outsideLimit = () => slurmTimeLimitHit(slurmJobId, plan.sbatch.timeLimit)
  try {
    resolved = await ensureNodeBox(plan, options)
  } catch (error) {
    const stoppedBy = options.signal?.aborted ? await outsideLimit().catch(() => undefined) : undefined
    if (options.signal?.aborted && stoppedBy === undefined) throw options.signal.reason
    const end = stoppedBy
      ? {stoppedBy}
      : {error: `node ${node} could not get box ${plan.box.name}: ${(error as Error).message}`}
    record = {...recordWithoutWorker(plan, index, attempt, startedAt, end), slurm}
  }
  if (resolved) {
    const done = await runJob({
      spec: job,
      box: resolved.box,
      cacheDir: options.cacheDir,
      resultDir,
      cpus: plan.cpus ?? resolved.cpus,
      memoryMiB: plan.memoryMiB ?? resolved.memoryMiB,
      signal: options.signal,
      setup: plan.setup,
      attempt,
      outsideLimit,
    })
    record = {...done, slurm}
  }
  await mkdir(resultDir, {recursive: true})
  await writeRecord(resultDir, record!)
  let retriedAs: string | undefined
  if (record!.status === 'infrastructure') retriedAs = await retry()
  const why = record!.status === 'infrastructure' ? `: ${record!.error?.message.split('\n')[0]}` : ''
  return {
    record: record!,
    retriedAs,
    exitCode: record!.exitCode,
    message: `job ${job.id} on ${node}: ${record!.status}, exit ${record!.exitCode}${why}${retriedAs ? `; submitted again as job ${retriedAs}` : ''}`,
  }
}

/**
 * Slurm stops a task at its time limit as scancel does (SIGTERM, then SIGKILL after
 * KillWait); only Slurm's reason for the job (TimeLimit) tells the two apart.
 */
async function slurmTimeLimitHit(jobId: string, timeLimit: string | undefined): Promise<string | undefined> {
  const {stdout} = await run('scontrol', ['show', 'job', '--oneliner', jobId], {
    purpose: 'reading why Slurm stopped the task',
    timeout: 15_000,
  })
  // While the task is being stopped the job is COMPLETING; the reason says why.
  if (!/\b(JobState=TIMEOUT|Reason=TimeLimit)\b/.test(stdout)) return undefined
  return `Slurm's time limit${timeLimit ? ` (--time ${timeLimit})` : ''} stopped the job`
}

/** The record of a task whose job never reached a worker: the box could not be had, or Slurm's time limit came first. */
function recordWithoutWorker(
  plan: TaskPlan,
  index: number,
  attempt: number,
  startedAt: string,
  end: {error: string} | {stoppedBy: string},
): JobRecord {
  const job = plan.jobs[index]!
  const stopped = 'stoppedBy' in end
  return {
    id: job.id,
    box: {name: plan.box.name, version: plan.box.version ?? 'unknown'},
    status: stopped ? 'timeout' : 'infrastructure',
    exitCode: stopped ? JobExit.TIMEOUT : JobExit.INFRASTRUCTURE,
    signal: null,
    timedOut: stopped,
    outputLimitHit: false,
    bytesOut: {stdout: 0, stderr: 0, files: 0},
    phases: {},
    network: job.network,
    command: job.command,
    startedAt,
    finishedAt: new Date().toISOString(),
    attempts: attempt,
    refusedOutputs: [],
    ...(stopped ? {stoppedBy: end.stoppedBy} : {error: {message: end.error}}),
  }
}
