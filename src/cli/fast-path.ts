/**
 * `box ssh`, `box status` and the shell's `box __complete` (completion.ts) without oclif;
 * also the watcher of forward_ports: auto (lib/machine/auto-forward.ts), which box up starts.
 * Users run them in loops and scripts, or press Tab, and loading oclif costs about 0.15 s
 * here, half of what these commands may take in all. Only their plain forms are handled —
 * `box ssh [NAME] [-c CMD] [-- WORDS…]` and `box status [NAME…] [--json]` — with the same
 * library calls as src/commands/ssh.ts and status.ts. Anything else (help, other flags,
 * mistakes) returns false, and oclif runs the command with its full parser and messages.
 * bin/run.js loads it bundled into one file (scripts/bundle-fast-path.js).
 */
import {readFileSync} from 'node:fs'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

import {BoxError, boxErrorJson, formatBoxError} from '../lib/core/errors.js'
import {sshSession} from '../lib/machine/ssh-session.js'
import {defaultCacheDir, defaultDataDir, PROJECT_ROOT} from '../lib/core/paths.js'
import {openProject} from '../lib/machine/project.js'
import {machineStatus, printStatuses} from '../lib/machine/status.js'

interface Parsed {
  command: 'ssh' | 'status'
  names: string[]
  /** box ssh -c */
  shell?: string
  /** Words after `--`: a command for the guest. */
  words: string[]
  json: boolean
}

/** The command line as this fast path understands it, or undefined to leave it to oclif. */
export function parseFastPath(argv: readonly string[]): Parsed | undefined {
  const [command, ...rest] = argv
  if (command !== 'ssh' && command !== 'status') return undefined
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
    if (separator !== -1) return undefined
    const {values, positionals} = parseArgs({
      args: own,
      options: {json: {type: 'boolean'}},
      allowPositionals: true,
      strict: true,
    })
    return {command, names: positionals, words, json: values.json ?? false}
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
  try {
    const {version} = JSON.parse(readFileSync(join(PROJECT_ROOT, 'package.json'), 'utf8')) as {version: string}
    const {machines, context} = await openProject({
      version,
      names: parsed.names,
      dataDir: defaultDataDir(),
      cacheDir: defaultCacheDir(),
    })
    if (parsed.command === 'ssh') {
      process.exitCode = await sshSession(context, machines, {command: parsed.shell, words: parsed.words})
      return true
    }
    const statuses = await Promise.all(machines.map((machine) => machineStatus(context, machine)))
    if (parsed.json) process.stdout.write(`${JSON.stringify(statuses, null, 2)}\n`)
    else
      printStatuses(
        statuses,
        (line) => process.stdout.write(`${line}\n`),
        (line) => process.stderr.write(`${line}\n`),
      )
  } catch (caught) {
    // Anything else is reported as oclif reports it: its message, exit code 1.
    const error =
      caught instanceof BoxError ? caught : new BoxError(caught instanceof Error ? caught.message : String(caught))
    if (parsed.json) process.stdout.write(`${JSON.stringify(boxErrorJson(error), null, 2)}\n`)
    else process.stderr.write(formatBoxError(error))
    process.exitCode = error.exitCode
  }
  return true
}
