/**
 * The compatibility record written beside every saved running state (`<state>.json`). A
 * migration stream loads only into a QEMU that builds the same machine: the same QEMU
 * version and machine type, the same CPUs, memory and devices. Anything else fails half way
 * through the load or, worse, resumes a guest that crashes later; so a restore compares the
 * record with the machine it would build and refuses first, saying what changed.
 */
import {createHash} from 'node:crypto'

import type {BootChoice} from '../../lib/box/resnap.js'
import {BoxError} from '../../lib/core/errors.js'
import type {Accel} from './accel.js'
import {buildQemuArgs, type QemuLaunchSpec} from './argv.js'

export const STATE_FORMAT = 1

export interface StateCompat {
  format: number
  qemuVersion: string
  /** The versioned machine type `pc` stood for (pc-i440fx-7.2). */
  machineType: string
  accel: Accel
  cpus: number
  memoryMiB: number
  /** sha256 of QEMU's argv with what differs between two starts of one machine (paths, host ports) taken out. */
  devices: string
  box: BoxIdentity
  /** How the machine was started, so a restore builds the same QEMU. */
  launch: {
    choice: BootChoice
    firmwareBoot: boolean
    agent: boolean
    restrictNetwork: boolean
    /** No NIC at all (a no-network job worker); absent in records written before it existed. */
    noNetwork?: boolean
    /**
     * The extra raw disks it was saved with (a no-network job worker's input and output
     * slots): a restore must give disks of the same serials, modes and sizes, since the guest
     * learnt their capacity at boot and migration carries no disk contents.
     */
    drives?: Array<{serial: string; readOnly: boolean; bytes: number}>
    guestForwards: Array<{guest: number; protocol: 'tcp' | 'udp'}>
  }
  /** The frozen disk layer's virtual size (a restore's new overlay is made without opening it). */
  diskVirtualSize: number
  state: {bytes: number; sha256: string}
  savedAt: string
}

/** Which box image the disk chain ends in: its store folder, version and the image file's size and mtime. */
export interface BoxIdentity {
  dir: string
  version?: string
  recipeHash?: string
  imageBytes: number
  imageMtimeMs: number
}

/** The machine a restore would start, in the terms of the record. */
export interface CompatTarget {
  qemuVersion: string
  machineType: string
  accel: Accel
  cpus: number
  memoryMiB: number
  devices: string
  box: BoxIdentity
}

/** The argv of `spec` with per-start parts replaced by placeholders, hashed. */
export function devicesFingerprint(spec: QemuLaunchSpec): string {
  const normal: QemuLaunchSpec = {
    ...spec,
    name: 'machine',
    disk: 'DISK',
    qmpSocket: 'QMP',
    serialLog: 'SERIAL',
    pidFile: 'PID',
    agentFifo: spec.agentFifo === undefined ? undefined : 'AGENT',
    // A drive's file differs per start (each job its own images); its serial and mode do not.
    drives: spec.drives?.map((drive, index) => ({...drive, file: `DRIVE${index}`})),
    forwards: spec.forwards.map((forward) => ({...forward, host: 0})),
    daemonize: false,
    incoming: false,
  }
  return createHash('sha256').update(buildQemuArgs(normal).join('\0')).digest('hex')
}

/**
 * box's own QEMU options (device layout, globals) as one short hash, over a fixed machine:
 * part of a ready state's cache key, so a box with other options makes a new ready state
 * instead of finding the old one and refusing it.
 */
export function layoutFingerprint(accel: Accel): string {
  return devicesFingerprint({
    name: 'machine',
    accel,
    cpus: 1,
    memoryMiB: 1024,
    disk: 'DISK',
    forwards: [],
    qmpSocket: 'QMP',
    serialLog: 'SERIAL',
    pidFile: 'PID',
    agentFifo: 'AGENT',
  }).slice(0, 12)
}

/** What differs between the record and the machine a restore would start; empty when it may load. */
export function compatProblems(saved: StateCompat, target: CompatTarget): string[] {
  const problems: string[] = []
  if (saved.format !== STATE_FORMAT)
    problems.push(`it is in format ${saved.format}, this box reads format ${STATE_FORMAT}`)
  if (saved.qemuVersion !== target.qemuVersion)
    problems.push(`it was saved by QEMU ${saved.qemuVersion}, this is QEMU ${target.qemuVersion}`)
  if (saved.machineType !== target.machineType)
    problems.push(`it was saved on machine type ${saved.machineType}, QEMU now builds ${target.machineType}`)
  if (saved.accel !== target.accel)
    problems.push(`it was saved under ${saved.accel}, this host runs guests under ${target.accel}`)
  if (saved.cpus !== target.cpus)
    problems.push(`it was saved with cpus: ${saved.cpus}, the Boxfile now says cpus: ${target.cpus}`)
  if (saved.memoryMiB !== target.memoryMiB)
    problems.push(
      `it was saved with memory: ${saved.memoryMiB} (MiB), the Boxfile now says memory: ${target.memoryMiB}`,
    )
  const sameBox =
    saved.box.dir === target.box.dir &&
    saved.box.version === target.box.version &&
    saved.box.recipeHash === target.box.recipeHash &&
    saved.box.imageBytes === target.box.imageBytes &&
    saved.box.imageMtimeMs === target.box.imageMtimeMs
  if (!sameBox)
    problems.push(
      `its disk builds on the box image in ${saved.box.dir}${saved.box.version ? ` (version ${saved.box.version})` : ''}, which is no longer the one the machine uses or was changed`,
    )
  // Only worth saying when nothing above explains it.
  if (problems.length === 0 && saved.devices !== target.devices)
    problems.push(
      "the machine's devices changed since (forwarded guest ports, network, boot setup or box's QEMU options)",
    )
  return problems
}

/** The refusal a restore gives for an incompatible state. */
export function incompatibleStateError(what: string, problems: string[]): BoxError {
  return new BoxError(`${what} cannot be resumed: ${problems.join('; ')}`, {
    suggestions: [
      'a saved running state loads only into the machine QEMU saved it from: undo the change to restore it, or save a new snapshot',
    ],
  })
}

/** A record read from disk, checked for the fields a restore relies on. */
export function parseStateCompat(text: string, file: string): StateCompat {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw new BoxError(`the compatibility record ${file} is not JSON`, {
      suggestions: ['the snapshot is damaged: delete it'],
    })
  }
  const record = value as Partial<StateCompat>
  const ok =
    typeof record === 'object' &&
    record !== null &&
    typeof record.format === 'number' &&
    typeof record.qemuVersion === 'string' &&
    typeof record.machineType === 'string' &&
    typeof record.cpus === 'number' &&
    typeof record.memoryMiB === 'number' &&
    typeof record.devices === 'string' &&
    typeof record.box?.dir === 'string' &&
    typeof record.launch?.choice === 'object' &&
    typeof record.diskVirtualSize === 'number' &&
    typeof record.state?.bytes === 'number' &&
    typeof record.state?.sha256 === 'string'
  if (!ok)
    throw new BoxError(`the compatibility record ${file} lacks fields a restore needs`, {
      suggestions: ['the snapshot is damaged or from another program: delete it'],
    })
  return record as StateCompat
}
