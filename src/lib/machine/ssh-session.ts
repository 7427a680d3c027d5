/** Reaching a machine over ssh: its target, the target of one that must be running, and `box ssh` itself. */
import {providerFor} from '../../providers/index.js'
import type {Provider} from '../../providers/provider.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {BoxError, BugError, ExitCode} from '../core/errors.js'
import {runAttached, spawn} from '../core/exec.js'
import {machineDir, machineFiles, readRecord, type MachineContext, type MachineRecord} from './context.js'
import {hostKeyAlias, knownHostsFile} from './host-keys.js'
import {hostKeyError, sshArgs, type SshTarget} from './ssh.js'

/** How box reaches a started machine: its own key, and its host key checked against the pin in its folder. */
export function sshTarget(stateDir: string, record: MachineRecord, provider: Provider): SshTarget {
  if (!record.sshPort)
    throw new BoxError(`machine ${record.name} has never been started`, {suggestions: ['start it: box up']})
  return {
    host: '127.0.0.1',
    port: record.sshPort,
    user: record.user,
    keyFile: record.privateKeyPath ?? machineFiles(stateDir).key,
    controlPath: provider.sshControlPath({stateDir}),
    hostKeys: {knownHostsFile: knownHostsFile(stateDir), alias: hostKeyAlias(record), machine: record.name},
  }
}

/** The ssh target of a machine that must be running (ssh, provision, rsync); a clear error otherwise. */
export async function runningMachineTarget(
  context: Pick<MachineContext, 'projectDir' | 'cacheDir'>,
  machine: ResolvedMachine,
): Promise<SshTarget> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const provider = providerFor(machine.provider, context.cacheDir)
  const record = await readRecord(stateDir)
  if (!record || (await provider.state({stateDir})) !== 'running') {
    throw new BoxError(`machine ${machine.name} is not running`, {suggestions: [`start it: box up ${machine.name}`]})
  }
  return sshTarget(stateDir, record, provider)
}

/**
 * box ssh: an interactive shell with a TTY, or `command` (one shell string, as ssh takes it)
 * or `words` (each quoted for the remote shell); resolves to ssh's exit code.
 */
export async function sshSession(
  context: Pick<MachineContext, 'projectDir' | 'cacheDir'>,
  machines: readonly ResolvedMachine[],
  options: {command?: string; words: readonly string[]},
): Promise<number> {
  // A Boxfile resolves to at least one machine (one named default without machines:).
  if (machines.length === 0) throw new BugError('box ssh got no machine to connect to')
  if (machines.length !== 1) {
    throw new BoxError(`box ssh needs one machine; this Boxfile has ${machines.map((m) => m.name).join(', ')}`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`name one: box ssh ${machines[0]!.name}`],
    })
  }
  const target = await runningMachineTarget(context, machines[0]!)
  const args = sshArgs(target, options.words, options.command)
  const interactive = options.command === undefined && options.words.length === 0
  const exitCode = await runAttached('ssh', interactive ? ['-t', ...args] : args)
  // ssh's own failures are 255, and its message is on the terminal already; a host key it
  // refused gets box's word on what happened and how to reset it (one more connection try,
  // only on this failure, which a refused key makes fail the same way).
  if (exitCode === 255) {
    const refused = hostKeyError(
      target,
      await spawn('ssh', sshArgs(target, ['true']), {reject: false, stdin: 'ignore', timeout: 20_000}),
    )
    if (refused) throw refused
  }
  return exitCode
}
