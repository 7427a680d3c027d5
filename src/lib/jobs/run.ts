/** box run: one job in a fresh worker, results in ./box-run/<job-id>/. */
import {resolve} from 'node:path'

import {BoxError, ExitCode} from '../core/errors.js'
import type {Progress} from '../core/progress.js'
import {resolveJobBox} from './box.js'
import {newJobId, runJob} from './job.js'
import {
  DEFAULT_FILE_SIZE_LIMIT,
  DEFAULT_JOB_USER,
  DEFAULT_NPROC,
  DEFAULT_OUTPUT_LIMIT,
  DEFAULT_OUTPUTS_LIMIT,
  PHASE_TIMEOUTS_MS,
  checkInputsExist,
  checkJobUser,
  checkOutputs,
  parseDuration,
  parseInput,
  parseSize,
  type JobRecord,
  type JobSpec,
} from './spec.js'

export interface RunCommandOptions {
  command: string[]
  box?: string
  machine?: string
  inputs: string[]
  outputs: string[]
  timeout?: string
  outputLimit?: string
  network: 'on' | 'off'
  user?: string
  follow?: (stream: 'stdout' | 'stderr', chunk: Buffer) => void
  cwd: string
  dataDir: string
  cacheDir: string
  version: string
  progress: Progress
  signal?: AbortSignal
}

export interface RunCommandResult {
  record: JobRecord
  resultDir: string
}

export async function runCommandJob(options: RunCommandOptions): Promise<RunCommandResult> {
  if (options.command.length === 0) {
    throw new BoxError('no command to run', {
      exitCode: ExitCode.USAGE,
      suggestions: ['put it after --: box run --box NAME -- make test'],
    })
  }
  // Everything about the job is checked before any worker starts (or a box is fetched).
  const inputs = options.inputs.map((text) => parseInput(text, options.cwd))
  await checkInputsExist(inputs)
  const outputs = checkOutputs(options.outputs)
  const timeoutMs = options.timeout ? parseDuration(options.timeout, '--timeout') : PHASE_TIMEOUTS_MS.run
  const outputLimit = options.outputLimit ? parseSize(options.outputLimit, '--output-limit') : DEFAULT_OUTPUT_LIMIT
  const resolved = await resolveJobBox({
    box: options.box,
    machine: options.machine,
    cwd: options.cwd,
    dataDir: options.dataDir,
    cacheDir: options.cacheDir,
    boxVersionOfCli: options.version,
    progress: options.progress,
    signal: options.signal,
  })
  const user = checkJobUser(options.user ?? DEFAULT_JOB_USER, resolved.loginUser)
  const id = newJobId()
  const spec: JobSpec = {
    id,
    // One word runs as a shell line (box run -- 'make && make test'); several as they are.
    command: options.command.length === 1 ? options.command[0]! : options.command,
    inputs,
    outputs,
    timeoutMs,
    outputLimit,
    outputsLimit: DEFAULT_OUTPUTS_LIMIT,
    network: options.network === 'on',
    user,
    nproc: DEFAULT_NPROC,
    fileSizeLimit: DEFAULT_FILE_SIZE_LIMIT,
    phaseTimeouts: {
      create: PHASE_TIMEOUTS_MS.create,
      wait: PHASE_TIMEOUTS_MS.wait,
      copyIn: PHASE_TIMEOUTS_MS.copyIn,
      copyOut: PHASE_TIMEOUTS_MS.copyOut,
    },
  }
  const resultDir = resolve(options.cwd, 'box-run', id)
  const stage = options.progress.stage(
    `job ${id}: ${resolved.box.name} ${resolved.box.version}, network ${options.network}`,
  )
  try {
    const record = await runJob({
      spec,
      box: resolved.box,
      cacheDir: options.cacheDir,
      resultDir,
      cpus: resolved.cpus,
      memoryMiB: resolved.memoryMiB,
      signal: options.signal,
      progress: options.progress,
      onOutput: options.follow,
    })
    if (record.status === 'infrastructure') stage.fail(record.error?.message.split('\n')[0])
    else stage.done(`${record.status}, exit ${record.exitCode}`)
    return {record, resultDir}
  } catch (error) {
    stage.fail()
    throw error
  }
}

/** The line `box run` ends with on stderr (not with --json). */
export function jobEndLine({record, resultDir}: RunCommandResult): string {
  const why =
    record.status === 'infrastructure'
      ? `: ${record.error?.message.split('\n')[0]}`
      : record.outputLimitHit
        ? ': output limit reached'
        : record.timedOut
          ? ': timed out'
          : ''
  return `job ${record.id}: ${record.status}, exit ${record.exitCode}${why}; results in ${resultDir}`
}
