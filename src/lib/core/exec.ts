import {spawn as spawnChild} from 'node:child_process'
import {constants} from 'node:fs'
import {access} from 'node:fs/promises'
import {createRequire} from 'node:module'
import {constants as osConstants} from 'node:os'
import {delimiter, join} from 'node:path'
import type {Options, ResultPromise} from 'execa'

import {BoxError, ExternalError, tail} from './errors.js'
import {packageFor} from './host-tools.js'

export interface RunOptions extends Pick<
  Options,
  'cwd' | 'env' | 'input' | 'timeout' | 'cancelSignal' | 'stdin' | 'stdout' | 'stderr'
> {
  /** What the command was doing, for the error message ("extracting the box"). */
  purpose?: string
  /** Suggestions added to the error when the command fails. */
  suggestions?: string[]
}

export interface RunResult {
  stdout: string
  stderr: string
  exitCode: number
}

// execa takes ~0.1 s to load, a third of box ssh's time budget, so it is loaded on first
// use; with require() (Node >= 20.19 loads ES modules that way), as spawn must return its
// child synchronously. (Scripts run from source need `node --import tsx/esm`: tsx's
// CommonJS hook cannot require an ES module.)
const requireModule = createRequire(import.meta.url)
const loadExeca = (): typeof import('execa').execa => (requireModule('execa') as typeof import('execa')).execa

/** Throws the BoxError a missing program deserves, naming the package to install. */
export function missingProgramError(command: string, cause?: unknown): BoxError {
  const pkg = packageFor(command)
  return new BoxError(`${command} is not installed`, {
    cause,
    suggestions: pkg ? [`install it: sudo apt-get install ${pkg}`] : [`install ${command} and make sure it is on PATH`],
  })
}

/**
 * Run a program with an argument array (never a shell string) and turn a failure
 * into a BoxError that names the command, its exit code and the tail of its output.
 */
export async function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const {purpose, suggestions, ...execaOptions} = options
  try {
    const result = await loadExeca()(command, args, {...execaOptions, stripFinalNewline: true})
    return {stdout: String(result.stdout ?? ''), stderr: String(result.stderr ?? ''), exitCode: result.exitCode ?? 0}
  } catch (error) {
    throw toBoxError(command, args, error, purpose, suggestions)
  }
}

/** Like run, but the child and its result are the caller's (execa's options as they are: reject, stdio, lifetime; never a shell). */
export function spawn(command: string, args: readonly string[], options: Omit<Options, 'shell'> = {}): ResultPromise {
  return loadExeca()(command, args, options)
}

/**
 * Run a program on this terminal (stdio inherited: box ssh) and resolve to its exit code,
 * 128 + the signal's number if a signal ended it. Ctrl-C reaches the whole foreground
 * process group, so box ignores it and waits for the program; a SIGTERM or SIGHUP sent to box
 * alone is passed on. Plain node:child_process, not execa: box ssh cannot afford loading execa.
 */
export function runAttached(command: string, args: readonly string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawnChild(command, args, {stdio: 'inherit'})
    const ignore = () => {}
    const forward = (signal: NodeJS.Signals) => child.kill(signal)
    process.on('SIGINT', ignore).on('SIGQUIT', ignore).on('SIGTERM', forward).on('SIGHUP', forward)
    const done = () =>
      process.off('SIGINT', ignore).off('SIGQUIT', ignore).off('SIGTERM', forward).off('SIGHUP', forward)
    child
      .on('error', (error: NodeJS.ErrnoException) => {
        done()
        reject(error.code === 'ENOENT' ? missingProgramError(command, error) : error)
      })
      .on('close', (code, signal) => {
        done()
        resolve(code ?? 128 + (signal ? osConstants.signals[signal] : 0))
      })
  })
}

/** Full path of an executable on PATH, or undefined: checks presence without running anything. */
export async function findOnPath(command: string, path = process.env.PATH ?? ''): Promise<string | undefined> {
  for (const dir of path.split(delimiter).filter(Boolean)) {
    const candidate = join(dir, command)
    try {
      await access(candidate, constants.X_OK)
      return candidate
    } catch {}
  }
  return undefined
}

/** A failed child (an execa error, or a result with `reject: false`) as the BoxError the user sees: what failed, the command, why, the output's tail. */
export function toBoxError(
  command: string,
  args: readonly string[],
  error: unknown,
  purpose?: string,
  suggestions: string[] = [],
): BoxError {
  const e = error as {
    code?: string
    exitCode?: number
    stderr?: unknown
    stdout?: unknown
    timedOut?: boolean
    isCanceled?: boolean
    signal?: string
  }
  if (e?.code === 'ENOENT') return missingProgramError(command, error)
  const what = purpose ? `${purpose} failed` : `${command} failed`
  const shown = [command, ...args].join(' ')
  let reason: string
  if (e?.timedOut) reason = 'timed out'
  else if (e?.isCanceled) reason = 'was cancelled'
  else if (e?.signal) reason = `was killed by ${e.signal}`
  else reason = `exited with code ${e?.exitCode ?? '?'}`
  const output = [e?.stderr, e?.stdout]
    .map((s) => (typeof s === 'string' ? s : ''))
    .filter(Boolean)
    .join('\n')
  return new ExternalError(`${what}: \`${shown}\` ${reason}`, {
    command,
    args,
    cause: error,
    detail: output ? tail(output) : undefined,
    suggestions,
  })
}
