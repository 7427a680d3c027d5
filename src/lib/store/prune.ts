import {hostProviderOf} from './updates.js'
import {BoxError} from '../core/errors.js'
import {machinesUsingBox, type MachineEntry} from './machine-index.js'
import {listBoxes, type StoredBox} from './query.js'
import {removeBox} from './remove.js'
import {compareNewestFirst} from '../core/versions.js'

/**
 * `box prune`: old box versions go, but never the newest version of a box (per host provider)
 * nor any version a machine on this host is backed by — a linked clone's overlay needs
 * its backing image, and deleting it would break that machine for good.
 */

export interface KeptBox {
  box: StoredBox
  /** Why it stays: "newest" and/or the machines using it. */
  newest: boolean
  usedBy: MachineEntry[]
}

export interface PrunePlan {
  keep: KeptBox[]
  remove: StoredBox[]
}

export async function planPrune(dataDir: string, filter: {name?: string} = {}): Promise<PrunePlan> {
  const boxes = await listBoxes(dataDir, filter)
  // "Newest" per host provider: a libvirt 1.1 supersedes a qemu 1.0 (QEMU runs both), not a virtualbox one.
  const keyOf = (box: StoredBox) => `${box.name}\u0000${hostProviderOf(box.provider)}`
  const newest = new Map<string, StoredBox>()
  for (const box of boxes) {
    const current = newest.get(keyOf(box))
    if (!current || compareNewestFirst(box.version, current.version) < 0) newest.set(keyOf(box), box)
  }
  const plan: PrunePlan = {keep: [], remove: []}
  for (const box of boxes) {
    const isNewest = newest.get(keyOf(box)) === box
    const usedBy = await machinesUsingBox(dataDir, box)
    if (isNewest || usedBy.length > 0) plan.keep.push({box, newest: isNewest, usedBy})
    else plan.remove.push(box)
  }
  return plan
}

export interface PruneResult extends PrunePlan {
  removed: StoredBox[]
  /** Boxes the plan would remove but removeBox refused (a machine started using one meanwhile). */
  failed: Array<{box: StoredBox; error: string}>
}

/** Carry out the plan; with dryRun only plan. Each removal re-checks the machines (removeBox does). */
export async function pruneBoxes(options: {dataDir: string; name?: string; dryRun?: boolean}): Promise<PruneResult> {
  const plan = await planPrune(options.dataDir, {name: options.name})
  const result: PruneResult = {...plan, removed: [], failed: []}
  if (options.dryRun) return result
  for (const box of plan.remove) {
    try {
      result.removed.push(
        ...(await removeBox({dataDir: options.dataDir, name: box.name, version: box.version, provider: box.provider})),
      )
    } catch (error) {
      if (!(error instanceof BoxError)) throw error
      result.failed.push({box, error: error.message})
    }
  }
  return result
}
