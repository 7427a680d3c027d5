import {existsSync} from 'node:fs'
import {mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {BoxImage} from '../provider.js'
import {BoxError} from '../../lib/core/errors.js'
import {run} from '../../lib/core/exec.js'
import {availableForwards, freePort, isPortFree, type ForwardedPort} from '../../lib/core/ports.js'
import {socketPath} from '../../lib/core/short-socket.js'
import {bootCommandLine, type BootChoice} from '../../lib/box/resnap.js'
import {dmiSkuFor} from '../../lib/box/boot-choice.js'
import type {Accel} from './accel.js'
import {agentFifos} from './agent.js'
import type {DirectBoot, QemuLaunchSpec} from './argv.js'
import type {ExtraDrive} from '../provider.js'
import {HostPortInUseError, launchQemu} from './process.js'

/** The files of one QEMU machine inside its state directory. */
export interface InstanceFiles {
  stateDir: string
  overlay: string
  qmpSocket: string
  serialLog: string
  pidFile: string
  /** Base path of the box-agent FIFOs (`agent.in`, `agent.out`). */
  agentFifo: string
  /** How QEMU was started this time (snapshot.ts saves it with a running state). */
  launchRecord: string
}

export function instanceFiles(stateDir: string): InstanceFiles {
  return {
    stateDir,
    overlay: join(stateDir, 'disk.qcow2'),
    qmpSocket: socketPath(stateDir, 'qmp.sock'),
    serialLog: join(stateDir, 'serial.log'),
    pidFile: join(stateDir, 'qemu.pid'),
    agentFifo: join(stateDir, 'agent'),
    launchRecord: join(stateDir, 'qemu-launch.json'),
  }
}

/** The guest's sshd port, forwarded from a free host port on 127.0.0.1. */
export const GUEST_SSH_PORT = 22

/** A linked clone: a qcow2 overlay whose backing file is the box's image (or `backing`), so nothing is copied. */
export async function createOverlay(box: BoxImage, overlay: string, backing = join(box.dir, 'box.img')): Promise<void> {
  try {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', backing, overlay], {
      purpose: 'creating the machine disk',
    })
  } catch (error) {
    // qemu-img reads the backing image's header to size the overlay: a damaged one fails here, before any boot.
    if (error instanceof BoxError && /Could not open backing image/.test(error.detail ?? '')) {
      throw new BoxError(`the box image ${backing} cannot be read: it is damaged or not a qcow2 image`, {
        detail: error.detail,
        suggestions: [
          'add a good copy of the box over it: box add --force NAME FILE',
          'or remove it (box remove NAME) and add it again',
        ],
      })
    }
    throw error
  }
}

/**
 * Kernel arguments for a guest under TCG only: emulated code is not executed
 * speculatively, so Spectre-style mitigations only cost time, and TCG's TSC is the
 * host's clock, the same on every vCPU (the kernel's sync check fails under
 * emulation and falls back to the HPET, whose every read is an emulated MMIO access).
 * Together ~1 s of kernel and ~2 s of userspace time to sshd under TCG here.
 */
export const TCG_KERNEL_ARGS = 'mitigations=off tsc=reliable'

/**
 * Direct kernel boot when the box ships a kernel and an LVM layout (faster than
 * firmware + grub, and the resnap choice is made per boot); undefined means the
 * disk's own grub decides.
 */
export function directBootFor(box: BoxImage, choice: BootChoice, accel?: Accel): DirectBoot | undefined {
  const info = box.metadata.box
  if (!info?.kernel) return undefined
  const line = bootCommandLine(info, choice)
  if (!line) return undefined
  const append = accel === 'tcg' ? `${line} ${TCG_KERNEL_ARGS}` : line
  return {kernel: join(box.dir, info.kernel), initrd: info.initrd ? join(box.dir, info.initrd) : undefined, append}
}

export interface BootOptions {
  name: string
  files: InstanceFiles
  box: BoxImage
  accel: Accel
  cpus: number
  memoryMiB: number
  choice: BootChoice
  /** Use the disk's boot loader even when direct kernel boot is possible. */
  firmwareBoot?: boolean
  /** Host port for ssh; a free one is picked when missing or taken. */
  sshPort?: number
  forwards?: ForwardedPort[]
  /** No network for the guest (forwarded ports still reach it). */
  restrictNetwork?: boolean
  /** No network interface at all. */
  noNetwork?: boolean
  /** Raw disks after the machine's own (box run's input and output images). */
  drives?: ExtraDrive[]
  /** Start paused, waiting for a saved state (snapshot.ts). */
  incoming?: boolean
}

/** What a running QEMU was started with, kept in its state dir for a later save of its state. */
export interface LaunchRecord {
  choice: BootChoice
  firmwareBoot: boolean
  spec: QemuLaunchSpec
}

export interface Booted {
  pid: number
  sshPort: number
  /** The forwards in force: a taken host port moves to the next free one. */
  forwards: ForwardedPort[]
  /** The guest has box-agent's port (its box declares the agent). */
  agent: boolean
  spec: QemuLaunchSpec
}

/** The QEMU a boot with `options` starts, with these host ports (a pure function: a restore compares it with a saved one). */
export function launchSpecFor(options: BootOptions, sshPort: number, forwards: ForwardedPort[]): QemuLaunchSpec {
  const directBoot = options.firmwareBoot ? undefined : directBootFor(options.box, options.choice, options.accel)
  // No kernel command line on a firmware boot: the box's grub takes the choice from the SMBIOS SKU, as under VirtualBox.
  const smbiosSku = !directBoot && options.box.metadata.box?.lvm ? dmiSkuFor(options.choice) : undefined
  return {
    name: options.name,
    accel: options.accel,
    cpus: options.cpus,
    memoryMiB: options.memoryMiB,
    disk: options.files.overlay,
    directBoot,
    forwards: [{guest: GUEST_SSH_PORT, host: sshPort, hostIp: '127.0.0.1', protocol: 'tcp'}, ...forwards],
    qmpSocket: options.files.qmpSocket,
    serialLog: options.files.serialLog,
    pidFile: options.files.pidFile,
    agentFifo: options.box.metadata.box?.agent === undefined ? undefined : options.files.agentFifo,
    restrictNetwork: options.restrictNetwork,
    noNetwork: options.noNetwork,
    drives: options.drives,
    incoming: options.incoming,
    smbiosSku,
  }
}

/** Start QEMU for a machine; ssh is forwarded on 127.0.0.1 (the next free port if the wanted one is taken). */
export async function bootInstance(options: BootOptions): Promise<Booted> {
  await mkdir(options.files.stateDir, {recursive: true})
  let sshPort = options.sshPort && (await isPortFree(options.sshPort)) ? options.sshPort : await freePort()
  const forwards = await availableForwards(options.forwards ?? [])
  const agentFifo = options.box.metadata.box?.agent === undefined ? undefined : options.files.agentFifo
  if (agentFifo) await makeFifos(agentFifo)
  for (let attempt = 0; ; attempt++) {
    try {
      const spec = launchSpecFor(options, sshPort, forwards)
      const launch: LaunchRecord = {choice: options.choice, firmwareBoot: options.firmwareBoot ?? false, spec}
      await writeFile(options.files.launchRecord, `${JSON.stringify(launch, null, 2)}\n`, {mode: 0o600})
      const pid = await launchQemu(spec)
      return {pid, sshPort, forwards, agent: agentFifo !== undefined, spec}
    } catch (error) {
      // A port taken between the check and QEMU's bind (or a UDP port): retry with a new ssh port, then give up clearly.
      if (!(error instanceof HostPortInUseError)) throw error
      if (attempt >= 3)
        throw new BoxError(error.message, {
          detail: error.detail,
          suggestions: ['choose other host ports in the Boxfile, or stop what uses them'],
        })
      sshPort = await freePort()
    }
  }
}

/** The box-agent FIFOs QEMU's pipe chardev opens (it fails to start without them). */
async function makeFifos(base: string): Promise<void> {
  const missing = Object.values(agentFifos(base)).filter((fifo) => !existsSync(fifo))
  if (missing.length > 0) await run('mkfifo', ['-m', '600', ...missing], {purpose: 'creating the guest agent FIFOs'})
}
