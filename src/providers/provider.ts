import type {ForwardedPort} from '../lib/core/ports.js'
import type {BootChoice} from '../lib/box/resnap.js'
import type {BoxImage} from './qemu/instance.js'

/** A raw image attached as one more virtio disk; the guest finds it by `serial` (/sys/block/vdX/serial). */
export interface ExtraDrive {
  file: string
  serial: string
  readOnly?: boolean
}

export type MachineState = 'not_created' | 'running' | 'poweroff' | 'aborted'

/** What a provider needs to know about one machine; commands never see provider internals. */
export interface MachineHandle {
  name: string
  /** `<project>/.box/machines/<name>`: everything the machine owns lives here. */
  stateDir: string
  box: BoxImage
  cpus: number
  memoryMiB: number
  forwardedPorts: ForwardedPort[]
  /** false: no network interface at all (box run --network off). Default true. */
  network?: boolean
  /** Extra raw disks (box run's input and output images), found in the guest by serial. */
  drives?: ExtraDrive[]
}

export interface StartOptions {
  choice: BootChoice
  /** Host port for ssh used last time; kept when still free. */
  sshPort?: number
  signal?: AbortSignal
}

export interface Started {
  sshPort: number
  /** Forwards in force this boot (a taken host port moved to a free one). */
  forwardedPorts: ForwardedPort[]
  /** Serial console log, shown when the guest does not come up. */
  serialLog: string
  isAlive(): boolean
  /** Whether sshd listens in the guest yet (box-agent); undefined when the guest cannot tell, rejects without an answer. Absent without an agent. */
  sshListening?(): Promise<boolean | undefined>
}

export interface HaltOptions {
  force?: boolean
  timeoutMs: number
}

/**
 * The one interface every provider implements (QEMU here, VirtualBox later):
 * create the disk, start, report state, stop, destroy.
 */
export interface Provider {
  readonly name: string
  create(machine: MachineHandle): Promise<void>
  start(machine: MachineHandle, options: StartOptions): Promise<Started>
  state(machine: Pick<MachineHandle, 'stateDir'>): Promise<MachineState>
  halt(machine: Pick<MachineHandle, 'stateDir'>, options: HaltOptions): Promise<'acpi' | 'forced' | 'not-running'>
  /** Stop whatever runs (forcefully) and delete the machine's disk; must succeed even half-created. */
  destroy(machine: Pick<MachineHandle, 'stateDir'>): Promise<void>
  /** Control sockets may not fit in deep project paths (108-byte limit): providers say where theirs live. */
  sshControlPath(machine: Pick<MachineHandle, 'stateDir'>): string
  /** One question to box-agent in a running guest whose box declares it (provisioners/box-agent); absent where there is no channel. */
  askAgent?(machine: Pick<MachineHandle, 'stateDir'>, request: string, options: {timeoutMs: number}): Promise<string>
}
