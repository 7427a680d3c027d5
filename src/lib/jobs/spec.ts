/**
 * What one job is (box run's flags, one entry of a box batch file) and the checks made on
 * it before any worker starts: inputs exist and stay where they were named, guest paths are
 * absolute and plain, outputs cannot collide with the result files.
 */
import {lstat} from 'node:fs/promises'
import {basename, isAbsolute, posix, relative, resolve, sep} from 'node:path'

import {BoxError, ExitCode} from '../core/errors.js'

/**
 * Tango's per-phase limits (initialize 180 s, wait 60, copy-in 30, run 60, copy-out 30),
 * but for wait: Tango's 60 s is for pooled VMs that are up already, while a resnap boot
 * under TCG on a busy 2-core host took 20–60 s here, so it waits 240 s.
 */
export const PHASE_TIMEOUTS_MS = {create: 180_000, wait: 240_000, copyIn: 30_000, run: 60_000, copyOut: 30_000} as const
export type PhaseTimeouts = {create: number; wait: number; copyIn: number; copyOut: number}

/** Tango's output cap: 1000 KiB of stdout (and as much of stderr). */
export const DEFAULT_OUTPUT_LIMIT = 1000 * 1024
/** Processes the job user may have at once (Tango's autodriver: 100). */
export const DEFAULT_NPROC = 100
/** Largest file the job may write (RLIMIT_FSIZE). */
export const DEFAULT_FILE_SIZE_LIMIT = 100 * 1024 * 1024
/** Bytes of out: files a job may bring back. */
export const DEFAULT_OUTPUTS_LIMIT = 64 * 1024 * 1024
export const DEFAULT_JOB_USER = 'job'

/**
 * Exit codes: the job's own when it ran to its end; these when it did not. 124 is timeout(1)'s;
 * 75 is sysexits' EX_TEMPFAIL ("try again"), which is what an infrastructure failure is.
 */
export const JobExit = {TIMEOUT: 124, OUTPUT_LIMIT: 123, INFRASTRUCTURE: 75} as const

export const JOB_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

export interface JobInput {
  /** Absolute host path (file or directory), checked to exist. */
  host: string
  /** Absolute guest path it is copied to (a directory's contents go into it). */
  guest: string
}

export interface JobSpec {
  id: string
  /** A list runs as these words; a string runs through `sh -c`. */
  command: string[] | string
  inputs: JobInput[]
  /** Absolute guest paths brought back into results/<id>/<basename>. */
  outputs: string[]
  timeoutMs: number
  outputLimit: number
  outputsLimit: number
  network: boolean
  user: string
  nproc: number
  fileSizeLimit: number
  phaseTimeouts: PhaseTimeouts
}

export type JobStatus = 'ok' | 'failed' | 'timeout' | 'output-limit' | 'infrastructure'

export interface PhaseTimes {
  /** Making the ready state, when this job's start had to (a boot, once for all the jobs after). */
  ready?: number
  create?: number
  wait?: number
  copyIn?: number
  run?: number
  copyOut?: number
  destroy?: number
}

/** How a worker started, for the job's record. */
export interface WorkerStart {
  how: 'restored' | 'resnap-boot'
  /** The ready state's key (restored workers). */
  readyState?: string
  /** This job's start made the ready state first (its boot is the phase `ready`, or in `create` when the source has no prepare). */
  madeReadyState?: boolean
  /** From starting QEMU to the guest running again (restored workers). */
  loadMs?: number
  /** Why there was no ready state (resnap boots). */
  why?: string
}

/** result.json: one per job. */
export interface JobRecord {
  id: string
  box: {name: string; version: string}
  status: JobStatus
  exitCode: number
  signal: string | null
  timedOut: boolean
  outputLimitHit: boolean
  bytesOut: {stdout: number; stderr: number; files: number}
  /** Milliseconds per phase, in the order they ran. */
  phases: PhaseTimes
  /** How the worker started: restored from a ready state, or a resnap boot (and why). */
  worker?: WorkerStart
  network: boolean
  command: string[] | string
  startedAt: string
  finishedAt: string
  attempts: number
  /** Output entries not written (links, devices, names leaving the folder), with why. */
  refusedOutputs: Array<{name: string; reason: string}>
  /** Infrastructure failures: what went wrong, and the serial console's last lines. */
  error?: {message: string; serialLogTail?: string}
  /** The outside limit that stopped the job (Slurm's --time), when not its own timeout did. */
  stoppedBy?: string
}

const DURATION = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/

/** "90s", "2m", "1.5h", "500ms", or a number of seconds. */
export function parseDuration(value: string | number, what = 'duration'): number {
  const text = String(value).trim()
  const match = DURATION.exec(text)
  if (!match)
    throw new BoxError(`${what}: "${text}" is not a duration`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['write it as 90s, 2m, 1h or 500ms'],
    })
  const unit = {ms: 1, s: 1000, m: 60_000, h: 3_600_000}[(match[2] ?? 's') as 'ms' | 's' | 'm' | 'h']
  const ms = Math.round(Number(match[1]) * unit)
  if (ms <= 0) throw new BoxError(`${what}: must be more than zero`, {exitCode: ExitCode.USAGE})
  return ms
}

const SIZE = /^(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$/i

/** "1M", "500K", "2GiB" (powers of 1024) or a number of bytes. */
export function parseSize(value: string | number, what = 'size'): number {
  const text = String(value).trim()
  const match = SIZE.exec(text)
  if (!match)
    throw new BoxError(`${what}: "${text}" is not a size`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['write it as 1M, 500K or 1048576'],
    })
  const unit = (match[2] ?? 'b').toLowerCase()[0] as 'b' | 'k' | 'm' | 'g'
  const bytes = Math.floor(Number(match[1]) * {b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3}[unit])
  if (bytes <= 0) throw new BoxError(`${what}: must be more than zero`, {exitCode: ExitCode.USAGE})
  return bytes
}

/** A guest path box may write to or read from: absolute, no "..", not "/", one line. */
export function checkGuestPath(path: string, what: string): string {
  const problem = !path.startsWith('/')
    ? 'is not absolute'
    : path.split('/').includes('..')
      ? 'contains ".."'
      : /[\n\r\0]/.test(path)
        ? 'contains a line break or NUL'
        : posix.normalize(path) === '/'
          ? 'is the root directory'
          : undefined
  if (problem)
    throw new BoxError(`${what} ${JSON.stringify(path)} ${problem}`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['name an absolute path in the guest, such as /tmp/job'],
    })
  return posix.normalize(path).replace(/\/$/, '')
}

/**
 * `HOST[:GUEST]` → an input. A relative HOST is resolved against `baseDir` and must stay
 * inside it (no `..` out of it); without GUEST the input goes to /tmp/job/<name>.
 */
export function parseInput(text: string, baseDir: string, what = '--in'): JobInput {
  // The guest part is absolute, so the separator is the last ":" followed by "/".
  const split = text.lastIndexOf(':/')
  const hostPart = split > 0 ? text.slice(0, split) : text
  const guestPart = split > 0 ? text.slice(split + 1) : undefined
  if (hostPart === '')
    throw new BoxError(`${what} ${JSON.stringify(text)} names no host path`, {exitCode: ExitCode.USAGE})
  const host = resolve(baseDir, hostPart)
  if (!isAbsolute(hostPart)) {
    const rel = relative(baseDir, host)
    if (rel === '..' || rel.startsWith(`..${sep}`)) {
      throw new BoxError(`${what} ${JSON.stringify(hostPart)} leaves ${baseDir} (it climbs out with "..")`, {
        exitCode: ExitCode.USAGE,
        suggestions: ['name a path inside that folder, or an absolute path'],
      })
    }
  }
  const guest = checkGuestPath(guestPart ?? `/tmp/job/${basename(host)}`, `${what} guest path`)
  return {host, guest}
}

/** The checks that need the file system: every input exists (a top-level symlink is followed: the user named it). */
export async function checkInputsExist(inputs: readonly JobInput[], what = '--in'): Promise<void> {
  for (const input of inputs) {
    const info = await lstat(input.host).catch(() => undefined)
    if (!info)
      throw new BoxError(`${what}: ${input.host} does not exist`, {
        exitCode: ExitCode.USAGE,
        suggestions: ['check the path (relative paths start at the current folder, or at the job file in a batch)'],
      })
  }
}

const RESERVED_RESULT_NAMES = new Set(['result.json', 'stdout', 'stderr'])

/** Out paths land at results/<id>/<basename>: the names must be distinct and not the record's own. */
export function checkOutputs(outputs: readonly string[], what = '--out'): string[] {
  const seen = new Map<string, string>()
  return outputs.map((output) => {
    const path = checkGuestPath(output, what)
    const name = posix.basename(path)
    if (RESERVED_RESULT_NAMES.has(name))
      throw new BoxError(`${what} ${path}: its name ${name} is taken by the job's own result files`, {
        exitCode: ExitCode.USAGE,
        suggestions: ['bring back the folder that holds it instead'],
      })
    const earlier = seen.get(name)
    if (earlier)
      throw new BoxError(`${what} ${earlier} and ${path} would both be results/<id>/${name}`, {
        exitCode: ExitCode.USAGE,
        suggestions: ['bring back their common folder instead'],
      })
    seen.set(name, path)
    return path
  })
}

export function checkJobId(id: string): string {
  if (!JOB_ID_PATTERN.test(id))
    throw new BoxError(`job id ${JSON.stringify(id)} is not a plain name`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['use letters, digits, ".", "_" and "-" (at most 64), starting with a letter or digit'],
    })
  return id
}

export function checkJobUser(user: string, loginUser: string | undefined): string {
  if (!/^[a-z_][a-z0-9_-]{0,30}$/.test(user))
    throw new BoxError(`--user ${JSON.stringify(user)} is not a user name`, {exitCode: ExitCode.USAGE})
  if (user === 'root' || user === loginUser) {
    throw new BoxError(
      `jobs never run as ${user}${user === loginUser ? " (the box's login user, who has sudo)" : ''}`,
      {exitCode: ExitCode.USAGE, suggestions: [`leave --user out (the job user is "${DEFAULT_JOB_USER}")`]},
    )
  }
  return user
}

/** The command as one line of shell text for box-job (a list is quoted word by word). */
export function commandText(command: string[] | string, quote: (words: readonly string[]) => string): string {
  return typeof command === 'string' ? command : quote(command)
}
