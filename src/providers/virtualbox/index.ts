/**
 * Machines as VirtualBox VMs, driven through VBoxManage. Each stored box becomes one
 * registered base VM with a snapshot "base" (made once, shared); each machine is a
 * linked clone of it living in the machine's state directory, so `up` copies no disk.
 */
import {createHash, randomBytes} from 'node:crypto'
import {mkdir, readFile, readdir, rename, rm, writeFile} from 'node:fs/promises'
import {basename, dirname, join, resolve} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {BoxError} from '../../lib/core/errors.js'
import {acquireLock} from '../../lib/core/lock.js'
import {defaultDataDir} from '../../lib/core/paths.js'
import {availableForwards, freePort, isPortFree} from '../../lib/core/ports.js'
import {socketPath} from '../../lib/core/short-socket.js'
import type {BoxImage, HaltOptions, MachineHandle, MachineState, Provider, StartOptions, Started} from '../provider.js'
import {VirtualBoxSnapshots} from './snapshots.js'
import {DMI_SYSTEM_SKU_KEY, dmiSkuFor} from '../../lib/box/boot-choice.js'
import {
  addStorageController,
  attachDisk,
  cloneVmLinked,
  createVm,
  discardSavedState,
  findVm,
  importOvf,
  machineStateOf,
  modifyVm,
  natRulesOf,
  powerOffVm,
  pressAcpiPowerButton,
  setExtraData,
  snapshotNamesOf,
  startVmHeadless,
  takeSnapshot,
  unregisterVm,
  unregisterVmAndDelete,
  VBoxManageError,
  type NatRule,
} from './vboxmanage.js'

/** The snapshot of a base VM that linked clones are made from. */
export const BASE_SNAPSHOT = 'base'
/**
 * The storage controller box gives VMs it creates around a converted disk: IDE (PIIX4),
 * because Debian's cloud kernel (what box's boxes run) has ata_piix but no AHCI driver.
 */
export const STORAGE_CONTROLLER = 'IDE'
/** Name of the ssh NAT rule on adapter 1. */
export const SSH_RULE = 'ssh'

/** What a machine's state directory remembers about its VM (`virtualbox.json`). */
export interface VirtualBoxRecord {
  /** The clone's VM name (unique: machine name plus random suffix). */
  vm: string
  /** The base VM it is a linked clone of. */
  base: string
}

export interface VirtualBoxProviderOptions {
  /** Where base VMs live (one per stored box); default `<data dir>/virtualbox`. */
  basesDir?: string
  /** How often halt and the liveness watch ask VirtualBox for the VM state. */
  pollMs?: number
}

function recordPath(stateDir: string): string {
  return join(stateDir, 'virtualbox.json')
}

export async function readVirtualBoxRecord(stateDir: string): Promise<VirtualBoxRecord | undefined> {
  try {
    return JSON.parse(await readFile(recordPath(stateDir), 'utf8')) as VirtualBoxRecord
  } catch {
    return undefined
  }
}

async function writeVirtualBoxRecord(stateDir: string, record: VirtualBoxRecord): Promise<void> {
  const target = recordPath(stateDir)
  await writeFile(`${target}.tmp`, `${JSON.stringify(record, null, 2)}\n`, {mode: 0o600})
  await rename(`${target}.tmp`, target)
}

/** VM names show up in VirtualBox's GUI and folder names: keep them to a safe alphabet. */
function vmSlug(text: string): string {
  return (
    text
      .replace(/[^A-Za-z0-9._-]+/g, '_')
      .replace(/^[._-]+/, '')
      .slice(0, 60) || 'box'
  )
}

/** The base VM of a stored box: named after NAME-VERSION plus a hash of its folder, so two stores never collide. */
export function baseVmName(boxDir: string): string {
  const dir = resolve(boxDir)
  const hash = createHash('sha256').update(dir).digest('hex').slice(0, 10)
  const version = basename(dirname(dir))
  const name = basename(dirname(dirname(dir)))
  return `box-base-${vmSlug(`${name}-${version}`)}-${hash}`
}

/** The box's disk for VirtualBox: an OVF appliance (Vagrant's virtualbox boxes), or a converted VDI/VMDK. */
export async function virtualBoxDiskOf(
  box: BoxImage,
): Promise<{kind: 'ovf'; path: string} | {kind: 'disk'; path: string}> {
  const names = (await readdir(box.dir)).sort()
  const ovf = names.find((name) => name.endsWith('.ovf'))
  if (ovf) return {kind: 'ovf', path: join(box.dir, ovf)}
  const disk = names.find((name) => name.endsWith('.vdi')) ?? names.find((name) => name.endsWith('.vmdk'))
  if (disk) return {kind: 'disk', path: join(box.dir, disk)}
  throw new BoxError(`the box in ${box.dir} has no VirtualBox disk (no .ovf, .vdi or .vmdk)`, {
    suggestions: names.includes('box.img')
      ? [
          'this is a QEMU/libvirt box: add it for VirtualBox so box converts its disk (qemu-img convert to VDI), or use provider: qemu',
        ]
      : ['add a VirtualBox box (provider virtualbox) with box add'],
  })
}

export class VirtualBoxProvider implements Provider {
  readonly name = 'virtualbox'
  private readonly basesDir: string
  private readonly pollMs: number

  constructor(options: VirtualBoxProviderOptions = {}) {
    this.basesDir = options.basesDir ?? join(defaultDataDir(), 'virtualbox')
    this.pollMs = options.pollMs ?? 500
  }

  /**
   * The box's base VM, made once: imported (OVF) or built around the converted disk,
   * then snapshotted. A lock file keeps two `up`s from importing the same box twice; a
   * marker written last tells a finished base from one a crash left half made.
   */
  async ensureBaseVm(box: BoxImage): Promise<string> {
    const name = baseVmName(box.dir)
    await mkdir(this.basesDir, {recursive: true})
    const marker = join(this.basesDir, `${name}.json`)
    const release = await acquireLock(join(this.basesDir, `${name}.lock`), {
      waitMs: 30 * 60_000,
      busy: (pid) =>
        new BoxError(`VirtualBox base VM ${name} is being made by another box command (pid ${pid})`, {
          suggestions: ['wait for it to finish, then try again'],
        }),
    })
    try {
      const disk = await virtualBoxDiskOf(box)
      const info = await findVm(name)
      const finished = await readFile(marker, 'utf8').then(
        () => true,
        () => false,
      )
      if (info && finished && snapshotNamesOf(info).includes(BASE_SNAPSHOT)) return name
      if (info) {
        // Half made: an imported base owns its disk copy; one around a store disk must not delete it.
        if (disk.kind === 'ovf') await unregisterVmAndDelete(name)
        else await unregisterVm(name)
      }
      await rm(marker, {force: true})
      await rm(join(this.basesDir, name), {recursive: true, force: true})
      if (disk.kind === 'ovf') {
        await importOvf(disk.path, {name, baseFolder: this.basesDir})
      } else {
        await createVm({name, osType: 'Linux_64', baseFolder: this.basesDir})
        // virtio-net: the cloud kernel has no e1000 driver.
        await modifyVm(name, {memoryMiB: 1024, natAdapter: true, nicType: 'virtio', rtcUseUtc: true})
        await addStorageController(name, {name: STORAGE_CONTROLLER, bus: 'ide', controller: 'PIIX4'})
        await attachDisk(name, {controller: STORAGE_CONTROLLER, port: 0, disk: disk.path})
      }
      await takeSnapshot(name, BASE_SNAPSHOT)
      await writeFile(marker, `${JSON.stringify({box: resolve(box.dir), disk: disk.path}, null, 2)}\n`)
      return name
    } finally {
      await release()
    }
  }

  async create(machine: MachineHandle): Promise<void> {
    const base = await this.ensureBaseVm(machine.box)
    const vm = `box-${vmSlug(machine.name)}-${randomBytes(4).toString('hex')}`
    // Written before the clone exists, so destroy finds a half-made clone by name.
    await mkdir(machine.stateDir, {recursive: true})
    await writeVirtualBoxRecord(machine.stateDir, {vm, base})
    await cloneVmLinked(base, {snapshot: BASE_SNAPSHOT, name: vm, baseFolder: resolve(machine.stateDir)})
  }

  async start(machine: MachineHandle, options: StartOptions): Promise<Started> {
    const record = await this.requireRecord(machine.stateDir)
    const info = await findVm(record.vm)
    if (!info) throw vmGoneError(record.vm, machine.name)
    const sshPort =
      options.sshPort !== undefined && (await isPortFree(options.sshPort)) ? options.sshPort : await freePort()
    // VirtualBox starts the VM even when a forwarded host port is taken (NAT only logs it): move taken ones first.
    const forwards = await availableForwards(machine.forwardedPorts)
    // A state saved in VirtualBox's GUI would be resumed and refuses modifyvm: box boots afresh.
    if (info.get('VMState') === 'saved' || info.get('VMState') === 'aborted-saved') await discardSavedState(record.vm)
    options.signal?.throwIfAborted()
    const serialLog = join(resolve(machine.stateDir), 'serial.log')
    const rules: NatRule[] = [
      {name: SSH_RULE, protocol: 'tcp', hostIp: '127.0.0.1', hostPort: sshPort, guestIp: '', guestPort: 22},
      ...forwards.map((p) => ({
        name: `${p.protocol}${p.host}`,
        protocol: p.protocol,
        hostIp: p.hostIp,
        hostPort: p.host,
        guestIp: '',
        guestPort: p.guest,
      })),
    ]
    try {
      await modifyVm(record.vm, {
        cpus: machine.cpus,
        memoryMiB: machine.memoryMiB,
        natAdapter: true,
        serialLog,
        deleteNatRules: natRulesOf(info).map((rule) => rule.name),
        addNatRules: rules,
      })
      if (machine.box.metadata.box?.lvm) await setExtraData(record.vm, DMI_SYSTEM_SKU_KEY, dmiSkuFor(options.choice))
      options.signal?.throwIfAborted()
      await startVmHeadless(record.vm)
    } catch (error) {
      throw explainStartError(error, record.vm, machine.name)
    }
    return {sshPort, forwardedPorts: forwards, serialLog, isAlive: this.watchRunning(record.vm)}
  }

  async state(machine: Pick<MachineHandle, 'stateDir'>): Promise<MachineState> {
    const record = await readVirtualBoxRecord(machine.stateDir)
    if (!record) return 'not_created'
    const info = await findVm(record.vm)
    if (!info) return 'not_created'
    return machineStateOf(info.get('VMState'))
  }

  async halt(
    machine: Pick<MachineHandle, 'stateDir'>,
    options: HaltOptions,
  ): Promise<'acpi' | 'forced' | 'not-running'> {
    const record = await readVirtualBoxRecord(machine.stateDir)
    if (!record || (await this.state(machine)) !== 'running') return 'not-running'
    if (!options.force) {
      try {
        await pressAcpiPowerButton(record.vm)
      } catch (error) {
        if (isKind(error, 'vm-not-running')) return 'not-running'
        throw error
      }
      const deadline = Date.now() + options.timeoutMs
      while (Date.now() < deadline) {
        if ((await this.state(machine)) !== 'running') return 'acpi'
        await sleep(this.pollMs)
      }
    }
    try {
      await powerOffVm(record.vm)
    } catch (error) {
      // It stopped between the last look and the poweroff.
      if (isKind(error, 'vm-not-running')) return options.force ? 'not-running' : 'acpi'
      throw error
    }
    return 'forced'
  }

  async destroy(machine: Pick<MachineHandle, 'stateDir'>): Promise<void> {
    const record = await readVirtualBoxRecord(machine.stateDir)
    if (record) {
      await this.halt(machine, {force: true, timeoutMs: 0})
      try {
        await unregisterVmAndDelete(record.vm)
      } catch (error) {
        if (!isKind(error, 'vm-not-found')) throw error
      }
      // A clone that failed half way may leave its folder without a registered VM.
      await rm(join(machine.stateDir, record.vm), {recursive: true, force: true})
    }
    await rm(recordPath(machine.stateDir), {force: true})
    await rm(join(machine.stateDir, 'serial.log'), {force: true})
  }

  sshControlPath(machine: Pick<MachineHandle, 'stateDir'>): string {
    return socketPath(machine.stateDir, 'ssh.ctl')
  }

  forgetBox(boxDir: string, options: {dataDir: string}): Promise<boolean> {
    return removeVirtualBoxBase(boxDir, join(options.dataDir, 'virtualbox'))
  }

  /** Snapshots through VBoxManage (snapshots.ts; unverified against a real VirtualBox). */
  get snapshots(): VirtualBoxSnapshots {
    return new VirtualBoxSnapshots(
      async (stateDir) => (await this.requireRecord(stateDir)).vm,
      (vm) => this.watchRunning(vm),
    )
  }

  private async requireRecord(stateDir: string): Promise<VirtualBoxRecord> {
    const record = await readVirtualBoxRecord(stateDir)
    if (!record) throw new BoxError(`no VirtualBox VM recorded in ${stateDir}`, {suggestions: ['create it: box up']})
    return record
  }

  /**
   * isAlive() must answer at once, but only VBoxManage knows: ask in the background and
   * answer from the last look. The timer does not keep box running and stops once the VM has.
   */
  private watchRunning(vm: string): () => boolean {
    let alive = true
    let busy = false
    const timer = setInterval(
      async () => {
        if (busy) return
        busy = true
        try {
          const info = await findVm(vm)
          alive = info !== undefined && machineStateOf(info.get('VMState')) === 'running'
        } catch {
          // VBoxManage hiccup: keep the last answer.
        } finally {
          busy = false
        }
        if (!alive) clearInterval(timer)
      },
      Math.max(this.pollMs, 1000),
    )
    timer.unref()
    return () => alive
  }
}

function isKind(error: unknown, kind: VBoxManageError['kind']): boolean {
  return error instanceof VBoxManageError && error.kind === kind
}

function vmGoneError(vm: string, machine: string): BoxError {
  return new BoxError(`VirtualBox no longer knows VM ${vm} (machine ${machine}): it was deleted outside box`, {
    suggestions: ['remove what is left and create it again: box destroy, then box up'],
  })
}

/** VBoxManage's failures at start, said in terms of what the user can do. */
function explainStartError(error: unknown, vm: string, machine: string): unknown {
  if (!(error instanceof VBoxManageError)) return error
  switch (error.kind) {
    case 'vm-locked':
      return new BoxError(`VirtualBox VM ${vm} (machine ${machine}) is running or held by another VirtualBox session`, {
        detail: error.detail,
        cause: error,
        suggestions: [
          'stop it first: box halt',
          'if VirtualBox shows it stopped, close the VirtualBox window that has it open',
        ],
      })
    case 'nat-rule-conflict':
      return new BoxError(`two port forwards of machine ${machine} use the same host port (or name)`, {
        detail: error.detail,
        cause: error,
        suggestions: ['give each forwarded port its own host port in the Boxfile (ssh uses one too)'],
      })
    case 'vm-not-found':
      return vmGoneError(vm, machine)
    default:
      return error
  }
}

/**
 * For the store's `box remove`: unregister the box's base VM (and delete its files) when
 * one was made. VirtualBox refuses while linked clones still hang from it; that is
 * reported, not forced. Returns whether a base VM existed.
 */
export async function removeVirtualBoxBase(
  boxDir: string,
  basesDir = join(defaultDataDir(), 'virtualbox'),
): Promise<boolean> {
  const name = baseVmName(boxDir)
  const existed = (await findVm(name)) !== undefined
  if (existed) {
    try {
      await unregisterVmAndDelete(name)
    } catch (error) {
      if (!(error instanceof VBoxManageError)) throw error
      // Gone meanwhile: nothing left to unregister.
      if (error.kind !== 'vm-not-found')
        throw new BoxError(`VirtualBox still uses the base VM ${name} of this box`, {
          detail: error.detail,
          cause: error,
          suggestions: ['destroy the machines made from it first (box global-status lists them)'],
        })
    }
  }
  await rm(join(basesDir, name), {recursive: true, force: true})
  await rm(join(basesDir, `${name}.json`), {force: true})
  return existed
}
