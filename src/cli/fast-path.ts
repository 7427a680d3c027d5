/**
 * `box ssh`, `box status`, `box snapshot restore`, `box run` and the shell's `box __complete`
 * (completion.ts) without oclif; also the watcher of forward_ports: auto
 * (lib/machine/auto-forward.ts), which box up starts. Users run them in loops, scripts and job
 * pipelines, or press Tab, and loading oclif and a command's modules costs 0.2–0.5 s here: a
 * tenth to a quarter of a fresh worker's whole job. Only their plain forms are handled —
 * `box ssh [NAME] [-c CMD] [-- WORDS…]`, `box status [NAME…] [--json]`,
 * `box snapshot restore [NAME] SNAPSHOT [--json]` and `box run [FLAGS] -- COMMAND…` — with the
 * same library calls as their src/commands files. Anything else (help, other flags, mistakes)
 * returns false, and oclif runs the command with its full parser and messages.
 * bin/run.js loads it bundled into one file (scripts/bundle-fast-path.js).
 */
import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

import {BoxError, boxErrorJson, formatBoxError} from '../lib/core/errors.js'
import {sshSession} from '../lib/machine/ssh-session.js'
import {defaultCacheDir, defaultDataDir, PROJECT_ROOT} from '../lib/core/paths.js'
import {createProgress} from '../lib/core/progress.js'
import {openProject} from '../lib/machine/project.js'
import {machineStatus, printStatuses} from '../lib/machine/status.js'
import {listenForInterrupt} from './interrupt.js'

/** `box run`'s flags as src/commands/run.ts names them (its defaults are the library's). */
export interface RunFlags {
  box?: string
  machine?: string
  in: string[]
  out: string[]
  timeout?: string
  'output-limit'?: string
  network: 'on' | 'off'
  user?: string
  follow: boolean
}

type Parsed =
  | {
      command: 'ssh' | 'status'
      names: string[]
      /** box ssh -c */
      shell?: string
      /** Words after `--`: a command for the guest. */
      words: string[]
      json: boolean
    }
  | {command: 'snapshot restore'; names: string[]; snapshot: string; json: boolean; plain: boolean}
  | {command: 'run'; flags: RunFlags; words: string[]; json: boolean; plain: boolean}

const runOptions = {
  box: {type: 'string'},
  machine: {type: 'string'},
  in: {type: 'string', multiple: true},
  out: {type: 'string', multiple: true},
  timeout: {type: 'string'},
  'output-limit': {type: 'string'},
  network: {type: 'string'},
  user: {type: 'string'},
  follow: {type: 'boolean'},
  json: {type: 'boolean'},
  'no-color': {type: 'boolean'},
} as const

/** The flags the fast path knows for `box run` (test/unit/fast-path.test.ts holds them to the command's). */
export const FAST_RUN_FLAGS = Object.keys(runOptions)

/** The command line as this fast path understands it, or undefined to leave it to oclif. */
export function parseFastPath(argv: readonly string[]): Parsed | undefined {
  const [command, ...rest] = argv
  const separator = rest.indexOf('--')
  const words = separator === -1 ? [] : rest.slice(separator + 1)
  const own = separator === -1 ? rest : rest.slice(0, separator)
  try {
    if (command === 'ssh') {
      const {values, positionals} = parseArgs({
        args: own,
        options: {command: {type: 'string', short: 'c'}},
        allowPositionals: true,
        strict: true,
      })
      return {command, names: positionals, shell: values.command, words, json: false}
    }
    if (command === 'status') {
      if (separator !== -1) return undefined
      const {values, positionals} = parseArgs({
        args: own,
        options: {json: {type: 'boolean'}},
        allowPositionals: true,
        strict: true,
      })
      return {command, names: positionals, words, json: values.json ?? false}
    }
    if (command === 'snapshot' && rest[0] === 'restore') {
      if (separator !== -1) return undefined
      const {values, positionals} = parseArgs({
        args: rest.slice(1),
        options: {json: {type: 'boolean'}, 'no-color': {type: 'boolean'}},
        allowPositionals: true,
        strict: true,
      })
      // One word is the snapshot (every machine), two the machine and the snapshot; oclif says what is wrong otherwise.
      if (positionals.length === 0 || positionals.length > 2) return undefined
      return {
        command: 'snapshot restore',
        names: positionals.slice(0, -1),
        snapshot: positionals.at(-1)!,
        json: values.json ?? false,
        plain: values['no-color'] ?? false,
      }
    }
    if (command === 'run') {
      // The command after `--` only: a bare word before it is oclif's to read (or refuse).
      if (separator === -1 || words.length === 0) return undefined
      const {values, positionals} = parseArgs({args: own, options: runOptions, allowPositionals: true, strict: true})
      const network = values.network ?? 'off'
      if (positionals.length > 0 || (network !== 'on' && network !== 'off') || (values.box && values.machine))
        return undefined
      return {
        command,
        flags: {
          box: values.box,
          machine: values.machine,
          in: values.in ?? [],
          out: values.out ?? [],
          timeout: values.timeout,
          'output-limit': values['output-limit'],
          network,
          user: values.user,
          follow: values.follow ?? false,
        },
        words,
        json: values.json ?? false,
        plain: values['no-color'] ?? false,
      }
    }
    return undefined
  } catch {
    return undefined
  }
}

/** Run `argv` if it is a plain `box ssh` or `box status`; false when oclif must. */
export async function runFastPath(argv: readonly string[]): Promise<boolean> {
  // Both loaded only when asked for: box ssh and box status must not pay for the Boxfile parser or the providers.
  if (argv[0] === '__complete') {
    // Asked by the shell on Tab (completion.ts): never an error message on the user's command line.
    const {completionCandidates} = await import('./completion.js')
    const candidates = await completionCandidates(argv.slice(1), {cwd: process.cwd(), dataDir: defaultDataDir()}).catch(
      () => undefined,
    )
    if (candidates) process.stdout.write(candidates.map((name) => `${name}\n`).join(''))
    process.exitCode = candidates ? 0 : 1
    return true
  }
  if (argv[0] === '__auto-forward' && argv.length === 3) {
    // Started detached by box up (forward_ports: auto, lib/machine/auto-forward.ts), never by a user.
    const {watchListeningPorts} = await import('../lib/machine/auto-forward.js')
    await watchListeningPorts(argv[1]!, argv[2]!)
    return true
  }
  const parsed = parseFastPath(argv)
  if (!parsed) return false
  // Ctrl-C stops a job's or a restore's QEMU through the library (box ssh leaves it to ssh, status is instant).
  const interrupt = parsed.command === 'run' || parsed.command === 'snapshot restore' ? listenForInterrupt() : undefined
  try {
    const {version} = JSON.parse(readFileSync(join(PROJECT_ROOT, 'package.json'), 'utf8')) as {version: string}
    const places = {dataDir: defaultDataDir(), cacheDir: defaultCacheDir()}
    if (parsed.command === 'run') {
      const {jobEndLine, runCommandJob} = await import('../lib/jobs/run.js')
      const {flags} = parsed
      const result = await runCommandJob({
        command: parsed.words,
        box: flags.box,
        machine: flags.machine,
        inputs: flags.in,
        outputs: flags.out,
        timeout: flags.timeout,
        outputLimit: flags['output-limit'],
        network: flags.network,
        user: flags.user,
        follow:
          flags.follow && !parsed.json
            ? (stream, chunk) => void (stream === 'stdout' ? process.stdout : process.stderr).write(chunk)
            : undefined,
        cwd: process.cwd(),
        ...places,
        version,
        progress: createProgress({plain: parsed.plain, silent: parsed.json}),
        signal: interrupt?.signal,
      })
      if (parsed.json) printJson(result.record)
      else process.stderr.write(`${jobEndLine(result)}\n`)
      process.exitCode = result.record.exitCode
      return true
    }
    const progress =
      parsed.command === 'snapshot restore' ? createProgress({plain: parsed.plain, silent: parsed.json}) : undefined
    const {machines, context} = await openProject({
      version,
      names: parsed.names,
      ...places,
      ...(progress && {progress, signal: interrupt?.signal}),
    })
    if (parsed.command === 'snapshot restore') {
      const {restoredLine, restoreSnapshot} = await import('../lib/machine/snapshots.js')
      const results = []
      for (const machine of machines) results.push(await restoreSnapshot(context, machine, parsed.snapshot))
      if (parsed.json) printJson(results)
      else for (const restored of results) process.stdout.write(`${restoredLine(restored)}\n`)
      return true
    }
    if (parsed.command === 'ssh') {
      process.exitCode = await sshSession(context, machines, {command: parsed.shell, words: parsed.words})
      return true
    }
    const statuses = await Promise.all(machines.map((machine) => machineStatus(context, machine)))
    if (parsed.json) printJson(statuses)
    else
      printStatuses(
        statuses,
        (line) => process.stdout.write(`${line}\n`),
        (line) => process.stderr.write(`${line}\n`),
      )
  } catch (caught) {
    // Reported as oclif's BaseCommand reports it: a BoxError with its exit code (the
    // interruption's when a signal came), anything else as its message with exit code 1.
    const reason = interrupt?.interrupted ? (interrupt.signal.reason as unknown) : undefined
    const error =
      caught instanceof BoxError
        ? caught
        : reason instanceof BoxError
          ? reason
          : new BoxError(caught instanceof Error ? caught.message : String(caught))
    if (parsed.json) printJson(boxErrorJson(error))
    else process.stderr.write(formatBoxError(error))
    process.exitCode = error.exitCode
  } finally {
    interrupt?.dispose()
  }
  return true
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`)
}
