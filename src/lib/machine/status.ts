/**
 * `box status`: each machine's state, ports, and when it runs the fill of its root
 * snapshot. Users run it in loops, so the fill comes from box-agent in the guest when the
 * box has it (a virtio-serial question, ~0.1 s under TCG), from ssh + sudo otherwise (~0.6 s).
 */
import {readFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {MachineState, Provider} from '../../providers/provider.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {machineDir, readRecord, type MachineContext, type MachineRecord} from './context.js'
import {sshTarget} from './ssh-session.js'
import {providerFor} from '../../providers/index.js'
import {mapperName} from '../box/resnap.js'
import type {BoxMetadata} from '../box/metadata.js'
import {sshRun} from './ssh.js'

export interface MachineStatus {
  name: string
  state: MachineState
  provider: string
  box?: string
  ssh?: string
  forwardedPorts: Array<{guest: number; host: number; hostIp: string; protocol: string}>
  /** Fill of the root snapshot's copy-on-write area, percent (running resnap boxes only). */
  snapshotUsedPercent?: number
  /** What resets the root snapshot at boot (`initramfs-tools`, `dracut`), from the box's metadata (running machines). */
  initramfs?: string
  /** The root snapshot's kind (`classic`), from the box's metadata (running machines). */
  snapshotKind?: string
  warning?: string
}

/** Above this fill status warns: at 100 % the snapshot is invalidated and the root is lost. */
export const SNAPSHOT_WARNING_PERCENT = 80

export async function machineStatus(
  context: Pick<MachineContext, 'projectDir' | 'cacheDir'>,
  machine: ResolvedMachine,
): Promise<MachineStatus> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const provider = providerFor(machine.provider, context.cacheDir)
  const [state, record] = await Promise.all([provider.state({stateDir}), readRecord(stateDir)])
  const status: MachineStatus = {
    name: machine.name,
    state,
    provider: machine.provider,
    box: record ? `${record.box.name} ${record.box.version}` : undefined,
    ssh: record?.sshPort ? `127.0.0.1:${record.sshPort}` : undefined,
    forwardedPorts: state === 'running' && record?.forwardedPorts ? record.forwardedPorts : machine.forwardedPorts,
  }
  if (state === 'running' && record) {
    const metadata = await readMetadata(record)
    if (metadata?.box?.initramfs) status.initramfs = metadata.box.initramfs
    if (metadata?.box?.snapshot) status.snapshotKind = metadata.box.snapshot
    status.snapshotUsedPercent = await snapshotUsage(provider, stateDir, record, metadata)
    if (status.snapshotUsedPercent !== undefined && status.snapshotUsedPercent > SNAPSHOT_WARNING_PERCENT) {
      status.warning = `root snapshot is ${status.snapshotUsedPercent.toFixed(1)}% full: at 100% it is invalidated; reboot with resnap (box resnap) or use a bigger lvsize`
    }
  }
  return status
}

/** `box status` as text: a line per machine on `out`, warnings on `err`. */
export function printStatuses(
  statuses: readonly MachineStatus[],
  out: (line: string) => void,
  err: (line: string) => void,
): void {
  for (const status of statuses) {
    out(formatStatus(status))
    if (status.warning) err(`warning: ${status.name}: ${status.warning}`)
  }
}

/** One line of `box status`: name, state, then what applies. */
function formatStatus(status: MachineStatus): string {
  const ports = status.forwardedPorts.map((p) => `${p.hostIp}:${p.host}→${p.guest}/${p.protocol}`)
  const parts = [
    status.state,
    status.ssh && status.state === 'running' ? `ssh ${status.ssh}` : undefined,
    ports.length > 0 ? `ports ${ports.join(', ')}` : undefined,
    status.snapshotUsedPercent !== undefined
      ? `root snapshot ${status.snapshotUsedPercent.toFixed(1)}% used${resnapKinds(status)}`
      : status.initramfs || status.snapshotKind
        ? `root snapshot${resnapKinds(status)}`
        : undefined,
  ]
  return `${status.name.padEnd(16)} ${parts.filter(Boolean).join('  ')}`
}

/** " (classic, resnap by dracut)": what the box's metadata says about its snapshot; empty for boxes built before it did. */
function resnapKinds(status: MachineStatus): string {
  const kinds = [status.snapshotKind, status.initramfs ? `resnap by ${status.initramfs}` : undefined].filter(Boolean)
  return kinds.length > 0 ? ` (${kinds.join(', ')})` : ''
}

/** The stored box's metadata.json, undefined when it cannot be read (status still shows the rest). */
async function readMetadata(record: MachineRecord): Promise<BoxMetadata | undefined> {
  try {
    return JSON.parse(await readFile(join(record.box.path, 'metadata.json'), 'utf8')) as BoxMetadata
  } catch {
    return undefined
  }
}

/**
 * The snapshot's Data% from device-mapper rather than lvs: under TCG, `sudo lvs` takes
 * about 0.5 s longer than `sudo dmsetup status`. Unknown (undefined) when the guest cannot say.
 */
async function snapshotUsage(
  provider: Provider,
  stateDir: string,
  record: MachineRecord,
  metadata: BoxMetadata | undefined,
): Promise<number | undefined> {
  try {
    const lvm = metadata?.box?.lvm
    if (!lvm || !metadata.box) return undefined
    const device = mapperName(lvm.vg, lvm.snapshot)
    if (metadata.box.agent !== undefined && provider.askAgent) {
      // A machine started before its box had the agent has no port: ssh answers instead.
      const answer = await provider
        .askAgent({stateDir}, `dm-status ${device}`, {timeoutMs: 3000})
        .catch(() => undefined)
      if (answer !== undefined) return snapshotDataPercent(answer)
    }
    const {stdout} = await sshRun(sshTarget(stateDir, record, provider), ['sudo', '-n', 'dmsetup', 'status', device], {
      timeoutMs: 5000,
    })
    return snapshotDataPercent(stdout)
  } catch {
    return undefined
  }
}

/**
 * A snapshot's Data% as lvs shows it (two decimals), from its `dmsetup status` line:
 * "0 6291456 snapshot 1808/4194304 16" is sectors used/total, then metadata sectors.
 * A snapshot that filled up is "Invalid" (or "Overflow"): 100 %.
 */
export function snapshotDataPercent(dmStatus: string): number | undefined {
  const [, , target, usage] = dmStatus.trim().split(/\s+/)
  if (target !== 'snapshot') return undefined
  if (usage === 'Invalid' || usage === 'Overflow') return 100
  const match = /^(\d+)\/(\d+)$/.exec(usage ?? '')
  if (!match || Number(match[2]) === 0) return undefined
  return Math.round((Number(match[1]) / Number(match[2])) * 10_000) / 100
}
