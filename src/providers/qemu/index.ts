import {rm} from 'node:fs/promises'

import {defaultCacheDir} from '../../lib/core/paths.js'
import {socketPath} from '../../lib/core/short-socket.js'
import type {HaltOptions, MachineHandle, MachineState, Provider, StartOptions, Started} from '../provider.js'
import {resolveAccel} from './accel.js'
import {AgentRefusal, askAgent} from './agent.js'
import {GUEST_SSH_PORT, bootInstance, createOverlay, instanceFiles} from './instance.js'
import {isAlive, runningPid, stopQemu} from './process.js'
import {access} from 'node:fs/promises'

/** Machines as QEMU processes: a qcow2 overlay, user-mode networking, QMP for control. */
export class QemuProvider implements Provider {
  readonly name = 'qemu'

  constructor(private readonly cacheDir = defaultCacheDir()) {}

  async create(machine: MachineHandle): Promise<void> {
    await createOverlay(machine.box, instanceFiles(machine.stateDir).overlay)
  }

  async start(machine: MachineHandle, options: StartOptions): Promise<Started> {
    const files = instanceFiles(machine.stateDir)
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
      noNetwork: machine.network === false,
      drives: machine.drives,
    })
    const started: Started = {sshPort: booted.sshPort, forwardedPorts: booted.forwards, serialLog: files.serialLog, isAlive: () => isAlive(booted.pid)}
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

  async halt(machine: Pick<MachineHandle, 'stateDir'>, options: HaltOptions): Promise<'acpi' | 'forced' | 'not-running'> {
    const files = instanceFiles(machine.stateDir)
    const result = await stopQemu({pidFile: files.pidFile, qmpSocket: files.qmpSocket, timeoutMs: options.timeoutMs, force: options.force})
    await rm(files.pidFile, {force: true})
    await rm(files.qmpSocket, {force: true})
    return result.how
  }

  async destroy(machine: Pick<MachineHandle, 'stateDir'>): Promise<void> {
    await this.halt(machine, {force: true, timeoutMs: 0})
    await rm(instanceFiles(machine.stateDir).overlay, {force: true})
  }

  sshControlPath(machine: Pick<MachineHandle, 'stateDir'>): string {
    return socketPath(machine.stateDir, 'ssh.ctl')
  }
}
