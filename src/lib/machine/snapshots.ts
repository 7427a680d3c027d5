/**
 * `box snapshot save|restore|list|delete|push|pop`: named snapshots of a machine, as
 * Vagrant has them. A halted machine gets a disk snapshot; a running one its disk and its
 * running state (the guest only pauses). Restoring a running snapshot resumes the guest
 * where it was, then sets its clock from the host, reseeds its RNG, and reconnects ssh
 * (the old master connection died with the old QEMU) on ports chosen as `up` chooses them.
 * Every command holds the machine lock. The files are the provider's (snapshot-chain.ts).
 */
import {randomBytes} from 'node:crypto'
import {readFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {MachineHandle, Provider, ProviderSnapshots, SnapshotInfo, Started} from '../../providers/provider.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {formatBytes, formatDuration} from '../core/progress.js'
import {providerFor} from '../../providers/index.js'
import {lockMachine, machineDir, readRecord, writeRecord, type MachineContext, type MachineRecord} from './context.js'
import {closeSshMaster} from './keys.js'
import {sshTarget} from './ssh-session.js'
import {handleFor} from './up.js'
import {sshRun, waitForSsh, waitForSshListening} from './ssh.js'

/** Names as Vagrant allows them in practice, and safe anywhere box shows them. */
const SNAPSHOT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
/** `push` names its snapshots like Vagrant: push_<seconds>_<4 digits>. */
const PUSH_PREFIX = 'push_'

export function validateSnapshotName(name: string): void {
  if (!SNAPSHOT_NAME.test(name)) {
    throw new BoxError(
      `"${name}" is not a snapshot name: use letters, digits, ".", "_" and "-", starting with a letter or digit, at most 64`,
      {exitCode: ExitCode.USAGE},
    )
  }
}

interface Opened {
  stateDir: string
  provider: Provider
  snapshots: ProviderSnapshots
  record: MachineRecord
}

async function open(context: MachineContext, machine: ResolvedMachine): Promise<Opened> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const provider = providerFor(machine.provider, context.cacheDir)
  if (!provider.snapshots)
    throw new BoxError(`the ${provider.name} provider cannot take snapshots in this version of box`)
  const record = await readRecord(stateDir)
  if (!record || (await provider.state({stateDir})) === 'not_created') {
    throw new BoxError(`machine ${machine.name} is not created`, {
      suggestions: [`create it first: box up ${machine.name}`],
    })
  }
  return {stateDir, provider, snapshots: provider.snapshots, record}
}

async function withMachine<T>(
  context: MachineContext,
  machine: ResolvedMachine,
  work: (opened: Opened) => Promise<T>,
): Promise<T> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const release = await lockMachine(stateDir, machine.name)
  try {
    return await work(await open(context, machine))
  } finally {
    await release()
  }
}

async function handleOf(opened: Opened, machine: ResolvedMachine): Promise<MachineHandle> {
  const metadata = JSON.parse(await readFile(join(opened.record.box.path, 'metadata.json'), 'utf8'))
  return handleFor(opened.stateDir, machine, {path: opened.record.box.path, metadata})
}

export interface SavedSnapshot extends SnapshotInfo {
  machine: string
  saveMs: number
  pauseMs?: number
}

export async function saveSnapshot(
  context: MachineContext,
  machine: ResolvedMachine,
  name: string,
): Promise<SavedSnapshot> {
  validateSnapshotName(name)
  return withMachine(context, machine, async (opened) => {
    const handle = await handleOf(opened, machine)
    const running = (await opened.provider.state({stateDir: opened.stateDir})) === 'running'
    const stage = context.progress.stage(
      `${machine.name}: saving snapshot "${name}"${running ? ' (disk and running state)' : ' (disk)'}`,
    )
    const started = Date.now()
    try {
      const saved = await opened.snapshots.save(handle, name, {signal: context.signal})
      const saveMs = Date.now() - started
      stage.done(
        [
          saved.pauseMs === undefined ? undefined : `guest paused ${formatDuration(saved.pauseMs)}`,
          saved.stateBytes ? `state ${formatBytes(saved.stateBytes)}` : undefined,
        ]
          .filter(Boolean)
          .join(', '),
      )
      // The guest's clock stood still while it was paused.
      if (running)
        await setGuestClock(opened).catch((error) =>
          context.progress.warn(`${machine.name}: could not set the guest clock: ${(error as Error).message}`),
        )
      return {...saved, machine: machine.name, saveMs}
    } catch (error) {
      stage.fail()
      throw context.signal?.aborted ? context.signal.reason : error
    }
  })
}

export interface RestoredSnapshot {
  machine: string
  name: string
  kind: SnapshotInfo['kind']
  /** The machine runs again (running snapshots). */
  running: boolean
  sshPort?: number
  restoreMs: number
}

/** What `box snapshot restore` prints for one machine. */
export function restoredLine(restored: RestoredSnapshot): string {
  return `${restored.machine}: restored snapshot "${restored.name}"${restored.running ? `, running (ssh on 127.0.0.1:${restored.sshPort})` : ', halted'}`
}

export async function restoreSnapshot(
  context: MachineContext,
  machine: ResolvedMachine,
  name: string,
): Promise<RestoredSnapshot> {
  return withMachine(context, machine, (opened) => restoreLocked(context, machine, opened, name))
}

async function restoreLocked(
  context: MachineContext,
  machine: ResolvedMachine,
  opened: Opened,
  name: string,
  consume = false,
): Promise<RestoredSnapshot> {
  const handle = await handleOf(opened, machine)
  const stage = context.progress.stage(`${machine.name}: restoring snapshot "${name}"`)
  const begun = Date.now()
  try {
    // The old QEMU's ssh master goes with it (closed meanwhile, gone before a new one is made),
    // and so do the forwards forward_ports: auto added to it.
    const masterClosed = closeSshMaster(opened.provider.sshControlPath({stateDir: opened.stateDir}))
    // Only forward_ports: auto has a watcher (its module loads every provider: 0.1 s of a restore);
    // one left from an earlier Boxfile ends with the QEMU it watched.
    const autoForward = machine.forwardPorts === 'auto' ? await import('./auto-forward.js') : undefined
    await autoForward?.stopAutoForward(opened.stateDir)
    const restored = await opened.snapshots
      .restore(handle, name, {sshPort: opened.record.sshPort, signal: context.signal, consume})
      .finally(() => masterClosed)
    if (!restored.started) {
      stage.done('disk restored; the machine is halted (start it with box up)')
      return {machine: machine.name, name, kind: restored.kind, running: false, restoreMs: Date.now() - begun}
    }
    const record = await resumeGuest(context, machine, opened, handle, restored.started, restored.agent ?? false)
    // The restored guest's servers are found again by a watcher of the new QEMU.
    if (autoForward && restored.agent) await autoForward.startAutoForward(opened.stateDir, opened.provider.name)
    stage.done(`running again, ssh on 127.0.0.1:${record.sshPort}`)
    return {
      machine: machine.name,
      name,
      kind: restored.kind,
      running: true,
      sshPort: record.sshPort,
      restoreMs: Date.now() - begun,
    }
  } catch (error) {
    stage.fail()
    throw context.signal?.aborted ? context.signal.reason : error
  }
}

/**
 * A guest resumed from a saved state: its clock is where it was at save and its RNG state
 * is the saved one. Set both from the host (box-agent; ssh for boxes without it), then wait
 * for a new ssh connection.
 */
async function resumeGuest(
  context: MachineContext,
  machine: ResolvedMachine,
  opened: Opened,
  handle: MachineHandle,
  started: Started,
  agent: boolean,
): Promise<MachineRecord> {
  const record: MachineRecord = {...opened.record, sshPort: started.sshPort, forwardedPorts: started.forwardedPorts}
  await writeRecord(opened.stateDir, record)
  if (opened.record.sshPort && started.sshPort !== opened.record.sshPort)
    context.progress.warn(
      `${machine.name}: port ${opened.record.sshPort} is taken; ssh now on 127.0.0.1:${started.sshPort}`,
    )
  for (const forward of started.forwardedPorts) {
    const wanted = handle.forwardedPorts.find((p) => p.guest === forward.guest && p.protocol === forward.protocol)
    if (wanted && wanted.host !== forward.host)
      context.progress.warn(
        `${machine.name}: host port ${wanted.host} is taken; guest port ${forward.guest} is forwarded from ${forward.hostIp}:${forward.host}`,
      )
  }
  const withAgent = {...opened, record}
  const target = sshTarget(opened.stateDir, record, opened.provider)
  const waitOptions = {
    timeoutMs: 120_000,
    isAlive: started.isAlive,
    serialLog: started.serialLog,
    sshListening: started.sshListening,
    signal: context.signal,
    // The first command (box ssh) has a session of its own: none for the probe.
    masterOnly: true,
  }
  if (agent && opened.provider.askAgent) {
    // The RNG first: sshd seeds each connection's process from it. Then the agent is asked
    // whether sshd listens before it sets the clock (it answers one question at a time, and
    // the clock's `date` took 0.2 s after a restore), and the ssh login runs while it does.
    await opened.provider.askAgent({stateDir: opened.stateDir}, `reseed ${randomBytes(64).toString('hex')}`, {
      timeoutMs: 10_000,
    })
    const listening = waitForSshListening(waitOptions)
    const clockSet = setGuestClock(withAgent)
    await Promise.all([listening.then((answer) => waitForSsh(target, {...waitOptions, listening: answer})), clockSet])
    return record
  }
  // Without the agent, over ssh once it answers.
  await waitForSsh(target, waitOptions)
  await sshRun(target, ['sudo', 'date', '-u', '-s', `@${hostEpoch()}`], {purpose: 'setting the guest clock'})
  // Mixed into the pool (no forced reseed without the agent's ioctl).
  await sshRun(target, ['sudo', 'dd', 'of=/dev/urandom', 'status=none'], {
    input: randomBytes(64).toString('hex'),
    purpose: 'adding host randomness to the guest',
  })
  return record
}

/** The host's time in seconds since the epoch, as box-agent's set-clock takes it. */
function hostEpoch(): string {
  return (Date.now() / 1000).toFixed(3)
}

async function setGuestClock(opened: Opened): Promise<void> {
  if (opened.provider.askAgent) {
    await opened.provider.askAgent({stateDir: opened.stateDir}, `set-clock ${hostEpoch()}`, {timeoutMs: 10_000})
    return
  }
  await sshRun(
    sshTarget(opened.stateDir, opened.record, opened.provider),
    ['sudo', 'date', '-u', '-s', `@${hostEpoch()}`],
    {purpose: 'setting the guest clock'},
  )
}

export interface MachineSnapshots {
  machine: string
  snapshots: SnapshotInfo[]
}

export async function listSnapshots(context: MachineContext, machine: ResolvedMachine): Promise<MachineSnapshots> {
  return withMachine(context, machine, async (opened) => ({
    machine: machine.name,
    snapshots: await opened.snapshots.list({stateDir: opened.stateDir}),
  }))
}

export interface DeletedSnapshot {
  machine: string
  name: string
  /** Its disk layer stays, unnamed, while the machine's disk builds on it. */
  layerKept: boolean
}

export async function deleteSnapshot(
  context: MachineContext,
  machine: ResolvedMachine,
  name: string,
): Promise<DeletedSnapshot> {
  return withMachine(context, machine, async (opened) => ({
    machine: machine.name,
    name,
    ...(await opened.snapshots.delete({stateDir: opened.stateDir}, name)),
  }))
}

/** `push`: a snapshot with a generated name, for `pop` to go back to. */
export async function pushSnapshot(context: MachineContext, machine: ResolvedMachine): Promise<SavedSnapshot> {
  const name = `${PUSH_PREFIX}${Math.floor(Date.now() / 1000)}_${String(randomBytes(2).readUInt16BE() % 10_000).padStart(4, '0')}`
  return saveSnapshot(context, machine, name)
}

/** `pop`: restore the newest pushed snapshot and delete it: the chain is as long as before its push. */
export async function popSnapshot(context: MachineContext, machine: ResolvedMachine): Promise<RestoredSnapshot> {
  return withMachine(context, machine, async (opened) => {
    const pushed = (await opened.snapshots.list({stateDir: opened.stateDir})).filter((snapshot) =>
      snapshot.name.startsWith(PUSH_PREFIX),
    )
    const newest = pushed.sort((a, b) => a.createdAt.localeCompare(b.createdAt)).at(-1)
    if (!newest)
      throw new BoxError(`machine ${machine.name} has no pushed snapshot to pop`, {
        suggestions: [`push one first: box snapshot push ${machine.name}`],
      })
    return restoreLocked(context, machine, opened, newest.name, true)
  })
}
