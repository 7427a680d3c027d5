/**
 * Named snapshots of a VirtualBox machine through VBoxManage: `snapshot take` (with
 * `--live` for a running VM: its saved state is written while it keeps running),
 * `snapshot restore` (a running snapshot leaves the VM "saved"; `startvm` resumes it),
 * `snapshot delete` (VirtualBox merges the snapshot's differencing disks into its children,
 * so deleting one others build on is allowed here). NAT rules cannot change in a saved
 * VM, so a taken forwarded host port is moved with `controlvm natpf1` once it runs.
 *
 * Written against VirtualBox's documented command line and box's VBoxManage stand-in
 * (test/fixtures/vboxmanage-standin); NOT verified against a real VirtualBox.
 */
import {readFile, rename, writeFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {BoxError} from '../../lib/core/errors.js'
import {freePort, isPortFree} from '../../lib/core/ports.js'
import type {MachineHandle, ProviderSnapshots, SnapshotInfo, SnapshotRestored, SnapshotSaved} from '../provider.js'
import {
  findVm,
  machineStateOf,
  natRuleSpec,
  natRulesOf,
  powerOffVm,
  snapshotNamesOf,
  startVmHeadless,
  vboxmanage,
  type NatRule,
} from './vboxmanage.js'

interface Entry {
  name: string
  kind: 'disk' | 'running'
  createdAt: string
  parent?: string
}

const SSH_RULE = 'ssh'
const indexFile = (stateDir: string) => join(stateDir, 'virtualbox-snapshots.json')

async function readEntries(stateDir: string): Promise<Entry[]> {
  try {
    return JSON.parse(await readFile(indexFile(stateDir), 'utf8')) as Entry[]
  } catch {
    return []
  }
}

async function writeEntries(stateDir: string, entries: Entry[]): Promise<void> {
  const target = indexFile(stateDir)
  await writeFile(`${target}.tmp`, `${JSON.stringify(entries, null, 2)}\n`, {mode: 0o600})
  await rename(`${target}.tmp`, target)
}

export class VirtualBoxSnapshots implements ProviderSnapshots {
  constructor(
    private readonly vmOf: (stateDir: string) => Promise<string>,
    private readonly watchRunning: (vm: string) => () => boolean,
  ) {}

  async list(machine: Pick<MachineHandle, 'stateDir'>): Promise<SnapshotInfo[]> {
    const vm = await this.vmOf(machine.stateDir)
    const info = await findVm(vm)
    const names = info ? snapshotNamesOf(info) : []
    const current = info?.get('CurrentSnapshotName')
    // Snapshots box did not take (VirtualBox's GUI) are listed as disk snapshots.
    const entries = await readEntries(machine.stateDir)
    return names.map((name) => {
      const entry = entries.find((candidate) => candidate.name === name)
      return {
        name,
        kind: entry?.kind ?? 'disk',
        createdAt: entry?.createdAt ?? '',
        parent: entry?.parent,
        current: name === current,
      }
    })
  }

  async save(machine: MachineHandle, name: string, _options: {signal?: AbortSignal} = {}): Promise<SnapshotSaved> {
    const vm = await this.vmOf(machine.stateDir)
    const info = await findVm(vm)
    if (!info) throw new BoxError(`VirtualBox no longer knows VM ${vm} (machine ${machine.name})`)
    if (snapshotNamesOf(info).includes(name))
      throw new BoxError(`machine ${machine.name} already has a snapshot named "${name}"`, {
        suggestions: ['delete it first or choose another name'],
      })
    const running = machineStateOf(info.get('VMState')) === 'running'
    const entry: Entry = {
      name,
      kind: running ? 'running' : 'disk',
      createdAt: new Date().toISOString(),
      parent: info.get('CurrentSnapshotName'),
    }
    await vboxmanage(
      ['snapshot', vm, 'take', name, ...(running ? ['--live'] : [])],
      `taking snapshot ${name} of ${vm}`,
      {timeoutMs: 30 * 60_000},
    )
    await writeEntries(machine.stateDir, [
      ...(await readEntries(machine.stateDir)).filter((other) => other.name !== name),
      entry,
    ])
    return {...entry, current: true}
  }

  async restore(
    machine: MachineHandle,
    name: string,
    options: {sshPort?: number; consume?: boolean},
  ): Promise<SnapshotRestored> {
    const restored = await this.restoreOnly(machine, name, options)
    // pop: VirtualBox merges the snapshot's differencing disk into the current state.
    if (options.consume) await this.delete(machine, name)
    return restored
  }

  private async restoreOnly(
    machine: MachineHandle,
    name: string,
    options: {sshPort?: number},
  ): Promise<SnapshotRestored> {
    const vm = await this.vmOf(machine.stateDir)
    const snapshots = await this.list(machine)
    const snapshot = snapshots.find((candidate) => candidate.name === name)
    if (!snapshot)
      throw new BoxError(`machine ${machine.name} has no snapshot named "${name}"`, {
        suggestions: [
          snapshots.length > 0
            ? `its snapshots: ${snapshots.map((s) => s.name).join(', ')}`
            : 'it has no snapshots yet',
        ],
      })
    const info = await findVm(vm)
    if (info && machineStateOf(info.get('VMState')) === 'running') await powerOffVm(vm)
    await vboxmanage(['snapshot', vm, 'restore', name], `restoring snapshot ${name} of ${vm}`, {timeoutMs: 30 * 60_000})
    if (snapshot.kind !== 'running') return {kind: 'disk'}
    // The rules are the snapshot's; which host ports are free is now's question.
    const rules = natRulesOf((await findVm(vm))!)
    const moves: Array<{rule: NatRule; port: number}> = []
    for (const rule of rules) {
      const wanted = rule.name === SSH_RULE && options.sshPort !== undefined ? options.sshPort : rule.hostPort
      if (rule.protocol === 'tcp' && !(await isPortFree(rule.hostPort, rule.hostIp || '127.0.0.1')))
        moves.push({rule, port: (await isPortFree(wanted)) && wanted !== rule.hostPort ? wanted : await freePort()})
    }
    await startVmHeadless(vm)
    for (const {rule, port} of moves) {
      await vboxmanage(
        ['controlvm', vm, 'natpf1', 'delete', rule.name],
        `moving forwarded port ${rule.hostPort} of ${vm}`,
      )
      await vboxmanage(
        ['controlvm', vm, 'natpf1', natRuleSpec({...rule, hostPort: port})],
        `moving forwarded port ${rule.hostPort} of ${vm}`,
      )
      rule.hostPort = port
    }
    const ssh = rules.find((rule) => rule.name === SSH_RULE)
    if (!ssh)
      throw new BoxError(`snapshot "${name}" of machine ${machine.name} has no ssh port forward`, {
        suggestions: ['halt the machine and boot it with box up'],
      })
    const forwardedPorts = rules
      .filter((rule) => rule !== ssh)
      .map((rule) => ({guest: rule.guestPort, host: rule.hostPort, hostIp: rule.hostIp, protocol: rule.protocol}))
    const serialLog = join(resolve(machine.stateDir), 'serial.log')
    return {
      kind: 'running',
      agent: false,
      started: {
        sshPort: ssh.hostPort,
        forwardedPorts,
        serialLog,
        isAlive: this.watchRunning(vm),
      },
    }
  }

  async delete(machine: Pick<MachineHandle, 'stateDir'>, name: string): Promise<{layerKept: boolean}> {
    const vm = await this.vmOf(machine.stateDir)
    const info = await findVm(vm)
    if (!info || !snapshotNamesOf(info).includes(name))
      throw new BoxError(`this machine has no snapshot named "${name}"`)
    await vboxmanage(['snapshot', vm, 'delete', name], `deleting snapshot ${name} of ${vm}`, {timeoutMs: 30 * 60_000})
    await writeEntries(
      machine.stateDir,
      (await readEntries(machine.stateDir)).filter((entry) => entry.name !== name),
    )
    return {layerKept: false}
  }
}
