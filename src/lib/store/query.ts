/** Reading the local box store (layout.ts): what is installed, one box's record, remembered catalogs. */
import {mkdir, readdir, readFile, stat} from 'node:fs/promises'
import {join} from 'node:path'

import type {BoxMetadata} from '../box/metadata.js'
import {checkWithSchema, writeFileAtomic} from '../core/fs.js'
import {compareNewestFirst, compareVersions, isVersion} from '../core/versions.js'
import {
  boxesDir,
  boxPath,
  escapeBoxName,
  STORE_INFO_FILE,
  unescapeBoxName,
  validateBoxName,
  type StoreInfo,
} from './layout.js'

export interface StoredBox {
  name: string
  version: string
  provider: string
  /** Directory holding metadata.json, box.img, … */
  path: string
  /** Bytes of all files in `path` (apparent size). */
  size: number
  /** ISO time the box was added. */
  addedAt: string
  /** metadata.json: validated at import; findBox returns it parsed (schema defaults applied), listBoxes as stored. */
  metadata: BoxMetadata
}

/** Remember the catalog a box came from (`box outdated` and `box update` ask it again). */
export async function setCatalogUrl(dataDir: string, name: string, url: string): Promise<void> {
  validateBoxName(name)
  const dir = join(boxesDir(dataDir), escapeBoxName(name))
  await mkdir(dir, {recursive: true})
  await writeFileAtomic(join(dir, 'catalog_url'), `${url}\n`)
}

export async function getCatalogUrl(dataDir: string, name: string): Promise<string | undefined> {
  validateBoxName(name)
  const text = await readFile(join(boxesDir(dataDir), escapeBoxName(name), 'catalog_url'), 'utf8').catch(
    () => undefined,
  )
  return text?.trim() || undefined
}

// ---------------------------------------------------------------------------------
// Listing and finding

/** Every installed box, by name, then newest version first, then provider. */
export async function listBoxes(dataDir: string, filter: {name?: string} = {}): Promise<StoredBox[]> {
  const root = boxesDir(dataDir)
  let names: string[]
  if (filter.name !== undefined) {
    validateBoxName(filter.name)
    names = [escapeBoxName(filter.name)]
  } else {
    names = (await readdir(root, {withFileTypes: true}).catch(() => []))
      .filter((entry) => entry.isDirectory() && !entry.name.startsWith('.'))
      .map((entry) => entry.name)
  }
  const found = await Promise.all(
    names.map(async (directory) => {
      const name = unescapeBoxName(directory)
      const versions = await subdirectories(join(root, directory))
      const perVersion = await Promise.all(
        versions.map(async (version) => {
          const providers = await subdirectories(join(root, directory, version))
          return Promise.all(
            providers.map((provider) => readStoredBox(dataDir, name, version, provider).catch(() => undefined)),
          )
        }),
      )
      return perVersion.flat()
    }),
  )
  return found
    .flat()
    .filter((box): box is StoredBox => box !== undefined)
    .sort((a, b) =>
      a.name < b.name
        ? -1
        : a.name > b.name
          ? 1
          : compareNewestFirst(a.version, b.version) ||
            (a.provider < b.provider ? -1 : a.provider > b.provider ? 1 : 0),
    )
}

export interface FindBoxQuery {
  name: string
  /** An exact version; default: the newest installed. */
  version?: string
  /** Acceptable box providers, preferred first (e.g. COMPATIBLE_BOX_PROVIDERS.qemu). */
  providers: string[]
}

/** The newest installed box matching the query, or undefined. */
export async function findBox(dataDir: string, query: FindBoxQuery): Promise<StoredBox | undefined> {
  const boxes = (await listBoxes(dataDir, {name: query.name})).filter(
    (box) =>
      query.providers.includes(box.provider) &&
      (query.version === undefined ||
        box.version === query.version ||
        (isVersion(box.version) && isVersion(query.version) && compareVersions(box.version, query.version) === 0)),
  )
  // listBoxes sorts newest first; among one version, prefer the caller's provider order.
  const newest = boxes[0]
  if (!newest) return undefined
  const chosen = boxes
    .filter((box) => box.version === newest.version)
    .sort((a, b) => query.providers.indexOf(a.provider) - query.providers.indexOf(b.provider))[0]
  // A box about to boot gets its metadata through the schema (defaults such as kernel_args filled in).
  const {BoxMetadataSchema} = await import('../box/metadata.js')
  const metadata = checkWithSchema(
    chosen.metadata,
    BoxMetadataSchema,
    `the stored metadata.json of ${chosen.name} ${chosen.version} (${chosen.provider})`,
    {
      suggestions: [`add the box again: box add ${chosen.name} FILE --force`],
    },
  )
  return {...chosen, metadata}
}

export async function subdirectories(dir: string): Promise<string[]> {
  const entries = await readdir(dir, {withFileTypes: true}).catch(() => [])
  return entries.filter((entry) => entry.isDirectory() && !entry.name.startsWith('.')).map((entry) => entry.name)
}

export async function readStoredBox(
  dataDir: string,
  name: string,
  version: string,
  provider: string,
): Promise<StoredBox> {
  const path = boxPath(dataDir, {name, version, provider})
  // Validated in full at import; here only what listing relies on, without loading zod.
  const metadata = JSON.parse(await readFile(join(path, 'metadata.json'), 'utf8')) as BoxMetadata
  if (typeof metadata?.provider !== 'string') throw new Error(`${path}/metadata.json has no provider`)
  const [size, info] = await Promise.all([
    directorySize(path),
    readFile(join(path, STORE_INFO_FILE), 'utf8').then(
      (text) => JSON.parse(text) as StoreInfo,
      () => undefined,
    ),
  ])
  const addedAt = info?.addedAt ?? (await stat(path)).mtime.toISOString()
  return {name, version, provider, path, size, addedAt, metadata}
}

export async function directorySize(dir: string): Promise<number> {
  const entries = await readdir(dir, {withFileTypes: true})
  const sizes = await Promise.all(
    entries.map(async (entry) => {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) return directorySize(path)
      if (entry.isFile()) return (await stat(path)).size
      return 0
    }),
  )
  return sizes.reduce((sum, size) => sum + size, 0)
}
