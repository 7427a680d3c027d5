/**
 * Saving a running QEMU machine and starting a new QEMU from what was saved (DESIGN §8,
 * measured under TCG with QEMU 7.2: there is no `file:` migration URI, `exec:` works).
 *
 * Save, with the guest paused only: QMP `stop`; the machine's overlay is renamed into a
 * frozen layer and QEMU switched live (blockdev-snapshot) to a new empty overlay on top of
 * it, so the layer keeps exactly the disk the saved RAM knows; `migrate` streams RAM and
 * devices to `exec:cat > STATE.partial`; `cont`. The checksum and the compatibility record
 * are written after the guest runs again, then the `.partial` is renamed: a failed or
 * interrupted save leaves no state file, and the machine keeps running.
 *
 * Start from a state: a new empty overlay over the frozen layer, QEMU with the machine's
 * argv plus `-incoming defer`, QMP `migrate-incoming exec:cat STATE`, the file's checksum
 * computed meanwhile, then `cont`. A state QEMU cannot load, or whose checksum is wrong,
 * ends with that QEMU stopped: no orphan.
 */
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {open, readFile, rename, rm, stat, writeFile} from 'node:fs/promises'
import {pipeline} from 'node:stream/promises'
import {setTimeout as sleep} from 'node:timers/promises'
import {join} from 'node:path'

import {BoxError} from '../../lib/core/errors.js'
import {findOnPath, run, spawn} from '../../lib/core/exec.js'
import type {ForwardedPort} from '../../lib/core/ports.js'
import {shQuote} from '../../lib/core/shell-quote.js'
import {qemuVersion, type Accel} from './accel.js'
import type {BoxImage, ExtraDrive} from '../provider.js'
import {bootInstance, launchSpecFor, type Booted, type InstanceFiles, type LaunchRecord} from './instance.js'
import {QEMU_BINARY, stopQemu} from './process.js'
import {QmpClient} from './qmp.js'
import {
  compatProblems,
  devicesFingerprint,
  incompatibleStateError,
  parseStateCompat,
  STATE_FORMAT,
  type BoxIdentity,
  type CompatTarget,
  type StateCompat,
} from './state-compat.js'

/** A migration stream starts with "QEVM" and version 3 (QEMU's savevm.c). */
const STATE_MAGIC = Buffer.from([0x51, 0x45, 0x56, 0x4d, 0x00, 0x00, 0x00, 0x03])

export interface HostQemu {
  version: string
  /** The versioned machine type `-machine pc` stands for. */
  pcMachineType: string
}

/**
 * QEMU's version and what `pc` means, cached per binary (size and mtime: an upgrade
 * replaces the file), so starting a worker does not spawn QEMU twice to ask.
 */
export async function hostQemu(cacheDir: string): Promise<HostQemu> {
  const binary = (await findOnPath(QEMU_BINARY)) ?? QEMU_BINARY
  const info = await stat(binary).catch(() => undefined)
  const key = `${binary}:${info?.size}:${info?.mtimeMs}`
  const cacheFile = join(cacheDir, 'qemu-host.json')
  try {
    const cached = JSON.parse(await readFile(cacheFile, 'utf8')) as {key: string} & HostQemu
    if (cached.key === key) return {version: cached.version, pcMachineType: cached.pcMachineType}
  } catch {}
  const [version, machines] = await Promise.all([
    qemuVersion(QEMU_BINARY),
    spawn(QEMU_BINARY, ['-machine', 'help'], {timeout: 10_000}),
  ])
  // "pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)"
  const pcMachineType = /^pc\s.*\(alias of ([\w.-]+)\)/m.exec(String(machines.stdout))?.[1] ?? 'pc'
  const result = {version, pcMachineType}
  await writeFile(`${cacheFile}.${process.pid}`, JSON.stringify({key, ...result}))
    .then(() => rename(`${cacheFile}.${process.pid}`, cacheFile))
    .catch(() => {})
  return result
}

/** The box image a disk chain ends in, as the compatibility record names it (no hashing: stat only). */
export async function boxIdentity(box: BoxImage): Promise<BoxIdentity> {
  const image = await stat(join(box.dir, 'box.img'))
  return {
    dir: box.dir,
    version: box.metadata.box?.version,
    recipeHash: box.metadata.box?.recipe_hash,
    imageBytes: image.size,
    imageMtimeMs: Math.round(image.mtimeMs),
  }
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256')
  await pipeline(createReadStream(file, {highWaterMark: 1 << 20}), hash)
  return hash.digest('hex')
}

async function readLaunchRecord(files: InstanceFiles): Promise<LaunchRecord> {
  try {
    return JSON.parse(await readFile(files.launchRecord, 'utf8')) as LaunchRecord
  } catch {
    throw new BoxError('this machine was started by an older box, which did not record how it started QEMU', {
      suggestions: ['halt it and start it again (box halt, box up), then save the snapshot'],
    })
  }
}

interface MigrationStatus {
  status: string
  'error-desc'?: string
}

/** Poll until a migration (outgoing or incoming) is over; rejects with QEMU's reason. */
async function waitForMigration(qmp: QmpClient, what: string, signal?: AbortSignal): Promise<void> {
  for (;;) {
    const info = await qmp.execute<MigrationStatus>('query-migrate')
    if (info.status === 'completed') return
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new BoxError(`${what} failed${info['error-desc'] ? `: ${info['error-desc']}` : ''}`)
    }
    if (signal?.aborted) {
      await qmp.execute('migrate_cancel').catch(() => {})
      throw signal.reason
    }
    await sleep(10)
  }
}

export interface SaveRunningOptions {
  files: InstanceFiles
  box: BoxImage
  accel: Accel
  cpus: number
  memoryMiB: number
  qemu: HostQemu
  /** The new overlay the machine goes on running on (the one it runs on now becomes the frozen layer, where it is). */
  next: string
  /** The state file; its compatibility record is `<state>.json`. */
  state: string
  /** Called with the frozen file's path once QEMU runs on `next` (the chain changed, whatever follows). */
  onFrozen?: (frozen: string) => Promise<void>
  signal?: AbortSignal
}

export interface SavedRunning {
  compat: StateCompat
  /** How long the guest was paused. */
  pauseMs: number
  /** Until the state file and its record were complete. */
  totalMs: number
  /** The frozen disk layer: the file QEMU ran on until the save, left where it is. */
  frozen: string
}

export function compatFileOf(state: string): string {
  return `${state}.json`
}

/** Save a running machine's disk and RAM/devices; it keeps running on a new overlay over `layer`. */
export async function saveRunningState(options: SaveRunningOptions): Promise<SavedRunning> {
  const {files} = options
  const launch = await readLaunchRecord(files)
  const partial = `${options.state}.partial`
  const started = Date.now()
  const qmp = await QmpClient.connect(files.qmpSocket)
  let pauseMs = 0
  let diskVirtualSize = 0
  let frozen = ''
  try {
    const blocks =
      await qmp.execute<
        Array<{device?: string; inserted?: {'node-name': string; file: string; image: {'virtual-size': number}}}>
      >('query-block')
    // The machine's own disk, not a job's extra raw drives (their ids start with "extra": argv.ts).
    const drive = blocks.find((block) => block.inserted && !block.device?.startsWith('extra'))?.inserted
    if (!drive) throw new BoxError('QEMU reports no disk for this machine')
    diskVirtualSize = drive.image['virtual-size']
    frozen = drive.file
    options.signal?.throwIfAborted()
    await rm(partial, {force: true})
    const paused = Date.now()
    await qmp.execute('stop')
    try {
      await switchToNewOverlay(qmp, frozen, options.next, drive['node-name'], diskVirtualSize)
      await options.onFrozen?.(frozen)
      await qmp.execute('migrate', {uri: `exec:cat > ${shQuote(partial)}`})
      await waitForMigration(qmp, 'saving the running state', options.signal)
    } finally {
      // The guest runs on whatever happened (a failed migration included).
      await qmp.execute('cont')
      pauseMs = Date.now() - paused
    }
  } catch (error) {
    await rm(partial, {force: true})
    if (options.signal?.aborted) throw options.signal.reason
    throw error instanceof BoxError && /saving the running state failed/.test(error.message)
      ? new BoxError(error.message, {
          cause: error,
          suggestions: ['check the free space where the machine lives (df -h .box)'],
        })
      : error
  } finally {
    qmp.close()
  }
  try {
    const bytes = (await stat(partial)).size
    const compat: StateCompat = {
      format: STATE_FORMAT,
      qemuVersion: options.qemu.version,
      machineType: options.qemu.pcMachineType,
      accel: options.accel,
      cpus: options.cpus,
      memoryMiB: options.memoryMiB,
      devices: devicesFingerprint(launch.spec),
      box: await boxIdentity(options.box),
      launch: {
        choice: launch.choice,
        firmwareBoot: launch.firmwareBoot,
        agent: launch.spec.agentFifo !== undefined,
        restrictNetwork: launch.spec.restrictNetwork ?? false,
        noNetwork: launch.spec.noNetwork ?? false,
        drives: await Promise.all(
          (launch.spec.drives ?? []).map(async (drive) => ({
            serial: drive.serial,
            readOnly: drive.readOnly ?? false,
            bytes: (await stat(drive.file)).size,
          })),
        ),
        guestForwards: launch.spec.forwards
          .slice(1)
          .map((forward) => ({guest: forward.guest, protocol: forward.protocol})),
      },
      diskVirtualSize,
      state: {bytes, sha256: await sha256File(partial)},
      savedAt: new Date().toISOString(),
    }
    const compatFile = compatFileOf(options.state)
    await writeFile(`${compatFile}.partial`, `${JSON.stringify(compat, null, 2)}\n`, {mode: 0o600})
    const handle = await open(partial, 'r')
    await handle.sync().finally(() => handle.close())
    await rename(`${compatFile}.partial`, compatFile)
    await rename(partial, options.state)
    return {compat, pauseMs, totalMs: Date.now() - started, frozen}
  } catch (error) {
    await rm(partial, {force: true})
    await rm(`${compatFileOf(options.state)}.partial`, {force: true})
    await rm(compatFileOf(options.state), {force: true})
    throw error
  }
}

/**
 * While the guest is stopped: a new overlay over the file QEMU runs on takes the guest's
 * writes from now on (blockdev-snapshot), and that file is frozen where it is. It must not
 * be renamed while this QEMU lives: QEMU reopens a backing file by its path (read-only at
 * the switch, again when a migration hands the disks back), and a renamed path would give
 * it another file (snapshot-chain.ts moves files only while no QEMU runs).
 */
async function switchToNewOverlay(
  qmp: QmpClient,
  current: string,
  next: string,
  activeNode: string,
  virtualSize: number,
): Promise<void> {
  const node = `box-${Date.now().toString(36)}`
  try {
    // -u: the current file is QEMU's, locked; the size is given instead of read from it.
    await run(
      'qemu-img',
      ['create', '-q', '-f', 'qcow2', '-u', '-F', 'qcow2', '-b', current, next, String(virtualSize)],
      {purpose: 'creating the overlay the machine continues on'},
    )
    await qmp.execute('blockdev-add', {
      driver: 'qcow2',
      'node-name': node,
      discard: 'unmap',
      'detect-zeroes': 'unmap',
      file: {driver: 'file', filename: next},
      backing: null,
    })
    await qmp.execute('blockdev-snapshot', {node: activeNode, overlay: node})
  } catch (error) {
    await qmp.execute('blockdev-del', {'node-name': node}).catch(() => {})
    await rm(next, {force: true})
    throw error
  }
}

/** A halted machine's disk snapshot: the overlay becomes `layer`, a new empty one goes on top. */
export async function freezeHaltedDisk(overlay: string, layer: string): Promise<void> {
  await rename(overlay, layer)
  try {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', layer, overlay], {
      purpose: 'creating the machine disk over the snapshot',
    })
  } catch (error) {
    await rm(overlay, {force: true})
    await rename(layer, overlay)
    throw error
  }
}

/** The machine's disk as a new empty overlay over `layer` (a restore: what the disk had is dropped). */
export async function overlayOnLayer(overlay: string, layer: string, virtualSize?: number): Promise<void> {
  await rm(overlay, {force: true})
  const size = virtualSize === undefined ? [] : [String(virtualSize)]
  // With the size known the layer is not opened (workers share it while others read it).
  await run(
    'qemu-img',
    [
      'create',
      '-q',
      '-f',
      'qcow2',
      ...(virtualSize === undefined ? [] : ['-u']),
      '-F',
      'qcow2',
      '-b',
      layer,
      overlay,
      ...size,
    ],
    {purpose: 'creating the machine disk over the snapshot'},
  )
}

export async function readStateCompat(state: string): Promise<StateCompat> {
  const file = compatFileOf(state)
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch {
    throw new BoxError(`the saved state ${state} has no compatibility record (${file})`, {
      suggestions: ['the snapshot is incomplete: delete it'],
    })
  }
  return parseStateCompat(text, file)
}

export interface StartFromStateOptions {
  name: string
  files: InstanceFiles
  box: BoxImage
  accel: Accel
  cpus: number
  memoryMiB: number
  forwards: ForwardedPort[]
  /** Extra raw disks in place of the ones it was saved with: same serials, modes and sizes. */
  drives?: ExtraDrive[]
  sshPort?: number
  qemu: HostQemu
  layer: string
  state: string
  /** What the user calls it in messages ("snapshot \"before\" of machine web"). */
  what: string
  /** Called once the machine's disk is the new overlay over `layer` (whatever follows). */
  onDiskReplaced?: () => Promise<void>
  signal?: AbortSignal
}

export interface StartedFromState {
  booted: Booted
  /** From launching QEMU to the guest running. */
  loadMs: number
  /** Bytes the new overlay took on disk before the guest ran. */
  overlayBytesBeforeRun: number
}

/** The record's refusal for this machine, or nothing when the state may load. */
export async function checkStateFits(
  compat: StateCompat,
  options: Omit<StartFromStateOptions, 'layer' | 'state' | 'signal' | 'sshPort' | 'onDiskReplaced'>,
): Promise<void> {
  const spec = launchSpecFor(
    {
      name: options.name,
      files: options.files,
      box: options.box,
      accel: options.accel,
      cpus: options.cpus,
      memoryMiB: options.memoryMiB,
      choice: compat.launch.choice,
      firmwareBoot: compat.launch.firmwareBoot,
      restrictNetwork: compat.launch.restrictNetwork,
      noNetwork: compat.launch.noNetwork,
      drives: options.drives,
    },
    0,
    options.forwards,
  )
  const target: CompatTarget = {
    qemuVersion: options.qemu.version,
    machineType: options.qemu.pcMachineType,
    accel: options.accel,
    cpus: options.cpus,
    memoryMiB: options.memoryMiB,
    box: await boxIdentity(options.box),
    devices: devicesFingerprint(spec),
  }
  const problems = compatProblems(compat, target)
  if (problems.length === 0) problems.push(...(await driveProblems(compat, options.drives ?? [])))
  if (problems.length > 0) throw incompatibleStateError(options.what, problems)
}

/** Extra disks that do not fit the ones saved (a guest keeps the capacity it saw at boot). */
async function driveProblems(compat: StateCompat, drives: ExtraDrive[]): Promise<string[]> {
  const saved = compat.launch.drives ?? []
  if (saved.length !== drives.length)
    return [`it was saved with ${saved.length} extra disk(s), this start gives ${drives.length}`]
  const problems: string[] = []
  for (const [index, drive] of drives.entries()) {
    const bytes = (await stat(drive.file)).size
    if (bytes !== saved[index]!.bytes)
      problems.push(`extra disk ${drive.serial} is ${bytes} bytes, the saved guest knows it as ${saved[index]!.bytes}`)
  }
  return problems
}

/** Check the state file itself before any QEMU starts: present, as long as saved, a QEMU stream. */
export async function checkStateFile(state: string, compat: StateCompat, what: string): Promise<void> {
  let size: number
  try {
    size = (await stat(state)).size
  } catch {
    throw new BoxError(`the saved state of ${what} is missing (${state})`, {
      suggestions: ['delete the snapshot and save a new one'],
    })
  }
  if (size !== compat.state.bytes) {
    throw new BoxError(
      `the saved state of ${what} is ${size} bytes but ${compat.state.bytes} were saved: it is truncated or was replaced`,
      {suggestions: ['delete the snapshot and save a new one']},
    )
  }
  const handle = await open(state, 'r')
  const head = Buffer.alloc(STATE_MAGIC.length)
  try {
    await handle.read(head, 0, head.length, 0)
  } finally {
    await handle.close()
  }
  if (!head.equals(STATE_MAGIC)) throw corruptStateError(what, state, 'it does not start as a QEMU migration stream')
}

function corruptStateError(what: string, state: string, why: string): BoxError {
  return new BoxError(`the saved state of ${what} is corrupt: ${why}`, {
    detail: state,
    suggestions: ['delete the snapshot and save a new one'],
  })
}

/**
 * A new QEMU resumed from a saved state over a new empty overlay on the frozen layer. The
 * caller has checked the record (checkStateFits) and stopped any QEMU using the overlay.
 */
export async function startFromState(options: StartFromStateOptions): Promise<StartedFromState> {
  const compat = await readStateCompat(options.state)
  await checkStateFits(compat, options)
  await checkStateFile(options.state, compat, options.what)
  options.signal?.throwIfAborted()
  await overlayOnLayer(options.files.overlay, options.layer, compat.diskVirtualSize)
  await options.onDiskReplaced?.()
  const launched = Date.now()
  const booted = await bootInstance({
    name: options.name,
    files: options.files,
    box: options.box,
    accel: options.accel,
    cpus: options.cpus,
    memoryMiB: options.memoryMiB,
    choice: compat.launch.choice,
    firmwareBoot: compat.launch.firmwareBoot,
    sshPort: options.sshPort,
    forwards: options.forwards,
    restrictNetwork: compat.launch.restrictNetwork,
    noNetwork: compat.launch.noNetwork,
    drives: options.drives,
    incoming: true,
  })
  let qmp: QmpClient | undefined
  try {
    qmp = await QmpClient.connect(options.files.qmpSocket)
    // Read alongside QEMU's load (the page cache serves both); checked before the guest runs.
    const checksum = sha256File(options.state)
    checksum.catch(() => {})
    await qmp.execute('migrate-incoming', {uri: `exec:cat ${shQuote(options.state)}`})
    try {
      await waitForMigration(qmp, 'loading the saved state', options.signal)
    } catch (error) {
      if (options.signal?.aborted) throw error
      throw corruptStateError(
        options.what,
        options.state,
        `QEMU could not load it (${(error as Error).message.replace(/^loading the saved state failed: ?/, '') || 'QEMU exited'})`,
      )
    }
    if ((await checksum) !== compat.state.sha256)
      throw corruptStateError(options.what, options.state, 'its checksum is not the one recorded at save')
    const overlayBytesBeforeRun = (await stat(options.files.overlay)).blocks * 512
    options.signal?.throwIfAborted()
    await qmp.execute('cont')
    return {booted, loadMs: Date.now() - launched, overlayBytesBeforeRun}
  } catch (error) {
    // No orphan: whatever went wrong (Ctrl-C included), the QEMU started here goes.
    await stopQemu({pidFile: options.files.pidFile, qmpSocket: options.files.qmpSocket, timeoutMs: 0, force: true})
    await rm(options.files.pidFile, {force: true})
    throw error
  } finally {
    qmp?.close()
  }
}
