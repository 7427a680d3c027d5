/**
 * One job from start to result.json: the phases in their order (phases.ts), the worker
 * destroyed whatever happened, and a record that tells the job's own failure from the
 * worker's. `box run` is this once; `box batch` is this many times.
 */
import {randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, rename, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {
  copyIn,
  copyOut,
  create,
  destroy,
  InfrastructureError,
  newJobState,
  prepare,
  run,
  wait,
  type JobBox,
  type JobContext,
  type JobState,
} from './phases.js'
import {JobExit, type JobRecord, type JobStatus} from './spec.js'

export interface RunJobOptions extends Omit<JobContext, 'workDir'> {
  /** Attempt number (box batch's retries), written to the record. */
  attempt?: number
  /**
   * Asked when the run is aborted: the outside limit that stopped it (the job then gets a
   * timeout record), or undefined for an interruption (the run rejects, no record).
   */
  outsideLimit?: () => Promise<string | undefined>
}

/** A job id for box run: sortable by time, unique. */
export function newJobId(): string {
  const now = new Date()
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-')
  return `${stamp}-${randomBytes(3).toString('hex')}`
}

export const RESULT_FILE = 'result.json'

/**
 * Run one job into `resultDir` (made empty first). Infrastructure failures come back as a
 * record with status "infrastructure" (exit 75); Ctrl-C rejects after the worker is gone.
 */
export async function runJob(options: RunJobOptions): Promise<JobRecord> {
  const {spec, resultDir} = options
  await rm(resultDir, {recursive: true, force: true})
  await mkdir(resultDir, {recursive: true})
  const scratch = join(options.cacheDir, 'jobs')
  await mkdir(scratch, {recursive: true, mode: 0o700})
  const workDir = await mkdtemp(join(scratch, `${spec.id}-`))
  const state = newJobState({...options, workDir})
  const startedAt = new Date().toISOString()
  let failure: unknown
  try {
    if (!spec.network) await copyIn(state)
    await prepare(state)
    await create(state)
    await wait(state)
    if (spec.network) await copyIn(state)
    await run(state)
    await copyOut(state)
  } catch (error) {
    failure = error
  } finally {
    await destroy(state).catch((error: unknown) => {
      failure ??= new InfrastructureError(`the worker could not be destroyed: ${(error as Error).message}`, {
        cause: error,
      })
    })
  }
  let stoppedBy: string | undefined
  if (options.signal?.aborted) {
    stoppedBy = await options.outsideLimit?.().catch(() => undefined)
    if (stoppedBy === undefined) throw options.signal.reason
  } else if (failure && !(failure instanceof InfrastructureError)) throw failure
  const record = buildRecord(state, options.box, startedAt, options.attempt ?? 1, {
    failure: stoppedBy === undefined ? (failure as InfrastructureError | undefined) : undefined,
    stoppedBy,
  })
  await writeRecord(resultDir, record)
  return record
}

function buildRecord(
  state: JobState,
  box: JobBox,
  startedAt: string,
  attempts: number,
  end: {failure?: InfrastructureError; stoppedBy?: string},
): JobRecord {
  const {spec} = state.context
  const {failure, stoppedBy} = end
  const guest = state.guest
  let status: JobStatus
  let exitCode: number
  if (stoppedBy !== undefined) {
    status = 'timeout'
    exitCode = JobExit.TIMEOUT
  } else if (failure || !guest) {
    status = 'infrastructure'
    exitCode = JobExit.INFRASTRUCTURE
  } else if (state.outputLimitHit) {
    status = 'output-limit'
    exitCode = JobExit.OUTPUT_LIMIT
  } else if (guest.timedOut) {
    status = 'timeout'
    exitCode = JobExit.TIMEOUT
  } else {
    exitCode = guest.exit
    status = exitCode === 0 ? 'ok' : 'failed'
  }
  return {
    id: spec.id,
    box: {name: box.name, version: box.version},
    status,
    exitCode,
    signal: failure || stoppedBy !== undefined ? null : (guest?.signal ?? null),
    timedOut: stoppedBy !== undefined || (!failure && (guest?.timedOut ?? false)),
    outputLimitHit: !failure && state.outputLimitHit,
    bytesOut: state.bytesOut,
    phases: state.phases,
    ...(state.worker ? {worker: state.worker.start} : {}),
    network: spec.network,
    command: spec.command,
    startedAt,
    finishedAt: new Date().toISOString(),
    attempts,
    refusedOutputs: state.refusedOutputs,
    ...(failure
      ? {
          error: {
            message: failure.detail ? `${failure.message}\n${failure.detail}` : failure.message,
            serialLogTail: failure.serialLogTail,
          },
        }
      : {}),
    ...(stoppedBy === undefined ? {} : {stoppedBy}),
  }
}

export async function writeRecord(resultDir: string, record: JobRecord): Promise<void> {
  const file = join(resultDir, RESULT_FILE)
  await writeFile(`${file}.tmp`, `${JSON.stringify(record, null, 2)}\n`)
  await rename(`${file}.tmp`, file)
}
