/** `box ssh-config`: an OpenSSH config block per machine (for ssh, VS Code Remote-SSH, Ansible). */
import {providerFor} from '../../providers/index.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {BugError} from '../core/errors.js'
import {machineDir, readRecord, type MachineContext} from './context.js'
import {SSH_KEX_ALGORITHMS, type SshTarget} from './ssh.js'
import {sshTarget} from './ssh-session.js'

export interface SshConfigEntry {
  name: string
  /** Absent for a machine never started (it has no ssh port yet). */
  ssh?: {host: string; port: number; user: string; identityFile: string; knownHostsFile: string; hostKeyAlias: string}
}

export async function sshConfigEntries(
  context: Pick<MachineContext, 'projectDir' | 'cacheDir'>,
  machines: readonly ResolvedMachine[],
): Promise<SshConfigEntry[]> {
  const entries: SshConfigEntry[] = []
  for (const machine of machines) {
    const stateDir = machineDir(context.projectDir, machine.name)
    const record = await readRecord(stateDir)
    if (!record?.sshPort) {
      entries.push({name: machine.name})
      continue
    }
    const target = sshTarget(stateDir, record, providerFor(machine.provider, context.cacheDir))
    entries.push({
      name: machine.name,
      ssh: sshConfigOf(target),
    })
  }
  return entries
}

/** What a Host block says of a machine: its target, and the pinned host key it must show. */
export function sshConfigOf(target: SshTarget): NonNullable<SshConfigEntry['ssh']> {
  if (!target.hostKeys)
    throw new BugError(`no pinned host key for ${target.host}:${target.port} to write an ssh config with`)
  return {
    host: target.host,
    port: target.port,
    user: target.user,
    identityFile: target.keyFile,
    knownHostsFile: target.hostKeys.knownHostsFile,
    hostKeyAlias: target.hostKeys.alias,
  }
}

/** One machine's Host block, a blank line after it. The host key is checked against the machine's pin, as box checks it. */
export function sshConfigBlock(name: string, ssh: NonNullable<SshConfigEntry['ssh']>): string {
  return [
    `Host ${name}`,
    `  HostName ${ssh.host}`,
    `  Port ${ssh.port}`,
    `  User ${ssh.user}`,
    `  IdentityFile ${quoteConfigValue(ssh.identityFile)}`,
    '  IdentitiesOnly yes',
    `  KexAlgorithms ${SSH_KEX_ALGORITHMS}`,
    '  StrictHostKeyChecking yes',
    `  UserKnownHostsFile ${quoteConfigValue(ssh.knownHostsFile)}`,
    `  HostKeyAlias ${ssh.hostKeyAlias}`,
    '  LogLevel ERROR',
    '',
  ].join('\n')
}

/** ssh_config takes a value with spaces in double quotes (a project path may have them). */
function quoteConfigValue(value: string): string {
  return /[\s"]/.test(value) ? `"${value.replace(/"/g, '\\"')}"` : value
}
