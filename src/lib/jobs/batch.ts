/**
 * box batch: every job of a job file in its own fresh worker, at most N at once; a worker
 * that fails (never came up, lost) is retried up to `retries` times and never counted as
 * the job's failure. Ctrl-C stops every worker before it returns (each job's destroy runs)
 * and keeps the finished results; --resume skips jobs whose result.json is there.
 */
import {readFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {BoxError, ExitCode} from '../core/errors.js'
import {formatDuration} from '../core/progress.js'
import {defaultParallelism, resolveJobBox} from './box.js'
import {RESULT_FILE, runJob} from './job.js'
import {loadJobFile} from './jobfile.js'
import {checkInputsExist, checkJobUser, type JobRecord, type JobSpec} from './spec.js'
import type {WorkerSource} from './worker.js'

export interface BatchOptions {
  jobFile: string
  parallel?: number
  exclusive?: boolean
  resultsDir?: string
  resume?: boolean
  cwd: string
  dataDir: string
  cacheDir: string
  version: string
  progress: import('../core/progress.js').Progress
  /** The live line (a TTY) or plain lines: called on every change. */
  onEvent?: (event: BatchEvent) => void
  signal?: AbortSignal
  workerSource?: WorkerSource
}

export interface BatchCounts {
  total: number
  queued: number
  running: number
  done: number
  failed: number
  skipped: number
  /** Jobs per minute so far, and the time left at that rate. */
  ratePerMinute: number
  etaMs?: number
}

export type BatchEvent =
  | {type: 'started'; id: string; attempt: number; counts: BatchCounts}
  | {type: 'finished'; record: JobRecord; counts: BatchCounts}
  | {type: 'retry'; id: string; attempt: number; reason: string; counts: BatchCounts}
  | {type: 'skipped'; id: string; counts: BatchCounts}

export interface BatchResult {
  jobFile: string
  resultsDir: string
  parallel: number
  records: JobRecord[]
  skipped: string[]
  elapsedMs: number
}

/** A result.json that says the job ran to an end (not a worker failure). */
async function finishedRecord(resultDir: string): Promise<JobRecord | undefined> {
  try {
    const record = JSON.parse(await readFile(join(resultDir, RESULT_FILE), 'utf8')) as JobRecord
    return record.status === 'infrastructure' ? undefined : record
  } catch {
    return undefined
  }
}

export async function runBatch(options: BatchOptions): Promise<BatchResult> {
  const jobFile = await loadJobFile(resolve(options.cwd, options.jobFile))
  // Every input of every job must exist before the first worker starts.
  for (const job of jobFile.jobs) await checkInputsExist(job.inputs, `job ${job.id}: in`)
  const resolved = await resolveJobBox({
    box: jobFile.box,
    boxUrl: jobFile.boxUrl,
    boxVersion: jobFile.boxVersion,
    boxChecksum: jobFile.boxChecksum,
    cwd: jobFile.dir,
    dataDir: options.dataDir,
    cacheDir: options.cacheDir,
    boxVersionOfCli: options.version,
    progress: options.progress,
    signal: options.signal,
  })
  for (const job of jobFile.jobs) checkJobUser(job.user, resolved.loginUser)
  const cpus = jobFile.cpus ?? resolved.cpus
  const memoryMiB = jobFile.memoryMiB ?? resolved.memoryMiB
  const parallel = options.exclusive ? 1 : (options.parallel ?? defaultParallelism(memoryMiB))
  if (!Number.isInteger(parallel) || parallel < 1)
    throw new BoxError('--parallel must be a whole number of at least 1', {exitCode: ExitCode.USAGE})
  const resultsDir = resolve(options.cwd, options.resultsDir ?? join(jobFile.dir, 'results'))

  const started = Date.now()
  const records: JobRecord[] = []
  const skipped: string[] = []
  const queue: JobSpec[] = []
  for (const job of jobFile.jobs) {
    const done = options.resume ? await finishedRecord(join(resultsDir, job.id)) : undefined
    if (done) skipped.push(job.id)
    else queue.push(job)
  }
  let running = 0
  let finishedCount = 0
  const counts = (): BatchCounts => {
    const elapsed = Date.now() - started
    const ratePerMinute = finishedCount > 0 ? (finishedCount / elapsed) * 60_000 : 0
    const left = queue.length + running
    return {
      total: jobFile.jobs.length,
      queued: queue.length,
      running,
      done: records.filter((r) => r.status === 'ok').length,
      failed: records.filter((r) => r.status !== 'ok').length,
      skipped: skipped.length,
      ratePerMinute,
      etaMs: ratePerMinute > 0 ? (left / ratePerMinute) * 60_000 : undefined,
    }
  }
  for (const id of skipped) options.onEvent?.({type: 'skipped', id, counts: counts()})

  const runOne = async (job: JobSpec): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      options.signal?.throwIfAborted()
      options.onEvent?.({type: 'started', id: job.id, attempt, counts: counts()})
      const record = await runJob({
        spec: job,
        box: resolved.box,
        cacheDir: options.cacheDir,
        resultDir: join(resultsDir, job.id),
        cpus,
        memoryMiB,
        signal: options.signal,
        progress: options.progress,
        workerSource: options.workerSource,
        setup: jobFile.setup,
        attempt,
      })
      if (record.status === 'infrastructure' && attempt <= jobFile.retries) {
        options.onEvent?.({
          type: 'retry',
          id: job.id,
          attempt,
          reason: `worker failed (${record.error?.message.split('\n')[0] ?? 'no reason given'}); trying again`,
          counts: counts(),
        })
        continue
      }
      records.push(record)
      finishedCount++
      options.onEvent?.({type: 'finished', record, counts: counts()})
      return
    }
  }

  // N lanes take jobs off one queue; the first Ctrl-C ends every lane after its job's destroy.
  const lanes = Array.from({length: Math.min(parallel, queue.length)}, async () => {
    for (;;) {
      if (options.signal?.aborted) return
      const job = queue.shift()
      if (!job) return
      running++
      try {
        await runOne(job)
      } finally {
        running--
      }
    }
  })
  const settled = await Promise.allSettled(lanes)
  if (options.signal?.aborted) throw options.signal.reason
  const failure = settled.find((result): result is PromiseRejectedResult => result.status === 'rejected')
  if (failure) throw failure.reason
  const order = new Map(jobFile.jobs.map((job, index) => [job.id, index]))
  records.sort((a, b) => order.get(a.id)! - order.get(b.id)!)
  return {jobFile: jobFile.file, resultsDir, parallel, records, skipped, elapsedMs: Date.now() - started}
}

/** The live progress line: "queued 3 · running 2 · done 5 · failed 1 · 2.4 jobs/min · ETA 1m 15s". */
export function formatCounts(counts: BatchCounts): string {
  const parts = [
    `queued ${counts.queued}`,
    `running ${counts.running}`,
    `done ${counts.done}`,
    `failed ${counts.failed}`,
  ]
  if (counts.skipped > 0) parts.push(`skipped ${counts.skipped}`)
  if (counts.ratePerMinute > 0) parts.push(`${counts.ratePerMinute.toFixed(1)} jobs/min`)
  if (counts.etaMs !== undefined) parts.push(`ETA ${formatDuration(counts.etaMs)}`)
  return parts.join(' · ')
}

/** The summary table: one row per job. */
export function summaryRows(records: readonly JobRecord[]): string[][] {
  return [
    ['JOB', 'STATUS', 'EXIT', 'ATTEMPTS', 'RUN', 'TOTAL', 'OUTPUT'],
    ...records.map((record) => {
      const total = Object.values(record.phases).reduce((sum, ms) => sum + (ms ?? 0), 0)
      return [
        record.id,
        record.status,
        String(record.exitCode),
        String(record.attempts),
        record.phases.run === undefined ? '-' : formatDuration(record.phases.run),
        formatDuration(total),
        `${record.bytesOut.stdout + record.bytesOut.stderr} B${record.outputLimitHit ? ' (cut)' : ''}`,
      ]
    }),
  ]
}
