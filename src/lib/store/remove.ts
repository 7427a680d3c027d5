/** Taking boxes out of the local store (layout.ts), never one a machine on this host still uses. */
import {randomBytes} from 'node:crypto'
import {rename, rm, rmdir} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError, ExitCode} from '../core/errors.js'
import {boxesDir, escapeBoxName, SCRATCH_PREFIX, validateBoxName} from './layout.js'
import {listBoxes, subdirectories, type StoredBox} from './query.js'

export interface RemoveBoxOptions {
  dataDir: string
  name: string
  version?: string
  provider?: string
  /** Remove every matching version/provider instead of insisting on exactly one. */
  all?: boolean
  /** Remove even when machines on this host are backed by the box (they will stop working). */
  force?: boolean
}

/**
 * Remove installed boxes. Refuses when the selection is ambiguous (several versions or
 * providers and no --all) and when a machine on this host still uses a box.
 */
export async function removeBox(options: RemoveBoxOptions): Promise<StoredBox[]> {
  const {dataDir, name} = options
  validateBoxName(name)
  const installed = await listBoxes(dataDir, {name})
  if (installed.length === 0) {
    throw new BoxError(`box ${name} is not installed`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['see the installed boxes with: box list'],
    })
  }
  const selected = installed.filter(
    (box) =>
      (options.version === undefined || box.version === options.version) &&
      (options.provider === undefined || box.provider === options.provider),
  )
  const describe = (box: StoredBox) => `${box.name} ${box.version} (${box.provider})`
  if (selected.length === 0) {
    throw new BoxError(
      `no installed box matches ${[name, options.version, options.provider && `(${options.provider})`].filter(Boolean).join(' ')}`,
      {
        exitCode: ExitCode.USAGE,
        detail: `installed:\n${installed.map(describe).join('\n')}`,
      },
    )
  }
  // A copy converted from a selected box goes with it: `box remove NAME` means the box in every format.
  const isCopyOfSelected = (box: StoredBox) =>
    selected.some(
      (source) => source !== box && source.version === box.version && source.provider === box.metadata.converted_from,
    )
  if (selected.filter((box) => !isCopyOfSelected(box)).length > 1 && !options.all) {
    throw new BoxError(`${name} has ${selected.length} matching versions/providers installed; say which to remove`, {
      exitCode: ExitCode.USAGE,
      detail: selected.map(describe).join('\n'),
      suggestions: ['pick one with --box-version V (and --provider P)', 'or remove them all with --all'],
    })
  }

  if (!options.force) {
    const {machinesUsingBox} = await import('./machine-index.js')
    const users = (
      await Promise.all(
        selected.map(async (box) => (await machinesUsingBox(dataDir, box)).map((machine) => ({box, machine}))),
      )
    ).flat()
    if (users.length > 0) {
      throw new BoxError(
        `cannot remove ${name}: ${users.length === 1 ? 'a machine uses' : `${users.length} machines use`} it`,
        {
          detail: users
            .map(
              ({box, machine}) => `${machine.name} in ${machine.projectDir} (id ${machine.id}) uses ${describe(box)}`,
            )
            .join('\n'),
          suggestions: [
            'destroy those machines first (box destroy, in their project directory)',
            'or remove anyway with --force (those machines will no longer start)',
          ],
        },
      )
    }
  }

  // VirtualBox keeps a base VM per box it ran; it goes first, and VirtualBox refuses while linked clones use it.
  const {findOnPath} = await import('../core/exec.js')
  const virtualBoxBoxes = selected.filter((box) => box.provider === 'virtualbox')
  if (virtualBoxBoxes.length > 0 && (await findOnPath('VBoxManage'))) {
    const virtualBox = (await import('../../providers/index.js')).providerFor('virtualbox')
    for (const box of virtualBoxBoxes) await virtualBox.forgetBox?.(box.path, {dataDir})
  }

  const root = boxesDir(dataDir)
  for (const box of selected) {
    // Rename first so the box disappears at once; then delete at leisure.
    const trash = join(root, `${SCRATCH_PREFIX}remove-${randomBytes(6).toString('hex')}`)
    await rename(box.path, trash)
    await rm(trash, {recursive: true, force: true})
    await rmdir(join(box.path, '..')).catch(() => undefined) // the version directory, once empty
  }
  await removeNameIfEmpty(join(root, escapeBoxName(name)))
  return selected
}

/** Drop a box's directory (and its remembered catalog URL) once no version is left. */
async function removeNameIfEmpty(dir: string): Promise<void> {
  if ((await subdirectories(dir)).length > 0) return
  await rm(dir, {recursive: true, force: true})
}
