import {readFile, stat} from 'node:fs/promises'
import {basename} from 'node:path'

import {providerFor} from '../../providers/index.js'
import type {Provisioner, ResolvedMachine} from '../boxfile/types.js'
import {BoxError, ExitCode, ExternalError} from '../core/errors.js'
import {spawn, toBoxError} from '../core/exec.js'
import {machineDir, type MachineContext} from './context.js'
import {printChildLines} from './print-lines.js'
import {shJoin} from '../core/shell-quote.js'
import {hostKeyError, sshArgs, sshRun, type SshTarget} from './ssh.js'

/** Which provisioners run now: `once` on the first up (or when asked), `always` every time, `never` only by name (`only`). */
export function provisionersToRun(
  provisioners: Provisioner[],
  firstTime: boolean,
  only?: readonly string[],
): Provisioner[] {
  if (only) return provisioners.filter((p) => only.includes(p.name))
  return provisioners.filter((p) => p.run === 'always' || (p.run === 'once' && firstTime))
}

/** `--provision-with` names that none of the machines has: a usage error before anything runs. */
export function checkProvisionerNames(machines: ResolvedMachine[], names: readonly string[]): void {
  const known = new Set(machines.flatMap((machine) => machine.provisioners.map((p) => p.name)))
  const unknown = names.filter((name) => !known.has(name))
  if (unknown.length === 0) return
  throw new BoxError(
    `no provisioner named ${unknown.map((name) => `"${name}"`).join(', ')} in ${machines.map((m) => m.name).join(', ')}`,
    {
      exitCode: ExitCode.USAGE,
      suggestions: [
        known.size > 0
          ? `name one of: ${[...known].join(', ')}`
          : 'add provisioners to the Boxfile (docs/boxfile.md, "provisioners items")',
      ],
    },
  )
}

export async function runProvisioners(
  context: MachineContext,
  machine: ResolvedMachine,
  target: SshTarget,
  options: {firstTime: boolean; only?: readonly string[]},
): Promise<number> {
  const selected = provisionersToRun(machine.provisioners, options.firstTime, options.only)
  for (const provisioner of selected) {
    context.signal?.throwIfAborted()
    const stage = context.progress.stage(`${machine.name}: provisioner ${provisioner.name}`)
    try {
      if (provisioner.type === 'shell') await runShell(context, machine.name, target, provisioner)
      else if (provisioner.type === 'ansible') {
        const {runAnsible} = await import('./ansible.js')
        await runAnsible(context, machine.name, machineDir(context.projectDir, machine.name), target, provisioner)
      } else await copyIn(target, provisioner.source, provisioner.destination)
      stage.done()
    } catch (error) {
      stage.fail()
      throw (await stoppedMachineError(context, machine, provisioner.name)) ?? error
    }
  }
  return selected.length
}

/**
 * A machine whose QEMU died under a provisioner makes ssh fail (255), which would read as
 * the script failing: say what happened instead, and how to go on.
 */
async function stoppedMachineError(
  context: MachineContext,
  machine: ResolvedMachine,
  provisioner: string,
): Promise<BoxError | undefined> {
  if (context.signal?.aborted) return undefined
  const stateDir = machineDir(context.projectDir, machine.name)
  const state = await providerFor(machine.provider, context.cacheDir)
    .state({stateDir})
    .catch(() => undefined)
  if (state === undefined || state === 'running') return undefined
  return new BoxError(
    `machine ${machine.name} stopped while provisioner "${provisioner}" ran (its state is now ${state})`,
    {
      suggestions: [
        `start it again and rerun the provisioners: box up ${machine.name} && box provision ${machine.name}`,
      ],
    },
  )
}

async function runShell(
  context: MachineContext,
  name: string,
  target: SshTarget,
  provisioner: Extract<Provisioner, {type: 'shell'}>,
): Promise<void> {
  const script = provisioner.inline ?? (await readFile(provisioner.path!, 'utf8'))
  const exitCode = await runGuestScript(context, name, target, {
    name: provisioner.name,
    script,
    viaSh: provisioner.inline !== undefined && !provisioner.inline.startsWith('#!'),
    privileged: provisioner.privileged,
    env: provisioner.env,
    args: provisioner.args,
  })
  if (exitCode !== 0) {
    throw new BoxError(`provisioner "${provisioner.name}" of ${name} failed with exit code ${exitCode}`, {
      exitCode,
      suggestions: ['fix the script, then run it again: box provision'],
    })
  }
}

export interface GuestScript {
  /** For messages. */
  name: string
  script: string
  /** Run as `sh FILE` (a script without a shebang) rather than executing FILE. */
  viaSh: boolean
  privileged: boolean
  env?: Record<string, string>
  args?: readonly string[]
  /** The script's standard input: how a secret reaches the guest without touching a command line. */
  input?: string
}

/**
 * Run a script in the guest, its output streamed line by line with the machine's name as
 * prefix. The script travels over ssh's stdin into a private temp file, then runs from
 * there (removed afterwards), so nothing of it is on a command line. Resolves to the
 * script's exit code (1 when the process was killed and has none).
 */
export async function runGuestScript(
  context: MachineContext,
  machineName: string,
  target: SshTarget,
  guestScript: GuestScript,
): Promise<number> {
  const {stdout: remoteFile} = await sshRun(
    target,
    ['sh', '-c', 'f=$(mktemp /tmp/box-provision.XXXXXX) && cat > "$f" && chmod 0700 "$f" && echo "$f"'],
    {input: guestScript.script, purpose: `uploading ${guestScript.name}`},
  )
  const envWords = Object.entries(guestScript.env ?? {}).map(([key, value]) => `${key}=${value}`)
  const command = [
    ...(guestScript.privileged ? ['sudo', '-n'] : []),
    'env',
    ...envWords,
    ...(guestScript.viaSh ? ['sh', remoteFile] : [remoteFile]),
    ...(guestScript.args ?? []),
  ]
  const remote = `${shJoin(command)}; status=$?; rm -f ${shJoin([remoteFile])}; exit $status`
  const args = sshArgs(target, undefined, remote)
  const child = spawn('ssh', args, {
    reject: false,
    cancelSignal: context.signal,
    ...(guestScript.input === undefined ? {stdin: 'ignore' as const} : {input: guestScript.input}),
  })
  await printChildLines(context, machineName, child)
  const result = await child
  // ssh never started (not installed): no exit code to report, the user needs to know why.
  if (result.failed && result.exitCode === undefined && !result.isCanceled && !result.signal)
    throw toBoxError('ssh', args, result, `running ${guestScript.name}`)
  return result.exitCode ?? 1
}

/** File provisioner: a file is streamed with cat, a directory as a tar. */
async function copyIn(target: SshTarget, source: string, destination: string): Promise<void> {
  const info = await stat(source).catch(() => undefined)
  if (!info) throw new BoxError(`file provisioner: ${source} does not exist`)
  const dest = destination.startsWith('~/') ? `"$HOME"/${shJoin([destination.slice(2)])}` : shJoin([destination])
  if (info.isDirectory()) {
    const remote = `mkdir -p ${dest} && tar -xf - -C ${dest}`
    const tarArgs = ['-C', source, '-cf', '-', '.']
    const sshArgv = sshArgs(target, undefined, remote)
    const tar = spawn('tar', tarArgs, {reject: false, stdin: 'ignore'})
    const ssh = spawn('ssh', sshArgv, {reject: false})
    // execa's own pipe: tar's stdout given as ssh's stdin option was never read (nothing
    // was copied, and with no handle left node exited 0 in the middle of box up).
    const piped = tar.pipe(ssh).catch(() => undefined) // each side's result is checked below
    const [sshResult, tarResult] = await Promise.all([ssh, tar, piped])
    // ssh first: when it fails, tar dies of the broken pipe and says nothing useful.
    if (sshResult.failed)
      throw (
        hostKeyError(target, sshResult) ??
        toBoxError('ssh', sshArgv, sshResult, `copying ${basename(source)} to ${destination}`)
      )
    if (tarResult.failed) throw toBoxError('tar', tarArgs, tarResult, `packing ${source} for the file provisioner`)
    return
  }
  const remote = `mkdir -p "$(dirname ${dest})" && cat > ${dest}`
  const sshArgv = sshArgs(target, undefined, remote)
  const result = await spawn('ssh', sshArgv, {reject: false, inputFile: source})
  if (result.failed) {
    throw (
      hostKeyError(target, result) ??
      new ExternalError(`copying ${basename(source)} to ${destination} failed`, {
        command: 'ssh',
        args: sshArgv,
        cause: result,
        detail: String(result.stderr ?? ''),
      })
    )
  }
}
