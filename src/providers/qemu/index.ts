import {rename, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError} from '../../lib/core/errors.js'
import {defaultCacheDir} from '../../lib/core/paths.js'
import type {ForwardedPort} from '../../lib/core/ports.js'
import {socketPath} from '../../lib/core/short-socket.js'
import type {
  HaltOptions,
  HostCheck,
  MachineHandle,
  MachineState,
  PackagedDisk,
  Provider,
  ProviderRunningStates,
  StartOptions,
  Started,
} from '../provider.js'
import {hostQemu, resolveAccel} from './accel.js'
import {AgentRefusal, askAgent} from './agent.js'
import {GUEST_SSH_PORT, bootInstance, createOverlay, instanceFiles, type Booted} from './instance.js'
import {QemuSnapshots, diskParentLayer, settleDisk, snapshotsDir} from './snapshot-chain.js'
import {saveRunningState, startFromState} from './snapshot.js'
import {isAlive, killQemu, runningPid, stopQemu} from './process.js'
import {hostfwd} from './argv.js'
import {QmpClient} from './qmp.js'
import {layoutFingerprint} from './state-compat.js'
import {access} from 'node:fs/promises'

/** The files of a running state saved for fresh workers: the frozen disk, the state and its record (`state.json`). */
export function readyStateFiles(dir: string): {layer: string; state: string} {
  return {layer: join(dir, 'disk.qcow2'), state: join(dir, 'state')}
}

/** Machines as QEMU processes: a qcow2 overlay, user-mode networking, QMP for control. */
export class QemuProvider implements Provider {
  readonly name = 'qemu'

  constructor(private readonly cacheDir = defaultCacheDir()) {}

  async create(machine: MachineHandle): Promise<void> {
    await createOverlay(machine.box, instanceFiles(machine.stateDir).overlay)
  }

  /** Host-side resnap: a new empty overlay on what the old one built on (the box image, or the last snapshot). */
  async resetDisk(machine: MachineHandle): Promise<void> {
    const files = instanceFiles(machine.stateDir)
    await settleDisk(machine.stateDir)
    const fresh = `${files.overlay}.fresh`
    await rm(fresh, {force: true})
    await createOverlay(machine.box, fresh, await diskParentLayer(machine.stateDir))
    // rename(2) over the old one: a crash leaves either disk, never none.
    await rename(fresh, files.overlay)
  }

  async start(machine: MachineHandle, options: StartOptions): Promise<Started> {
    const files = instanceFiles(machine.stateDir)
    // After a snapshot saved while it ran, disk.qcow2 becomes its disk again.
    await settleDisk(machine.stateDir)
    const {accel} = await resolveAccel({cacheDir: this.cacheDir})
    options.signal?.throwIfAborted()
    const booted = await bootInstance({
      name: machine.name,
      files,
      box: machine.box,
      accel,
      cpus: machine.cpus,
      memoryMiB: machine.memoryMiB,
      choice: options.choice,
      sshPort: options.sshPort,
      forwards: machine.forwardedPorts,
      restrictNetwork: machine.network === 'restricted',
      noNetwork: machine.network === 'none',
      drives: machine.drives,
    })
    return this.startedOf(machine, booted)
  }

  private startedOf(machine: Pick<MachineHandle, 'stateDir'>, booted: Booted): Started {
    const files = instanceFiles(machine.stateDir)
    const started: Started = {
      sshPort: booted.sshPort,
      forwardedPorts: booted.forwards,
      serialLog: files.serialLog,
      isAlive: () => isAlive(booted.pid),
    }
    if (booted.agent) {
      started.sshListening = async () => {
        try {
          return (await this.askAgent(machine, `tcp-listening ${GUEST_SSH_PORT}`, {timeoutMs: 1000})) === 'yes'
        } catch (error) {
          // Refused: an agent older than this question, which cannot tell.
          if (error instanceof AgentRefusal) return undefined
          throw error
        }
      }
    }
    return started
  }

  async addForward(machine: Pick<MachineHandle, 'stateDir'>, forward: ForwardedPort): Promise<void> {
    // QMP has no command of its own for this: the monitor's hostfwd_add, which prints nothing when it worked.
    const qmp = await QmpClient.connect(instanceFiles(machine.stateDir).qmpSocket)
    try {
      const rule = hostfwd(forward).slice('hostfwd='.length)
      const said = await qmp.execute<string>('human-monitor-command', {'command-line': `hostfwd_add net0 ${rule}`})
      if (said.trim()) throw new BoxError(`QEMU did not add the forward ${rule}: ${said.trim()}`)
    } finally {
      qmp.close()
    }
  }

  askAgent(machine: Pick<MachineHandle, 'stateDir'>, request: string, options: {timeoutMs: number}): Promise<string> {
    return askAgent(instanceFiles(machine.stateDir).agentFifo, request, options)
  }

  async state(machine: Pick<MachineHandle, 'stateDir'>): Promise<MachineState> {
    const files = instanceFiles(machine.stateDir)
    if (await runningPid(files.pidFile, files.qmpSocket)) return 'running'
    try {
      await access(files.overlay)
    } catch {
      return 'not_created'
    }
    // A pid file left behind means QEMU did not exit through halt: it died.
    try {
      await access(files.pidFile)
      return 'aborted'
    } catch {
      return 'poweroff'
    }
  }

  async halt(
    machine: Pick<MachineHandle, 'stateDir'>,
    options: HaltOptions,
  ): Promise<'acpi' | 'forced' | 'not-running'> {
    const files = instanceFiles(machine.stateDir)
    const result = await stopQemu({
      pidFile: files.pidFile,
      qmpSocket: files.qmpSocket,
      timeoutMs: options.timeoutMs,
      force: options.force,
    })
    await rm(files.pidFile, {force: true})
    await rm(files.qmpSocket, {force: true})
    await settleDisk(machine.stateDir)
    return result.how
  }

  async destroy(machine: Pick<MachineHandle, 'stateDir'>): Promise<void> {
    const files = instanceFiles(machine.stateDir)
    // Its disk goes with it: nothing to flush or let finish, so SIGKILL rather than a QMP
    // `quit` and its coarse wait (1–2 s under TCG, on the way of every job's result).
    await killQemu(files)
    await rm(files.qmpSocket, {force: true})
    await rm(files.overlay, {force: true})
    await rm(snapshotsDir(machine.stateDir), {recursive: true, force: true})
  }

  get snapshots(): QemuSnapshots {
    return new QemuSnapshots(this.cacheDir)
  }

  readonly runningStates: ProviderRunningStates = {
    hostKey: async () => {
      const {accel} = await resolveAccel({cacheDir: this.cacheDir})
      const qemu = await hostQemu(this.cacheDir)
      return `qemu ${qemu.version} ${qemu.pcMachineType} ${accel} layout ${layoutFingerprint(accel)}`
    },
    save: async (machine, dir, options) => {
      const {accel} = await resolveAccel({cacheDir: this.cacheDir})
      const files = readyStateFiles(dir)
      const instance = instanceFiles(machine.stateDir)
      const saved = await saveRunningState({
        ...machine,
        files: instance,
        accel,
        qemu: await hostQemu(this.cacheDir),
        next: join(machine.stateDir, 'after-save.qcow2'),
        state: files.state,
        signal: options.signal,
      })
      // The machine is done with: once its QEMU is gone its frozen disk may move.
      await this.halt(machine, {force: true, timeoutMs: 0})
      await rename(saved.frozen, files.layer)
      return {stateBytes: saved.compat.state.bytes, pauseMs: saved.pauseMs}
    },
    start: async (machine, dir, options) => {
      const {accel} = await resolveAccel({cacheDir: this.cacheDir})
      const files = readyStateFiles(dir)
      const result = await startFromState({
        name: machine.name,
        files: instanceFiles(machine.stateDir),
        box: machine.box,
        accel,
        cpus: machine.cpus,
        memoryMiB: machine.memoryMiB,
        forwards: machine.forwardedPorts,
        drives: machine.drives,
        qemu: await hostQemu(this.cacheDir),
        layer: files.layer,
        state: files.state,
        what: `the ready state in ${dir}`,
        signal: options.signal,
      })
      return {
        started: this.startedOf(machine, result.booted),
        loadMs: result.loadMs,
        diskBytesBeforeRun: result.overlayBytesBeforeRun,
      }
    },
  }

  sshControlPath(machine: Pick<MachineHandle, 'stateDir'>): string {
    return socketPath(machine.stateDir, 'ssh.ctl')
  }

  packagedDisk(machine: Pick<MachineHandle, 'stateDir'>): PackagedDisk {
    return {path: instanceFiles(machine.stateDir).overlay, format: 'qcow2'}
  }

  checkHost(options: {refresh?: boolean}): Promise<HostCheck> {
    return resolveAccel({cacheDir: this.cacheDir, refresh: options.refresh})
  }
}
