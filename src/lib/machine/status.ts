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
  /** Fill of the root snapshot's copy-on-write area, percent (running resnap boxes with a classic snapshot). */
  snapshotUsedPercent?: number
  /** Fill of the thin pool's data and metadata, percent (running resnap boxes with a thin snapshot). */
  poolDataPercent?: number
  poolMetadataPercent?: number
  /** What resets the root snapshot at boot (`initramfs-tools`, `dracut`), from the box's metadata (running machines). */
  initramfs?: string
  /** The root snapshot's kind (`classic`, `thin`), from the box's metadata (running machines). */
  snapshotKind?: string
  warning?: string
}

/** Above this fill status warns: at 100 % a classic snapshot is invalidated and the root is lost, a full thin pool fails writes. */
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
    Object.assign(status, await snapshotFill(provider, stateDir, record, metadata))
    const warning = fillWarning(status)
    if (warning) status.warning = warning
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
      : status.poolDataPercent !== undefined && status.poolMetadataPercent !== undefined
        ? `thin pool ${status.poolDataPercent.toFixed(1)}% data, ${status.poolMetadataPercent.toFixed(1)}% metadata used${resnapKinds(status)}`
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

/** Why status warns: the classic snapshot or the thin pool above SNAPSHOT_WARNING_PERCENT. */
export function fillWarning(status: MachineStatus): string | undefined {
  const snapshot = status.snapshotUsedPercent
  if (snapshot !== undefined && snapshot > SNAPSHOT_WARNING_PERCENT)
    return `root snapshot is ${snapshot.toFixed(1)}% full: at 100% it is invalidated; reboot with resnap (box resnap) or use a bigger lvsize`
  const pool = Math.max(status.poolDataPercent ?? 0, status.poolMetadataPercent ?? 0)
  if (pool > SNAPSHOT_WARNING_PERCENT)
    return `thin pool is ${pool.toFixed(1)}% full: at 100% writes to / fail (the origin root is kept); reboot with resnap (box resnap) or use a bigger pool_size`
  return undefined
}

/**
 * The root snapshot's fill from device-mapper rather than lvs (under TCG, `sudo lvs` takes
 * about 0.5 s longer than `sudo dmsetup status`): the classic snapshot's Data%, or the thin
 * pool's data and metadata. Empty when the guest cannot say.
 */
async function snapshotFill(
  provider: Provider,
  stateDir: string,
  record: MachineRecord,
  metadata: BoxMetadata | undefined,
): Promise<Pick<MachineStatus, 'snapshotUsedPercent' | 'poolDataPercent' | 'poolMetadataPercent'>> {
  const lvm = metadata?.box?.lvm
  if (!lvm || !metadata.box) return {}
  // A thin pool's own target is its -tpool device (the pool LV is a linear layer over it).
  const device = lvm.pool ? `${mapperName(lvm.vg, lvm.pool)}-tpool` : mapperName(lvm.vg, lvm.snapshot)
  const dmStatus = await askDmStatus(provider, stateDir, record, metadata.box.agent !== undefined, device)
  if (dmStatus === undefined) return {}
  if (!lvm.pool) return {snapshotUsedPercent: snapshotDataPercent(dmStatus)}
  const pool = thinPoolPercents(dmStatus)
  return pool ? {poolDataPercent: pool.data, poolMetadataPercent: pool.metadata} : {}
}

/** `dmsetup status DEVICE` in the guest, from box-agent when the box has it, else over ssh + sudo. */
async function askDmStatus(
  provider: Provider,
  stateDir: string,
  record: MachineRecord,
  hasAgent: boolean,
  device: string,
): Promise<string | undefined> {
  try {
    if (hasAgent && provider.askAgent) {
      // A machine started before its box had the agent has no port: ssh answers instead.
      const answer = await provider
        .askAgent({stateDir}, `dm-status ${device}`, {timeoutMs: 3000})
        .catch(() => undefined)
      if (answer !== undefined) return answer
    }
    const {stdout} = await sshRun(sshTarget(stateDir, record, provider), ['sudo', '-n', 'dmsetup', 'status', device], {
      timeoutMs: 5000,
    })
    return stdout
  } catch {
    return undefined
  }
}

/** "used/total" (sectors or blocks) as a percent with two decimals, as lvs shows it; undefined if it is not one. */
function usedPercent(fraction: string | undefined): number | undefined {
  const match = /^(\d+)\/(\d+)$/.exec(fraction ?? '')
  if (!match || Number(match[2]) === 0) return undefined
  return Math.round((Number(match[1]) / Number(match[2])) * 10_000) / 100
}

/**
 * A thin pool's data and metadata fill from its `dmsetup status` line:
 * "0 10485760 thin-pool 3 171/4096 9640/81920 - rw no_discard_passdown error_if_no_space - 1024"
 * is the transaction id, then metadata blocks used/total, then data blocks used/total.
 * A pool that failed is "Fail": 100 %, as is a pool out of data space.
 */
export function thinPoolPercents(dmStatus: string): {data: number; metadata: number} | undefined {
  const [, , target, transaction, metadata, data, , mode] = dmStatus.trim().split(/\s+/)
  if (target !== 'thin-pool') return undefined
  if (transaction === 'Fail') return {data: 100, metadata: 100}
  const [dataPercent, metadataPercent] = [usedPercent(data), usedPercent(metadata)]
  if (dataPercent === undefined || metadataPercent === undefined) return undefined
  return {data: mode === 'out_of_data_space' ? 100 : dataPercent, metadata: metadataPercent}
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
  return usedPercent(usage)
}
