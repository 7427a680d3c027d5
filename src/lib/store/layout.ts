/**
 * The local box store's layout, like Vagrant's:
 *
 *   <dataDir>/boxes/<NAME escaped>/<VERSION>/<PROVIDER>/{metadata.json, box.img, …}
 *   <dataDir>/boxes/<NAME escaped>/catalog_url      (the catalog this box came from)
 *
 * Names starting with "." are the store's own scratch space and never boxes.
 */
import {join} from 'node:path'

import {boxNameProblem, SLASH_ESCAPE} from '../box/name.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {isVersion} from '../core/versions.js'

/** Written next to metadata.json at import: where the box came from and when. */
export const STORE_INFO_FILE = '.box-store.json'
export interface StoreInfo {
  addedAt: string
  source?: string
}

/** Prefix of the store's scratch directories (imports in progress, boxes being removed). */
export const SCRATCH_PREFIX = '.tmp-'

export function boxesDir(dataDir: string): string {
  return join(dataDir, 'boxes')
}

export const PROVIDER_PATTERN = /^[A-Za-z0-9_-]+$/

/** Throws a BoxError unless `name` is a valid box name ("debian/bookworm64", "worker"; box/name.ts). */
export function validateBoxName(name: string): void {
  const problem = boxNameProblem(name)
  if (problem) throw new BoxError(`invalid box name ${JSON.stringify(name)}: ${problem}`, {exitCode: ExitCode.USAGE})
}

export function validateBoxVersion(version: string): void {
  if (!isVersion(version)) {
    throw new BoxError(
      `invalid box version ${JSON.stringify(version)}: expected numbers separated by dots, such as 1.2.3`,
      {exitCode: ExitCode.USAGE},
    )
  }
}

export function validateProviderName(provider: string): void {
  if (!PROVIDER_PATTERN.test(provider)) {
    throw new BoxError(`invalid provider name ${JSON.stringify(provider)}: only letters, digits, _ and - are allowed`, {
      exitCode: ExitCode.USAGE,
    })
  }
}

/** "org/name" → "org-VAGRANTSLASH-name": one directory per box, whatever its name, as Vagrant's store has it. */
export function escapeBoxName(name: string): string {
  return name.split('/').join(SLASH_ESCAPE)
}

export function unescapeBoxName(directory: string): string {
  return directory.split(SLASH_ESCAPE).join('/')
}

export function boxPath(dataDir: string, box: {name: string; version: string; provider: string}): string {
  return join(boxesDir(dataDir), escapeBoxName(box.name), box.version, box.provider)
}
