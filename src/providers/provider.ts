import type {BoxMetadata} from '../lib/box/metadata.js'
import type {ForwardedPort} from '../lib/core/ports.js'
import type {BootChoice} from '../lib/box/resnap.js'

/** An unpacked box: its folder and metadata.json. */
export interface BoxImage {
  dir: string
  metadata: BoxMetadata
}

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
  /**
   * 'full' (the default): user-mode NAT; 'restricted': no way out of the host, forwarded ports
   * (ssh) still reach the guest (fresh workers without network); 'none': no network interface
   * at all (box run --network off, HTCondor style: the job's disks and the agent are its only way).
   */
  network?: 'full' | 'restricted' | 'none'
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
  /**
   * Host-side resnap of a halted machine: throw its own disk layer away and make a new, empty
   * one on what it built on, so the next boot starts from the box (or its last snapshot) as
   * it is. Absent where the provider cannot.
   */
  resetDisk?(machine: MachineHandle): Promise<void>
  state(machine: Pick<MachineHandle, 'stateDir'>): Promise<MachineState>
  halt(machine: Pick<MachineHandle, 'stateDir'>, options: HaltOptions): Promise<'acpi' | 'forced' | 'not-running'>
  /** Stop whatever runs (forcefully) and delete the machine's disk; must succeed even half-created. */
  destroy(machine: Pick<MachineHandle, 'stateDir'>): Promise<void>
  /** Control sockets may not fit in deep project paths (108-byte limit): providers say where theirs live. */
  sshControlPath(machine: Pick<MachineHandle, 'stateDir'>): string
  /** One question to box-agent in a running guest whose box declares it (provisioners/box-agent); absent where there is no channel. */
  askAgent?(machine: Pick<MachineHandle, 'stateDir'>, request: string, options: {timeoutMs: number}): Promise<string>
  /** One more forward to the running guest, added live (forward_ports: auto); absent where forwards are fixed at boot. Rejects when the host port cannot be bound. */
  addForward?(machine: Pick<MachineHandle, 'stateDir'>, forward: ForwardedPort): Promise<void>
  /** The disk `box package` flattens into a new box; absent where packaging is not supported. */
  packagedDisk?(machine: Pick<MachineHandle, 'stateDir'>): PackagedDisk
  /** `box remove`: drop what the provider made from a stored box (VirtualBox: its base VM); resolves to whether there was any. */
  forgetBox?(boxDir: string, options: {dataDir: string}): Promise<boolean>
  /** `box doctor`: whether this host can run the provider's machines, and how. Rejects with the reason when it cannot. */
  checkHost?(options: {refresh?: boolean}): Promise<HostCheck>
  /** Named snapshots of a machine (`box snapshot`); absent for a provider that has none. */
  readonly snapshots?: ProviderSnapshots
  /** A running state saved once and started many times (fresh workers); absent for a provider that cannot. */
  readonly runningStates?: ProviderRunningStates
}

export interface SnapshotInfo {
  name: string
  /** 'running': the disk and the running state (RAM, devices); 'disk': the disk of a halted machine. */
  kind: 'disk' | 'running'
  createdAt: string
  /** The snapshot this one builds on (its disk was made on top of that one's). */
  parent?: string
  /** The machine's disk builds on this one now (the last saved or restored). */
  current: boolean
  /** Bytes on the host: the frozen disk layer, and the state file of a running one. */
  diskBytes?: number
  stateBytes?: number
}

export interface SnapshotSaved extends SnapshotInfo {
  /** How long the guest was paused (running snapshots). */
  pauseMs?: number
}

export interface SnapshotRestored {
  kind: SnapshotInfo['kind']
  /** The machine as it runs again (running snapshots); a disk snapshot leaves it halted. */
  started?: Started
  /** Whether the guest can be asked to set its clock and reseed (box-agent). */
  agent?: boolean
}

export interface ProviderSnapshots {
  list(machine: Pick<MachineHandle, 'stateDir'>): Promise<SnapshotInfo[]>
  /** Snapshot the machine as it is: disk only when halted, disk and running state when running (the guest only pauses). */
  save(machine: MachineHandle, name: string, options: {signal?: AbortSignal}): Promise<SnapshotSaved>
  /**
   * Put the machine back: a running snapshot resumes (a running machine is stopped first), a
   * disk one leaves it halted. `consume` (`pop`): the snapshot is deleted by the restore, and
   * the machine may take its files over instead of building on them.
   */
  restore(
    machine: MachineHandle,
    name: string,
    options: {sshPort?: number; signal?: AbortSignal; consume?: boolean},
  ): Promise<SnapshotRestored>
  /** Refuses a snapshot others build on; says whether its disk layer had to stay (the machine's disk builds on it). */
  delete(machine: Pick<MachineHandle, 'stateDir'>, name: string): Promise<{layerKept: boolean}>
}

export interface RunningStateInfo {
  /** Bytes of the state file (RAM the guest touched, devices). */
  stateBytes: number
  pauseMs: number
}

export interface RunningStateStart {
  started: Started
  /** From starting the provider's process to the guest running again. */
  loadMs: number
  /** Disk space the machine's new disk took before the guest ran. */
  diskBytesBeforeRun?: number
}

export interface ProviderRunningStates {
  /** What a saved state depends on besides the machine (hypervisor version, machine type, the provider's device layout): part of a cache key. */
  hostKey(): Promise<string>
  /** Save the running machine into `dir` (its disk frozen there); the machine goes on running. */
  save(machine: MachineHandle, dir: string, options: {signal?: AbortSignal}): Promise<RunningStateInfo>
  /** Start `machine` (a new, empty state dir) from what `save` put in `dir`; refuses a state that does not fit it. */
  start(machine: MachineHandle, dir: string, options: {signal?: AbortSignal}): Promise<RunningStateStart>
}
