/**
 * Named snapshots of one QEMU machine: frozen qcow2 layers in `<state dir>/snapshots/`,
 * each backed by the one before it (the first by the box image), the machine's disk.qcow2
 * an overlay on the newest one saved or restored. A running snapshot also has its state
 * file and compatibility record there. `index.json` names the snapshots and says which
 * layer each layer and the disk build on, so no qemu-img call is needed to list them.
 *
 * Deleting a snapshot others build on is refused (naming them); a snapshot only the
 * machine's own disk builds on loses its name and state, and its layer stays (unnamed)
 * until the disk no longer builds on it: nothing is merged, the box image is never touched.
 */
import {randomBytes} from 'node:crypto'
import {mkdir, readFile, readdir, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError} from '../../lib/core/errors.js'
import type {MachineHandle, ProviderSnapshots, SnapshotInfo, SnapshotRestored, SnapshotSaved, Started} from '../provider.js'
import {resolveAccel} from './accel.js'
import {instanceFiles} from './instance.js'
import {isAlive, runningPid, stopQemu} from './process.js'
import {checkStateFile, checkStateFits, compatFileOf, freezeHaltedDisk, hostQemu, overlayOnLayer, readStateCompat, saveRunningState, startFromState} from './snapshot.js'

interface SnapshotEntry {
  name: string
  id: string
  kind: 'disk' | 'running'
  createdAt: string
  /** File name of its frozen layer in the snapshots folder. */
  layer: string
  /** File name of its state file (running snapshots). */
  state?: string
}

interface SnapshotIndex {
  format: 1
  snapshots: SnapshotEntry[]
  /** Each layer's backing layer; null: the box image. */
  layers: Record<string, string | null>
  /** The layer the machine's disk.qcow2 builds on; null: the box image. */
  diskParent: string | null
}

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
  for (let current = layer; current !== null && current !== undefined && !chain.includes(current); current = index.layers[current] ?? null) chain.push(current)
  return chain
}

function findEntry(index: SnapshotIndex, name: string, machine: string): SnapshotEntry {
  const entry = index.snapshots.find((snapshot) => snapshot.name === name)
  if (!entry) {
    const known = index.snapshots.map((snapshot) => snapshot.name)
    throw new BoxError(`machine ${machine} has no snapshot named "${name}"`, {suggestions: [known.length > 0 ? `its snapshots: ${known.join(', ')}` : 'it has no snapshots yet: box snapshot save']})
  }
  return entry
}

/** Remove layers nothing needs any more (and state files a crash left as `.partial`). */
async function collectGarbage(stateDir: string, index: SnapshotIndex): Promise<void> {
  const needed = new Set([...index.snapshots.flatMap((snapshot) => ancestry(index, snapshot.layer)), ...ancestry(index, index.diskParent)])
  for (const layer of Object.keys(index.layers)) {
    if (needed.has(layer)) continue
    await rm(join(snapshotsDir(stateDir), layer), {force: true})
    delete index.layers[layer]
  }
  const names = await readdir(snapshotsDir(stateDir)).catch(() => [] as string[])
  for (const name of names.filter((file) => file.endsWith('.partial'))) await rm(join(snapshotsDir(stateDir), name), {force: true})
}

const sizeOf = (file: string) => stat(file).then((info) => info.blocks * 512, () => undefined)

export class QemuSnapshots implements ProviderSnapshots {
  constructor(private readonly cacheDir: string) {}

  async list(machine: Pick<MachineHandle, 'stateDir'>): Promise<SnapshotInfo[]> {
    const index = await readIndex(machine.stateDir)
    const byLayer = new Map(index.snapshots.map((snapshot) => [snapshot.layer, snapshot.name]))
    const nearestNamed = (layer: string | null) => ancestry(index, layer).map((candidate) => byLayer.get(candidate)).find((name) => name !== undefined)
    const current = nearestNamed(index.diskParent)
    const dir = snapshotsDir(machine.stateDir)
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
    const index = await readIndex(machine.stateDir)
    if (index.snapshots.some((snapshot) => snapshot.name === name)) {
      throw new BoxError(`machine ${machine.name} already has a snapshot named "${name}"`, {suggestions: [`delete it first (box snapshot delete ${machine.name} ${name}) or choose another name`]})
    }
    const dir = snapshotsDir(machine.stateDir)
    await mkdir(dir, {recursive: true, mode: 0o700})
    const id = randomBytes(6).toString('hex')
    const layer = `${id}.qcow2`
    const entry: SnapshotEntry = {name, id, kind: 'disk', createdAt: new Date().toISOString(), layer}
    const recordLayer = async () => {
      index.layers[layer] = index.diskParent
      index.diskParent = layer
      await writeIndex(machine.stateDir, index)
    }
    let pauseMs: number | undefined
    if (await runningPid(files.pidFile, files.qmpSocket)) {
      const {accel} = await resolveAccel({cacheDir: this.cacheDir})
      const state = `${id}.state`
      const saved = await saveRunningState({
        files,
        box: machine.box,
        accel,
        cpus: machine.cpus,
        memoryMiB: machine.memoryMiB,
        qemu: await hostQemu(this.cacheDir),
        layer: join(dir, layer),
        state: join(dir, state),
        onFrozen: recordLayer,
        signal: options.signal,
      })
      pauseMs = saved.pauseMs
      Object.assign(entry, {kind: 'running', state})
    } else {
      await freezeHaltedDisk(files.overlay, join(dir, layer))
      await recordLayer()
    }
    index.snapshots.push(entry)
    await writeIndex(machine.stateDir, index)
    const info = (await this.list(machine)).find((snapshot) => snapshot.name === name)!
    return {...info, pauseMs}
  }

  async restore(machine: MachineHandle, name: string, options: {sshPort?: number; signal?: AbortSignal}): Promise<SnapshotRestored> {
    const files = instanceFiles(machine.stateDir)
    const index = await readIndex(machine.stateDir)
    const entry = findEntry(index, name, machine.name)
    const dir = snapshotsDir(machine.stateDir)
    const layer = join(dir, entry.layer)
    const what = `snapshot "${name}" of machine ${machine.name}`
    let started: Started | undefined
    let agent: boolean | undefined
    if (entry.kind === 'running') {
      const state = join(dir, entry.state!)
      const {accel} = await resolveAccel({cacheDir: this.cacheDir})
      const qemu = await hostQemu(this.cacheDir)
      const common = {name: machine.name, files, box: machine.box, accel, cpus: machine.cpus, memoryMiB: machine.memoryMiB, forwards: machine.forwardedPorts, qemu, what}
      // Refused before the running machine is touched.
      const compat = await readStateCompat(state)
      await checkStateFits(compat, common)
      await checkStateFile(state, compat, what)
      await stopQemu({pidFile: files.pidFile, qmpSocket: files.qmpSocket, timeoutMs: 0, force: true})
      const result = await startFromState({
        ...common,
        sshPort: options.sshPort,
        layer,
        state,
        signal: options.signal,
        onDiskReplaced: async () => {
          index.diskParent = entry.layer
          await writeIndex(machine.stateDir, index)
        },
      })
      const {booted} = result
      started = {sshPort: booted.sshPort, forwardedPorts: booted.forwards, serialLog: files.serialLog, isAlive: () => isAlive(booted.pid)}
      agent = booted.agent
    } else {
      await stopQemu({pidFile: files.pidFile, qmpSocket: files.qmpSocket, timeoutMs: 0, force: true})
      await rm(files.pidFile, {force: true})
      await overlayOnLayer(files.overlay, layer)
    }
    index.diskParent = entry.layer
    await collectGarbage(machine.stateDir, index)
    await writeIndex(machine.stateDir, index)
    return {kind: entry.kind, started, agent}
  }

  async delete(machine: Pick<MachineHandle, 'stateDir'>, name: string): Promise<{layerKept: boolean}> {
    const index = await readIndex(machine.stateDir)
    const entry = findEntry(index, name, 'this machine')
    const dependents = index.snapshots.filter((other) => other !== entry && ancestry(index, other.layer).includes(entry.layer)).map((other) => other.name)
    if (dependents.length > 0) {
      throw new BoxError(`snapshot "${name}" cannot be deleted: ${dependents.map((other) => `"${other}"`).join(', ')} ${dependents.length === 1 ? 'builds' : 'build'} on it`, {
        suggestions: [`delete ${dependents.length === 1 ? 'that one' : 'those'} first (newest first), then this one`],
      })
    }
    const dir = snapshotsDir(machine.stateDir)
    index.snapshots = index.snapshots.filter((other) => other !== entry)
    // The index first: a crash after it leaves files that the next collection removes, never a name without files.
    await writeIndex(machine.stateDir, index)
    if (entry.state) {
      await rm(join(dir, entry.state), {force: true})
      await rm(compatFileOf(join(dir, entry.state)), {force: true})
    }
    const layerKept = ancestry(index, index.diskParent).includes(entry.layer)
    await collectGarbage(machine.stateDir, index)
    await writeIndex(machine.stateDir, index)
    return {layerKept}
  }
}
