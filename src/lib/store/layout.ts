/**
 * The local box store's layout, like Vagrant's:
 *
 *   <dataDir>/boxes/<NAME escaped>/<VERSION>/<PROVIDER>/{metadata.json, box.img, …}
 *   <dataDir>/boxes/<NAME escaped>/catalog_url      (the catalog this box came from)
 *
 * Names starting with "." are the store's own scratch space and never boxes.
 */
import {join} from 'node:path'

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
/** Vagrant's escape for "org/name" box names, so a store can be shared in spirit with Vagrant's. */
const SLASH_ESCAPE = '-VAGRANTSLASH-'

export function boxesDir(dataDir: string): string {
  return join(dataDir, 'boxes')
}

const NAME_PATTERN = /^[A-Za-z0-9._/-]+$/
export const PROVIDER_PATTERN = /^[A-Za-z0-9_-]+$/

/** Throws a BoxError unless `name` is a valid box name ("debian/bookworm64", "worker"). */
export function validateBoxName(name: string): void {
  const problem = !name
    ? 'it is empty'
    : !NAME_PATTERN.test(name)
      ? 'only letters, digits and . _ - / are allowed'
      : name.split('/').some((part) => part === '' || part === '.' || part === '..')
        ? 'it must not start or end with "/" or contain "//", "." or ".." segments'
        : name.startsWith('.') || name.startsWith('-')
          ? 'it must not start with "." or "-"'
          : name.includes(SLASH_ESCAPE)
            ? `it must not contain ${SLASH_ESCAPE}`
            : undefined
  if (problem) throw new BoxError(`invalid box name ${JSON.stringify(name)}: ${problem}`, {exitCode: ExitCode.USAGE})
}

export function validateBoxVersion(version: string): void {
  if (!isVersion(version)) {
    throw new BoxError(`invalid box version ${JSON.stringify(version)}: expected numbers separated by dots, such as 1.2.3`, {exitCode: ExitCode.USAGE})
  }
}

export function validateProviderName(provider: string): void {
  if (!PROVIDER_PATTERN.test(provider)) {
    throw new BoxError(`invalid provider name ${JSON.stringify(provider)}: only letters, digits, _ and - are allowed`, {exitCode: ExitCode.USAGE})
  }
}

/** "org/name" → "org-VAGRANTSLASH-name": one directory per box, whatever its name. */
export function escapeBoxName(name: string): string {
  return name.split('/').join(SLASH_ESCAPE)
}

export function unescapeBoxName(directory: string): string {
  return directory.split(SLASH_ESCAPE).join('/')
}

export function boxPath(dataDir: string, box: {name: string; version: string; provider: string}): string {
  return join(boxesDir(dataDir), escapeBoxName(box.name), box.version, box.provider)
}
