/**
 * Named snapshots of one QEMU machine: frozen qcow2 layers in `<state dir>/snapshots/`,
 * each backed by the one before it (the first by the box image), the machine's disk.qcow2
 * an overlay on the newest one saved or restored. A running snapshot also has its state
 * file and compatibility record there. `index.json` names the snapshots and says which
 * layer each layer and the disk build on, so no qemu-img call is needed to list them.
 *
 * A running QEMU's files are never renamed (QEMU reopens backing files by path): a save
 * while running freezes the file QEMU runs on where it is, disk.qcow2 included, and QEMU
 * goes on on a new file the index calls `active`. Once no QEMU runs (halt, the next start,
 * a restore) `settleDisk` moves the frozen disk.qcow2 into snapshots/, rewrites the backing
 * path of what builds on it (`qemu-img rebase -u`, a header edit), and renames the active
 * file to disk.qcow2, so at rest disk.qcow2 is always the machine's disk.
 *
 * Deleting a snapshot others build on is refused (naming them); a snapshot only the
 * machine's own disk builds on loses its name and state, and its layer stays (unnamed)
 * until the disk no longer builds on it: nothing is merged, the box image is never touched.
 */
import {randomBytes} from 'node:crypto'
import {mkdir, readFile, readdir, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join, relative} from 'node:path'

import {BoxError} from '../../lib/core/errors.js'
import {run} from '../../lib/core/exec.js'
import type {MachineHandle, ProviderSnapshots, SnapshotInfo, SnapshotRestored, SnapshotSaved} from '../provider.js'
import {hostQemu, resolveAccel} from './accel.js'
import {instanceFiles} from './instance.js'
import {isAlive, killQemu, runningPid} from './process.js'
import {
  checkStateFile,
  checkStateFits,
  compatFileOf,
  freezeHaltedDisk,
  overlayOnLayer,
  readStateCompat,
  saveRunningState,
  startFromState,
} from './snapshot.js'

interface SnapshotEntry {
  name: string
  id: string
  kind: 'disk' | 'running'
  createdAt: string
  /** Its frozen layer, relative to the state dir. */
  layer: string
  /** Its state file, relative to the state dir (running snapshots). */
  state?: string
}

interface SnapshotIndex {
  format: 1
  snapshots: SnapshotEntry[]
  /** Each layer (relative path) and the layer it builds on; null: the box image. */
  layers: Record<string, string | null>
  /** The layer the machine's disk builds on; null: the box image. */
  diskParent: string | null
  /** The file the running QEMU writes to when it is not disk.qcow2 (after a save while running). */
  active?: string
}

const DISK = 'disk.qcow2'

export function snapshotsDir(stateDir: string): string {
  return join(stateDir, 'snapshots')
}

const indexFile = (stateDir: string) => join(snapshotsDir(stateDir), 'index.json')

async function readIndex(stateDir: string): Promise<SnapshotIndex> {
  try {
    return JSON.parse(await readFile(indexFile(stateDir), 'utf8')) as SnapshotIndex
  } catch {
    return {format: 1, snapshots: [], layers: {}, diskParent: null}
  }
}

async function writeIndex(stateDir: string, index: SnapshotIndex): Promise<void> {
  await mkdir(snapshotsDir(stateDir), {recursive: true, mode: 0o700})
  const target = indexFile(stateDir)
  await writeFile(`${target}.tmp`, `${JSON.stringify(index, null, 2)}\n`, {mode: 0o600})
  await rename(`${target}.tmp`, target)
}

/** `layer` and every layer under it, nearest first. */
function ancestry(index: SnapshotIndex, layer: string | null): string[] {
  const chain: string[] = []
  for (
    let current = layer;
    current !== null && current !== undefined && !chain.includes(current);
    current = index.layers[current] ?? null
  )
    chain.push(current)
  return chain
}

/** The snapshots that build on `entry` (its layer is in their ancestry): it cannot be deleted while they exist. */
function dependentsOf(index: SnapshotIndex, entry: SnapshotEntry): string[] {
  return index.snapshots
    .filter((other) => other !== entry && ancestry(index, other.layer).includes(entry.layer))
    .map((other) => other.name)
}

function dependedOnError(name: string, verb: 'deleted' | 'popped', dependents: string[]): BoxError {
  return new BoxError(
    `snapshot "${name}" cannot be ${verb}: ${dependents.map((other) => `"${other}"`).join(', ')} ${dependents.length === 1 ? 'builds' : 'build'} on it`,
    {suggestions: [`delete ${dependents.length === 1 ? 'that one' : 'those'} first (newest first), then this one`]},
  )
}

function findEntry(index: SnapshotIndex, name: string, machine: string): SnapshotEntry {
  const entry = index.snapshots.find((snapshot) => snapshot.name === name)
  if (!entry) {
    const known = index.snapshots.map((snapshot) => snapshot.name)
    throw new BoxError(`machine ${machine} has no snapshot named "${name}"`, {
      suggestions: [
        known.length > 0 ? `its snapshots: ${known.join(', ')}` : 'it has no snapshots yet: box snapshot save',
      ],
    })
  }
  return entry
}

/** Remove layers nothing needs any more (and state files a crash left as `.partial`). */
async function collectGarbage(stateDir: string, index: SnapshotIndex): Promise<void> {
  const needed = new Set([
    ...index.snapshots.flatMap((snapshot) => ancestry(index, snapshot.layer)),
    ...ancestry(index, index.diskParent),
  ])
  for (const layer of Object.keys(index.layers)) {
    if (needed.has(layer) || layer === (index.active ?? DISK)) continue
    await rm(join(stateDir, layer), {force: true})
    delete index.layers[layer]
  }
  // And state files no snapshot names (a pop or delete cut short after the index was written).
  const states = new Set(index.snapshots.flatMap((snapshot) => (snapshot.state ? [snapshot.state] : [])))
  const names = await readdir(snapshotsDir(stateDir)).catch(() => [] as string[])
  for (const name of names) {
    const state = `snapshots/${name.replace(/\.json$/, '')}`
    if (name.endsWith('.partial') || (/\.state(\.json)?$/.test(name) && !states.has(state)))
      await rm(join(snapshotsDir(stateDir), name), {force: true})
  }
}

/**
 * With no QEMU running: make disk.qcow2 the machine's disk again after saves while it ran
 * (see the top of this file). Each step is written to the index before the next.
 */
export async function settleDisk(stateDir: string): Promise<void> {
  const index = await readIndex(stateDir)
  if (!index.active || index.active === DISK) return
  if (DISK in index.layers) {
    const moved = `snapshots/${randomBytes(6).toString('hex')}.qcow2`
    const children = [
      ...Object.keys(index.layers).filter((layer) => index.layers[layer] === DISK),
      ...(index.diskParent === DISK ? [index.active] : []),
    ]
    await rename(join(stateDir, DISK), join(stateDir, moved))
    try {
      for (const child of children) {
        await run(
          'qemu-img',
          ['rebase', '-q', '-u', '-F', 'qcow2', '-b', join(stateDir, moved), join(stateDir, child)],
          {purpose: 'pointing a snapshot layer at its moved backing file'},
        )
      }
    } catch (error) {
      // Back where the index says it is (a child already rebased points at a path that is gone, and is redone next time).
      await rename(join(stateDir, moved), join(stateDir, DISK))
      throw error
    }
    index.layers[moved] = index.layers[DISK]!
    delete index.layers[DISK]
    for (const layer of Object.keys(index.layers)) if (index.layers[layer] === DISK) index.layers[layer] = moved
    for (const snapshot of index.snapshots) if (snapshot.layer === DISK) snapshot.layer = moved
    if (index.diskParent === DISK) index.diskParent = moved
    await writeIndex(stateDir, index)
  }
  await rename(join(stateDir, index.active), join(stateDir, DISK))
  delete index.active
  await writeIndex(stateDir, index)
}

/** The frozen layer the machine's disk builds on (the last snapshot saved or restored); undefined: the box image. */
export async function diskParentLayer(stateDir: string): Promise<string | undefined> {
  const {diskParent} = await readIndex(stateDir)
  return diskParent === null ? undefined : join(stateDir, diskParent)
}

const sizeOf = (file: string) =>
  stat(file).then(
    (info) => info.blocks * 512,
    () => undefined,
  )

export class QemuSnapshots implements ProviderSnapshots {
  constructor(private readonly cacheDir: string) {}

  async list(machine: Pick<MachineHandle, 'stateDir'>): Promise<SnapshotInfo[]> {
    const index = await readIndex(machine.stateDir)
    const byLayer = new Map(index.snapshots.map((snapshot) => [snapshot.layer, snapshot.name]))
    const nearestNamed = (layer: string | null) =>
      ancestry(index, layer)
        .map((candidate) => byLayer.get(candidate))
        .find((name) => name !== undefined)
    const current = nearestNamed(index.diskParent)
    const dir = machine.stateDir
    return Promise.all(
      index.snapshots.map(async (snapshot) => ({
        name: snapshot.name,
        kind: snapshot.kind,
        createdAt: snapshot.createdAt,
        parent: nearestNamed(index.layers[snapshot.layer] ?? null),
        current: snapshot.name === current,
        diskBytes: await sizeOf(join(dir, snapshot.layer)),
        stateBytes: snapshot.state ? await sizeOf(join(dir, snapshot.state)) : undefined,
      })),
    )
  }

  async save(machine: MachineHandle, name: string, options: {signal?: AbortSignal}): Promise<SnapshotSaved> {
    const files = instanceFiles(machine.stateDir)
    const running = (await runningPid(files.pidFile, files.qmpSocket)) !== undefined
    if (!running) await settleDisk(machine.stateDir)
    const index = await readIndex(machine.stateDir)
    if (index.snapshots.some((snapshot) => snapshot.name === name)) {
      throw new BoxError(`machine ${machine.name} already has a snapshot named "${name}"`, {
        suggestions: [`delete it first (box snapshot delete ${machine.name} ${name}) or choose another name`],
      })
    }
    await mkdir(snapshotsDir(machine.stateDir), {recursive: true, mode: 0o700})
    const id = randomBytes(6).toString('hex')
    const entry: SnapshotEntry = {
      name,
      id,
      kind: 'disk',
      createdAt: new Date().toISOString(),
      layer: `snapshots/${id}.qcow2`,
    }
    let pauseMs: number | undefined
    if (running) {
      const {accel} = await resolveAccel({cacheDir: this.cacheDir})
      const next = `snapshots/${id}-next.qcow2`
      const state = `snapshots/${id}.state`
      const saved = await saveRunningState({
        files,
        box: machine.box,
        accel,
        cpus: machine.cpus,
        memoryMiB: machine.memoryMiB,
        qemu: await hostQemu(this.cacheDir),
        next: join(machine.stateDir, next),
        state: join(machine.stateDir, state),
        onFrozen: async (frozen) => {
          const layer = relative(machine.stateDir, frozen)
          if (layer.startsWith('..')) throw new BoxError(`QEMU runs on ${frozen}, outside the machine's folder`)
          entry.layer = layer
          index.layers[layer] = index.diskParent
          index.diskParent = layer
          index.active = next
          await writeIndex(machine.stateDir, index)
        },
        signal: options.signal,
      })
      pauseMs = saved.pauseMs
      Object.assign(entry, {kind: 'running', state})
    } else {
      await freezeHaltedDisk(files.overlay, join(machine.stateDir, entry.layer))
      index.layers[entry.layer] = index.diskParent
      index.diskParent = entry.layer
    }
    index.snapshots.push(entry)
    await writeIndex(machine.stateDir, index)
    const info = (await this.list(machine)).find((snapshot) => snapshot.name === name)!
    return {...info, pauseMs}
  }

  async restore(
    machine: MachineHandle,
    name: string,
    options: {sshPort?: number; signal?: AbortSignal; consume?: boolean},
  ): Promise<SnapshotRestored> {
    const files = instanceFiles(machine.stateDir)
    const before = await readIndex(machine.stateDir)
    const entry = findEntry(before, name, machine.name)
    const dir = machine.stateDir
    const what = `snapshot "${name}" of machine ${machine.name}`
    if (options.consume) {
      const dependents = dependentsOf(before, entry)
      if (dependents.length > 0) throw dependedOnError(name, 'popped', dependents)
    }
    if (entry.kind !== 'running') {
      // The disk the machine has now is dropped: no need to let its QEMU finish.
      await killQemu(files)
      const {index, layer, entry: settled} = await this.settled(machine.stateDir, name)
      if (options.consume) await this.takeOver(dir, index, settled)
      else {
        await overlayOnLayer(files.overlay, layer)
        index.diskParent = settled.layer
      }
      await collectGarbage(machine.stateDir, index)
      await writeIndex(machine.stateDir, index)
      return {kind: entry.kind}
    }
    const state = join(dir, entry.state!)
    const [{accel}, qemu] = await Promise.all([resolveAccel({cacheDir: this.cacheDir}), hostQemu(this.cacheDir)])
    const common = {
      name: machine.name,
      files,
      box: machine.box,
      accel,
      cpus: machine.cpus,
      memoryMiB: machine.memoryMiB,
      forwards: machine.forwardedPorts,
      qemu,
      what,
    }
    // Refused before the running machine is touched.
    const compat = await readStateCompat(state)
    await checkStateFits(compat, common)
    await checkStateFile(state, compat, what)
    await killQemu(files)
    const {index, layer, entry: settled} = await this.settled(machine.stateDir, name)
    // pop: the snapshot's own layer becomes the disk (the chain does not grow), given back if the load fails.
    const takenOver = options.consume ? await this.takeOver(dir, index, settled) : undefined
    let result: Awaited<ReturnType<typeof startFromState>>
    try {
      result = await startFromState({
        ...common,
        sshPort: options.sshPort,
        layer,
        state,
        checked: compat,
        diskIsLayer: takenOver !== undefined,
        signal: options.signal,
        onDiskReplaced: takenOver
          ? undefined
          : async () => {
              index.diskParent = settled.layer
              await writeIndex(machine.stateDir, index)
            },
      })
    } catch (error) {
      if (takenOver) await this.giveBack(dir, index, settled, takenOver, compat.diskVirtualSize)
      throw error
    }
    const {booted} = result
    if (takenOver) {
      await rm(state, {force: true})
      await rm(compatFileOf(state), {force: true})
    }
    await collectGarbage(machine.stateDir, index)
    await writeIndex(machine.stateDir, index)
    return {
      kind: entry.kind,
      started: {
        sshPort: booted.sshPort,
        forwardedPorts: booted.forwards,
        serialLog: files.serialLog,
        isAlive: () => isAlive(booted.pid),
      },
      agent: booted.agent,
    }
  }

  /**
   * With no QEMU running: the snapshot's layer becomes the machine's disk (what it had is
   * dropped) and the snapshot is deleted; the index says so first. Returns the layer's parent.
   */
  private async takeOver(
    stateDir: string,
    index: SnapshotIndex,
    entry: SnapshotEntry,
  ): Promise<{parent: string | null}> {
    const parent = index.layers[entry.layer] ?? null
    index.snapshots = index.snapshots.filter((other) => other !== entry)
    delete index.layers[entry.layer]
    index.diskParent = parent
    await writeIndex(stateDir, index)
    await rename(join(stateDir, entry.layer), join(stateDir, DISK))
    return {parent}
  }

  /** A takeOver undone (the state did not load): the layer and the snapshot are back, the disk a new overlay on it. */
  private async giveBack(
    stateDir: string,
    index: SnapshotIndex,
    entry: SnapshotEntry,
    taken: {parent: string | null},
    virtualSize: number,
  ): Promise<void> {
    await rename(join(stateDir, DISK), join(stateDir, entry.layer))
    index.layers[entry.layer] = taken.parent
    index.snapshots.push(entry)
    index.snapshots.sort((a, b) => a.createdAt.localeCompare(b.createdAt))
    await overlayOnLayer(join(stateDir, DISK), join(stateDir, entry.layer), virtualSize)
    index.diskParent = entry.layer
    await writeIndex(stateDir, index)
  }

  /** After the machine's QEMU stopped: the disk settled, the index and the snapshot's layer as they are now. */
  private async settled(
    stateDir: string,
    name: string,
  ): Promise<{index: SnapshotIndex; entry: SnapshotEntry; layer: string}> {
    await settleDisk(stateDir)
    const index = await readIndex(stateDir)
    const entry = findEntry(index, name, 'this machine')
    return {index, entry, layer: join(stateDir, entry.layer)}
  }

  async delete(machine: Pick<MachineHandle, 'stateDir'>, name: string): Promise<{layerKept: boolean}> {
    const index = await readIndex(machine.stateDir)
    const entry = findEntry(index, name, 'this machine')
    const dependents = dependentsOf(index, entry)
    if (dependents.length > 0) throw dependedOnError(name, 'deleted', dependents)
    const dir = machine.stateDir
    index.snapshots = index.snapshots.filter((other) => other !== entry)
    // The index first: a crash after it leaves files that the next collection removes, never a name without files.
    await writeIndex(machine.stateDir, index)
    if (entry.state) {
      await rm(join(dir, entry.state), {force: true})
      await rm(compatFileOf(join(dir, entry.state)), {force: true})
    }
    const layerKept = ancestry(index, index.diskParent).includes(entry.layer) || entry.layer === DISK
    await collectGarbage(machine.stateDir, index)
    await writeIndex(machine.stateDir, index)
    return {layerKept}
  }
}
