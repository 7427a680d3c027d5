/** `box package --catalog`: the new box's entry in a Vagrant-format catalog file. */
import {readFile, rename, writeFile} from 'node:fs/promises'
import {resolve} from 'node:path'

import {BoxError} from '../core/errors.js'
import {compareVersions} from '../core/versions.js'
import {parseCatalogText} from './catalog.js'

/** A catalog as JSON: only the keys this file edits are typed. */
interface CatalogJson {
  name: string
  versions: Array<{version: string; providers?: Array<{name: string; [key: string]: unknown}>; [key: string]: unknown}>
  [key: string]: unknown
}

export interface CatalogUpdate {
  file: string
  url: string
  boxName: string
  version: string
  sha256: string
  /** Provider name in the entry: vagrant-libvirt's, which box's QEMU provider also takes. */
  provider?: string
}

/**
 * Add or update `version` in a Vagrant-format catalog (created when missing): the
 * provider's url and sha256 are replaced, other providers and versions are kept, and
 * versions stay sorted newest first. Written atomically.
 */
export async function updateCatalog(update: CatalogUpdate): Promise<string> {
  const file = resolve(update.file)
  const provider = update.provider ?? 'libvirt'
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined
    throw new BoxError(`cannot read the catalog ${file}: ${error.message}`, {cause: error})
  })
  // Validate with the catalog schema, but edit the JSON as written so unknown keys survive untouched.
  if (text !== undefined) parseCatalogText(text, file)
  const catalog = (text === undefined ? {name: update.boxName, versions: []} : JSON.parse(text)) as CatalogJson
  let entry = catalog.versions.find((candidate) => candidate.version === update.version)
  if (!entry) {
    entry = {version: update.version, providers: []}
    catalog.versions.push(entry)
  }
  entry.providers = [
    ...(entry.providers ?? []).filter((candidate) => candidate.name !== provider),
    {name: provider, url: update.url, checksum_type: 'sha256', checksum: update.sha256},
  ]
  catalog.versions.sort((a, b) => compareVersions(b.version, a.version))
  const partial = `${file}.partial`
  await writeFile(partial, `${JSON.stringify(catalog, null, 2)}\n`)
  await rename(partial, file)
  return file
}
