import type {BoxMetadata} from '../lib/box/metadata.js'
import type {ForwardedPort} from '../lib/core/ports.js'
import type {BootChoice} from '../lib/box/resnap.js'

/** An unpacked box: its folder and metadata.json. */
export interface BoxImage {
  dir: string
  metadata: BoxMetadata
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

/** The disk `box package` reads: the machine's own disk with its backing chain. */
export interface PackagedDisk {
  path: string
  format: 'qcow2'
}

/** What `box doctor` reports for a provider's side of the host (QEMU: the accelerator). */
export interface HostCheck {
  accel: string
  source: 'env' | 'cache' | 'probe'
  attempts: Array<{accel: string; ok: boolean; ms: number; reason?: string}>
}

export interface ConvertOptions {
  signal?: AbortSignal
  /** Percent of the disk converted so far (qemu-img's own count). */
  onProgress?: (percent: number) => void
}

/** How a box made for another provider becomes one this provider runs (a converted copy in the store). */
export interface BoxConversion {
  /** The box provider the converted copy is stored under. */
  storedAs: string
  /** What the conversion is for, in progress lines: "QEMU (VMDK → qcow2)". */
  label: string
  convert(sourceDir: string, targetDir: string, options: ConvertOptions): Promise<unknown>
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
  /** The disk `box package` flattens into a new box; absent where packaging is not supported. */
  packagedDisk?(machine: Pick<MachineHandle, 'stateDir'>): PackagedDisk
  /** `box remove`: drop what the provider made from a stored box (VirtualBox: its base VM); resolves to whether there was any. */
  forgetBox?(boxDir: string, options: {dataDir: string}): Promise<boolean>
  /** `box doctor`: whether this host can run the provider's machines, and how. Rejects with the reason when it cannot. */
  checkHost?(options: {refresh?: boolean}): Promise<HostCheck>
}
