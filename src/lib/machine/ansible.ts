/**
 * The ansible provisioner: ansible-playbook runs on the host against the machine, over the
 * very ssh settings `box ssh-config` prints (its Host block, in a file ssh reads with -F).
 * Inventory, ssh config and extra vars are files in a private folder of the machine's state
 * dir (removed afterwards): nothing of them is on a command line.
 */
import {chmod, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {AnsibleProvisioner} from '../boxfile/types.js'
import {BoxError} from '../core/errors.js'
import {findOnPath, missingProgramError, spawn, toBoxError} from '../core/exec.js'
import {shJoin} from '../core/shell-quote.js'
import type {MachineContext} from './context.js'
import {printChildLines} from './print-lines.js'
import {sshConfigBlock, sshConfigOf} from './ssh-config.js'
import type {SshTarget} from './ssh.js'

/** The inventory (Ansible's YAML inventory format, written as JSON): the machine, and the groups that name it. */
export function ansibleInventory(machineName: string, sshConfigFile: string, provisioner: AnsibleProvisioner) {
  const children = Object.fromEntries(
    Object.entries(provisioner.inventoryGroups)
      .filter(([, members]) => members.includes(machineName))
      .map(([group]) => [group, {hosts: {[machineName]: {}}}]),
  )
  return {
    all: {
      hosts: {
        [machineName]: {
          // The Host block of sshConfigFile: HostName, Port, User, IdentityFile and the rest.
          ansible_host: machineName,
          ansible_ssh_common_args: shJoin(['-F', sshConfigFile]),
          ansible_python_interpreter: 'auto_silent',
        },
      },
      children,
    },
  }
}

/** ansible-playbook's arguments: an array, files for everything else. */
export function ansibleArgs(
  machineName: string,
  provisioner: AnsibleProvisioner,
  files: {inventory: string; extraVars?: string},
): string[] {
  return [
    '--inventory',
    files.inventory,
    '--limit',
    provisioner.limit ?? machineName,
    ...(provisioner.become ? ['--become'] : []),
    ...(files.extraVars ? ['--extra-vars', `@${files.extraVars}`] : []),
    provisioner.playbook,
  ]
}

export async function runAnsible(
  context: MachineContext,
  machineName: string,
  stateDir: string,
  target: SshTarget,
  provisioner: AnsibleProvisioner,
): Promise<void> {
  if (!(await findOnPath('ansible-playbook'))) throw missingProgramError('ansible-playbook')
  const dir = await mkdtemp(join(stateDir, 'ansible-'))
  try {
    await chmod(dir, 0o700)
    const sshConfig = join(dir, 'ssh_config')
    await writeFile(sshConfig, sshConfigBlock(machineName, sshConfigOf(target)), {mode: 0o600})
    const inventory = join(dir, 'inventory.json')
    await writeFile(inventory, JSON.stringify(ansibleInventory(machineName, sshConfig, provisioner), null, 2), {
      mode: 0o600,
    })
    let extraVars: string | undefined
    if (Object.keys(provisioner.extraVars).length > 0) {
      extraVars = join(dir, 'extra-vars.json')
      await writeFile(extraVars, JSON.stringify(provisioner.extraVars), {mode: 0o600})
    }
    const args = ansibleArgs(machineName, provisioner, {inventory, extraVars})
    const child = spawn('ansible-playbook', args, {
      reject: false,
      cancelSignal: context.signal,
      stdin: 'ignore',
      cwd: context.projectDir,
      env: {
        // Lines as they happen, not in 4 KiB blocks; no .retry files in the project.
        PYTHONUNBUFFERED: '1',
        ANSIBLE_RETRY_FILES_ENABLED: 'False',
        // False would make ansible add `-o StrictHostKeyChecking=no` to ssh's command line,
        // which beats the Host block's `yes`: the machine's pinned key would go unchecked.
        // Set, not left out, so that an ansible.cfg of the project cannot turn it off either.
        ANSIBLE_HOST_KEY_CHECKING: 'True',
      },
    })
    let task: string | undefined
    let failedTask: string | undefined
    await printChildLines(context, machineName, child, (line) => {
      const started = /^TASK \[(.*)\] \**$/.exec(line)
      if (started) task = started[1]
      else if (/^(fatal|failed): \[/.test(line) && failedTask === undefined) failedTask = task
      // Ansible separates its sections with blank lines: no prefixed empty lines.
      return line.trim() !== ''
    })
    const result = await child
    if (result.isCanceled) throw context.signal?.reason ?? new BoxError('ansible-playbook was cancelled')
    if (result.exitCode === undefined) throw toBoxError('ansible-playbook', args, result, `running ${provisioner.name}`)
    if (result.exitCode !== 0) {
      const where =
        failedTask !== undefined ? ` at task "${failedTask}"` : result.exitCode === 4 ? ' (machine unreachable)' : ''
      throw new BoxError(
        `provisioner "${provisioner.name}" of ${machineName} failed: ansible-playbook exited with code ${result.exitCode}${where}`,
        {exitCode: result.exitCode, suggestions: ['fix the playbook, then run it again: box provision']},
      )
    }
  } finally {
    await rm(dir, {recursive: true, force: true})
  }
}
