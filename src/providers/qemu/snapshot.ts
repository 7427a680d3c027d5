/**
 * Saving a running QEMU machine and starting a new QEMU from what was saved (DESIGN §8,
 * measured under TCG with QEMU 7.2: there is no `file:` migration URI; `unix:` and `exec:` work).
 *
 * Save, with the guest paused only: a new empty overlay is made and opened by QEMU while the
 * guest still runs; QMP `stop`; QEMU is switched (blockdev-snapshot) onto that overlay, so
 * the file under it keeps exactly the disk the saved RAM knows and is frozen where it is;
 * `migrate` streams RAM and devices, without QEMU's speed limit, over a Unix socket to box,
 * which hashes them as it writes `STATE.partial` (state-stream.ts); `cont` as soon as QEMU is
 * done. A failed or interrupted save removes the `.partial` before the guest runs again (a
 * full disk gets its space back first). Then the compatibility record with the checksum is
 * written, the file synced and renamed into place: no state file is half-written.
 *
 * Start from a state: a new empty overlay over the frozen layer (or, for a pop, the layer
 * itself), QEMU with the machine's argv plus `-incoming defer`, QMP `migrate-incoming` on a
 * Unix socket box sends the file into, hashing it on the way, then `cont` only when QEMU
 * loaded it and the checksum is the one recorded. A state QEMU cannot load, or whose
 * checksum is wrong, ends with that QEMU killed: no orphan.
 */
import {open, readFile, rename, rm, stat, writeFile} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'
import {join} from 'node:path'

import {BoxError} from '../../lib/core/errors.js'
import {run} from '../../lib/core/exec.js'
import type {ForwardedPort} from '../../lib/core/ports.js'
import {socketPath} from '../../lib/core/short-socket.js'
import type {Accel, HostQemu} from './accel.js'
import type {BoxImage, ExtraDrive} from '../provider.js'
import {bootInstance, launchSpecFor, type Booted, type InstanceFiles, type LaunchRecord} from './instance.js'
import {killQemu} from './process.js'
import {QmpClient} from './qmp.js'
import {receiveState, sendState, type StateReceiver, type StreamedState} from './state-stream.js'
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

/**
 * Poll until a migration (outgoing or incoming) is over; rejects with QEMU's reason, or at
 * once with the error of `stream` (box's end of it) when that fails first.
 */
async function waitForMigration(
  qmp: QmpClient,
  what: string,
  signal?: AbortSignal,
  stream?: Promise<unknown>,
): Promise<void> {
  let streamError: unknown
  stream?.catch((error: unknown) => {
    streamError = error
  })
  for (;;) {
    if (streamError !== undefined) {
      await qmp.execute('migrate_cancel').catch(() => {})
      throw streamError
    }
    const info = await qmp.execute<MigrationStatus>('query-migrate')
    if (info.status === 'completed') return
    if (info.status === 'failed' || info.status === 'cancelled') {
      // A broken stream is seen by QEMU as a write error: box's own error says what broke.
      if (stream) await Promise.race([stream.catch(() => {}), sleep(200)])
      if (streamError !== undefined) throw streamError
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

/** QEMU's default migration speed limit (128 MiB/s) is for a guest that goes on running; this one is paused. */
const UNLIMITED_BANDWIDTH = 1 << 30 // bytes/s: above what a copy to the page cache reaches

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
  let receiver: StateReceiver | undefined
  let streamed: StreamedState
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
    await qmp.execute('migrate-set-parameters', {'max-bandwidth': UNLIMITED_BANDWIDTH})
    receiver = await receiveState(socketPath(files.stateDir, 'migration.sock'), partial)
    const receiving = receiver
    const overlay = await prepareOverlay(qmp, frozen, options.next, diskVirtualSize)
    const paused = Date.now()
    let switched = false
    try {
      await qmp.execute('stop')
      // From here the guest's writes go to the new overlay: the file under it keeps the disk the saved RAM knows.
      await qmp.execute('blockdev-snapshot', {node: drive['node-name'], overlay})
      switched = true
      await options.onFrozen?.(frozen)
      await qmp.execute('migrate', {uri: receiving.uri})
      await waitForMigration(qmp, 'saving the running state', options.signal, receiving.done)
    } catch (error) {
      if (!switched) await dropOverlay(qmp, overlay, options.next)
      // Its space back before the guest runs: a guest write into a full disk would pause it again.
      await receiving.close()
      await rm(partial, {force: true})
      throw error
    } finally {
      // The guest runs on whatever happened (a failed migration included).
      await qmp.execute('cont')
      pauseMs = Date.now() - paused
    }
    // QEMU is done; box may still be writing its last megabytes while the guest runs.
    streamed = await receiving.done
  } catch (error) {
    await receiver?.close()
    await rm(partial, {force: true})
    if (options.signal?.aborted) throw options.signal.reason
    throw writeErrorOf(error, partial) ?? error
  } finally {
    await receiver?.close()
    qmp.close()
  }
  try {
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
      state: streamed,
      savedAt: new Date().toISOString(),
    }
    options.signal?.throwIfAborted()
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
    if (options.signal?.aborted) throw options.signal.reason
    throw writeErrorOf(error, partial) ?? error
  }
}

/** A failed write of the state file (a full disk, a quota), said as such; undefined for other errors. */
function writeErrorOf(error: unknown, file: string): BoxError | undefined {
  const code = (error as NodeJS.ErrnoException | undefined)?.code
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG' || code === 'EIO') {
    const why = {
      ENOSPC: 'no space left on the device',
      EDQUOT: 'the disk quota is exceeded',
      EFBIG: 'the file is too large for the file system',
      EIO: 'an I/O error',
    }[code]
    return new BoxError(
      `could not write the saved state (${file}): ${why}; nothing was kept, the machine goes on running`,
      {
        cause: error,
        suggestions: ['free space where the machine lives (df -h .box), then save again'],
      },
    )
  }
  if (error instanceof BoxError && /saving the running state failed/.test(error.message))
    return new BoxError(error.message, {
      cause: error,
      suggestions: ['check the free space where the machine lives (df -h .box)'],
    })
  return undefined
}

/**
 * The overlay the guest goes on writing to, over the file QEMU runs on: made and opened by
 * QEMU while the guest still runs (nothing uses it yet); `switchOverlay` puts it on top once
 * the guest is stopped. The file under it is then frozen where it is. It must not be renamed
 * while this QEMU lives: QEMU reopens a backing file by its path (read-only at the switch,
 * again when a migration hands the disks back), and a renamed path would give it another
 * file (snapshot-chain.ts moves files only while no QEMU runs).
 */
async function prepareOverlay(qmp: QmpClient, current: string, next: string, virtualSize: number): Promise<string> {
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
    return node
  } catch (error) {
    await dropOverlay(qmp, node, next)
    throw error
  }
}

async function dropOverlay(qmp: QmpClient, node: string, next: string): Promise<void> {
  await qmp.execute('blockdev-del', {'node-name': node}).catch(() => {})
  await rm(next, {force: true})
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
  /** The machine's disk already is `layer` itself (a pop takes the snapshot's layer over): no overlay is made. */
  diskIsLayer?: boolean
  /** The record, already read and checked by the caller (checkStateFits, checkStateFile). */
  checked?: StateCompat
  signal?: AbortSignal
}

export interface StartedFromState {
  booted: Booted
  /** From launching QEMU to the guest running. */
  loadMs: number
  /** Bytes the new overlay took on disk before the guest ran. */
  overlayBytesBeforeRun: number
}

/**
 * The machine a saved state is started as: the check before a restore and the restore
 * itself must describe the same one, or a state would pass the check and boot otherwise.
 */
function machineFromState(
  options: Pick<StartFromStateOptions, 'name' | 'files' | 'box' | 'accel' | 'cpus' | 'memoryMiB' | 'drives'>,
  compat: StateCompat,
) {
  return {
    name: options.name,
    files: options.files,
    box: options.box,
    accel: options.accel,
    cpus: options.cpus,
    memoryMiB: options.memoryMiB,
    drives: options.drives,
    choice: compat.launch.choice,
    firmwareBoot: compat.launch.firmwareBoot,
    restrictNetwork: compat.launch.restrictNetwork,
    noNetwork: compat.launch.noNetwork,
  }
}

/** The record's refusal for this machine, or nothing when the state may load. */
export async function checkStateFits(
  compat: StateCompat,
  options: Omit<
    StartFromStateOptions,
    'layer' | 'state' | 'signal' | 'sshPort' | 'onDiskReplaced' | 'diskIsLayer' | 'checked'
  >,
): Promise<void> {
  const spec = launchSpecFor(machineFromState(options, compat), 0, options.forwards)
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
 * The state reaches QEMU through box (state-stream.ts), hashed on the way: the guest runs
 * only once QEMU has loaded it and the checksum is the one recorded at save.
 */
export async function startFromState(options: StartFromStateOptions): Promise<StartedFromState> {
  let compat = options.checked
  if (!compat) {
    compat = await readStateCompat(options.state)
    await checkStateFits(compat, options)
    await checkStateFile(options.state, compat, options.what)
  }
  options.signal?.throwIfAborted()
  const diskBytes = () => stat(options.files.overlay).then((info) => info.blocks * 512)
  let bytesBefore = 0
  if (options.diskIsLayer) bytesBefore = await diskBytes()
  else await overlayOnLayer(options.files.overlay, options.layer, compat.diskVirtualSize)
  await options.onDiskReplaced?.()
  const launched = Date.now()
  const booted = await bootInstance({
    ...machineFromState(options, compat),
    sshPort: options.sshPort,
    forwards: options.forwards,
    incoming: true,
  })
  let qmp: QmpClient | undefined
  const socket = socketPath(options.files.stateDir, 'migration.sock')
  try {
    qmp = await QmpClient.connect(options.files.qmpSocket)
    await qmp.execute('migrate-incoming', {uri: `unix:${socket}`})
    const sending = sendState(socket, options.state, options.signal)
    sending.catch(() => {})
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
    // QEMU stops reading at the stream's end marker: a file that goes on after it was not saved so.
    const sent = await sending.catch((error: Error) => {
      throw corruptStateError(options.what, options.state, `QEMU did not take all of it (${error.message})`)
    })
    if (sent.sha256 !== compat.state.sha256 || sent.bytes !== compat.state.bytes)
      throw corruptStateError(options.what, options.state, 'its checksum is not the one recorded at save')
    const overlayBytesBeforeRun = (await diskBytes()) - bytesBefore
    options.signal?.throwIfAborted()
    await qmp.execute('cont')
    return {booted, loadMs: Date.now() - launched, overlayBytesBeforeRun}
  } catch (error) {
    // No orphan: whatever went wrong (Ctrl-C included), the QEMU started here goes.
    await killQemu(options.files)
    throw error
  } finally {
    qmp?.close()
    await rm(socket, {force: true})
  }
}
