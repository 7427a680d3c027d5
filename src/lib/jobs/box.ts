/** The box a job's workers come from: a stored box by name, or a Boxfile machine's box and size. */
import {availableParallelism, freemem, totalmem} from 'node:os'

import {BoxError, ExitCode} from '../core/errors.js'
import type {Progress} from '../core/progress.js'
import type {JobBox} from './phases.js'

export interface JobBoxChoice {
  box?: string
  boxUrl?: string
  boxVersion?: string
  /** box_checksum: TYPE:HEX (or HEX) of the .box at boxUrl, verified when it is fetched. */
  boxChecksum?: string
  /** A machine of the Boxfile found from `cwd`: its box, CPUs and memory. */
  machine?: string
  cwd: string
  dataDir: string
  cacheDir: string
  boxVersionOfCli: string
  progress: Progress
  signal?: AbortSignal
}

export interface ResolvedJobBox {
  box: JobBox
  cpus: number
  memoryMiB: number
  /** The box's login user (it has sudo): never the job user. */
  loginUser?: string
}

/** Worker size when no machine names one: small, so several fit on a laptop. */
export const WORKER_DEFAULTS = {cpus: 1, memoryMiB: 1024}

export async function resolveJobBox(choice: JobBoxChoice): Promise<ResolvedJobBox> {
  if (choice.box && choice.machine) throw new BoxError('give --box or --machine, not both', {exitCode: ExitCode.USAGE})
  let name = choice.box
  let url = choice.boxUrl
  let constraint = choice.boxVersion
  let {cpus, memoryMiB} = WORKER_DEFAULTS
  if (!name) {
    const {openProject} = await import('../machine/project.js')
    const {machines} = await openProject({
      version: choice.boxVersionOfCli,
      names: choice.machine ? [choice.machine] : [],
      dataDir: choice.dataDir,
      cacheDir: choice.cacheDir,
      cwd: choice.cwd,
    }).catch((error: unknown) => {
      if (choice.machine) throw error
      throw new BoxError('no box named for the job', {
        exitCode: ExitCode.USAGE,
        suggestions: [
          'name one: box run --box NAME -- COMMAND',
          'or run it in a project with a Boxfile: box run --machine NAME -- COMMAND',
        ],
        cause: error,
      })
    })
    if (!choice.machine && machines.length !== 1)
      throw new BoxError(`the Boxfile has ${machines.length} machines: name one with --machine`, {
        exitCode: ExitCode.USAGE,
      })
    const machine = machines[0]!
    if (machine.provider !== 'qemu')
      throw new BoxError(`machine ${machine.name} uses provider ${machine.provider}; jobs run on qemu workers only`, {
        exitCode: ExitCode.USAGE,
      })
    name = machine.box
    url = machine.boxUrl
    constraint = machine.boxVersion
    cpus = machine.cpus
    memoryMiB = machine.memoryMiB
  }
  const {ensureBoxInstalled} = await import('../store/updates.js')
  const checksum = choice.boxChecksum ? await parseBoxChecksum(choice.boxChecksum) : undefined
  const stored = await ensureBoxInstalled({
    dataDir: choice.dataDir,
    cacheDir: choice.cacheDir,
    name,
    url,
    constraint,
    checksum,
    hostProvider: 'qemu',
    signal: choice.signal,
    progress: choice.progress,
  })
  const {BoxMetadataSchema} = await import('../box/metadata.js')
  const metadata = BoxMetadataSchema.parse(stored.metadata)
  return {
    box: {name: stored.name, version: stored.version, image: {dir: stored.path, metadata}},
    cpus,
    memoryMiB,
    loginUser: metadata.box?.user,
  }
}

/** "sha256:HEX" or a bare HEX (its type told by its length). */
export async function parseBoxChecksum(text: string) {
  const {checksumFromFlags} = await import('../store/add.js')
  const colon = text.indexOf(':')
  return checksumFromFlags(colon === -1 ? text : text.slice(colon + 1), colon === -1 ? undefined : text.slice(0, colon))
}

/**
 * How many workers this host runs at once by default: one per CPU (TCG is CPU-bound), and
 * no more than the memory free now holds with a quarter kept back for the host.
 */
export function defaultParallelism(memoryMiB: number): number {
  const byCpu = availableParallelism()
  const byMemory = Math.floor(Math.min(freemem(), totalmem() * 0.75) / (1024 * 1024) / (memoryMiB + 128))
  return Math.max(1, Math.min(byCpu, byMemory))
}
