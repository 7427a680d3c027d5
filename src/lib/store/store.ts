/**
 * The local box store, laid out like Vagrant's:
 *
 *   <dataDir>/boxes/<NAME escaped>/<VERSION>/<PROVIDER>/{metadata.json, box.img, …}
 *   <dataDir>/boxes/<NAME escaped>/catalog_url      (the catalog this box came from)
 *
 * Imports are atomic: a box is extracted into `boxes/.tmp-*`, checked, then renamed into
 * place, so a box in the store is always complete. Names starting with "." are the
 * store's own scratch space and never boxes.
 */
import {randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, readdir, readFile, rename, rm, rmdir, stat, writeFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import type {BoxConversion} from './convert.js'
import type {BoxMetadata} from '../box/metadata.js'
import {BoxError, ExitCode} from '../core/errors.js'
import type {Progress} from '../core/progress.js'
import {compareVersions, isVersion} from '../core/versions.js'

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

/** Written next to metadata.json at import: where the box came from and when. */
const STORE_INFO_FILE = '.box-store.json'
interface StoreInfo {
  addedAt: string
  source?: string
}

const SCRATCH_PREFIX = '.tmp-'
/** Vagrant's escape for "org/name" box names, so a store can be shared in spirit with Vagrant's. */
const SLASH_ESCAPE = '-VAGRANTSLASH-'

export function boxesDir(dataDir: string): string {
  return join(dataDir, 'boxes')
}

// ---------------------------------------------------------------------------------
// Names, versions, providers

const NAME_PATTERN = /^[A-Za-z0-9._/-]+$/
const PROVIDER_PATTERN = /^[A-Za-z0-9_-]+$/

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

/** Newest first; versions that are not well-formed (hand-made directories) sort last, by text. */
function compareNewestFirst(a: string, b: string): number {
  const aValid = isVersion(a)
  const bValid = isVersion(b)
  if (aValid && bValid) return compareVersions(b, a)
  if (aValid !== bValid) return aValid ? -1 : 1
  return a < b ? 1 : a > b ? -1 : 0
}

export function boxPath(dataDir: string, box: {name: string; version: string; provider: string}): string {
  return join(boxesDir(dataDir), escapeBoxName(box.name), box.version, box.provider)
}

// ---------------------------------------------------------------------------------
// Adding

export interface AddBoxOptions {
  dataDir: string
  name: string
  /** Version to store the box as; default: metadata.json's box.version, else "0". */
  version?: string
  /** Expected provider; the box's metadata.json must say the same. */
  provider?: string
  /** Replace an installed box of the same name, version and provider (and its converted copies). */
  force?: boolean
  /**
   * Host providers ("qemu", "virtualbox") to store a converted copy for as well, in the
   * same atomic import (box-conversion.ts). Providers that run the box as it is are
   * skipped, and so is a copy whose NAME/VERSION/PROVIDER is installed already (unless force).
   */
  convertFor?: readonly string[]
  signal?: AbortSignal
  progress?: Progress
}

/** A box just imported, with the copies converted for other providers (box-conversion.ts). */
export interface ImportedBox extends StoredBox {
  converted: StoredBox[]
}

export interface AddBoxFromFileOptions extends AddBoxOptions {
  /** A .box file (tar, tar.gz or tar.zst) on this machine. */
  file: string
  /** Recorded as where the box came from (default: the file's absolute path). */
  source?: string
}

/**
 * Import a .box file atomically: extract into a scratch directory inside the store,
 * validate metadata.json, convert copies for `convertFor`, then rename everything into
 * `NAME/VERSION/PROVIDER`. Nothing is left behind when anything fails (including Ctrl-C
 * through `signal`).
 */
export async function addBoxFromFile(options: AddBoxFromFileOptions): Promise<ImportedBox> {
  const {dataDir, name, force = false, signal, progress} = options
  validateBoxName(name)
  if (options.version !== undefined) validateBoxVersion(options.version)
  if (options.provider !== undefined) validateProviderName(options.provider)
  const file = resolve(options.file)
  const fileInfo = await stat(file).catch(() => undefined)
  if (!fileInfo?.isFile()) throw new BoxError(`box file not found: ${file}`, {exitCode: ExitCode.USAGE})

  const root = boxesDir(dataDir)
  await mkdir(root, {recursive: true})
  await removeStaleScratch(root)
  const {extractBoxArchive} = await import('../box/archive.js')
  if (!force) await refuseInstalledEarly(dataDir, name, file, options)
  const scratch = await mkdtemp(join(root, SCRATCH_PREFIX))
  const staged = join(scratch, 'box')
  try {
    const {formatBytes} = await import('../core/progress.js')
    const stage = progress?.stage(`Extracting ${name}`)
    try {
      await extractBoxArchive({
        file,
        dest: staged,
        signal,
        onProgress: stage && ((done, total) => stage.update(`${formatBytes(done)} of ${formatBytes(total)}`)),
      })
      stage?.done(formatBytes(fileInfo.size))
    } catch (error) {
      stage?.fail()
      throw error
    }

    const metadata = await readBoxMetadata(staged, file)
    const provider = metadata.provider
    validateProviderName(provider)
    if (options.provider !== undefined && options.provider !== provider) {
      throw new BoxError(`${file} is a box for the ${provider} provider, not ${options.provider}`, {
        exitCode: ExitCode.USAGE,
        suggestions: [`add it without --provider, or with --provider ${provider}`],
      })
    }
    const version = options.version ?? metadata.box?.version ?? '0'
    validateBoxVersion(version)
    await checkBoxContents(staged, metadata, file)
    const target = boxPath(dataDir, {name, version, provider})
    if (!force && (await exists(target))) throw alreadyInstalled(`${name} ${version} (${provider})`)
    const info: StoreInfo = {addedAt: new Date().toISOString(), source: options.source ?? file}

    const moves: StagedMove[] = []
    const {conversionFor} = await import('./convert.js')
    for (const hostProvider of new Set(options.convertFor ?? [])) {
      const conversion = conversionFor(provider, hostProvider)
      if (!conversion) continue
      const copy = {name, version, provider: conversion.storedAs}
      if (!force && (await exists(boxPath(dataDir, copy)))) {
        progress?.info(`Keeping the installed ${name} ${version} (${copy.provider}) for ${hostProvider}`)
        continue
      }
      const convertedDir = join(scratch, `converted-${conversion.storedAs}`)
      await convertStaged({staged, into: convertedDir, conversion, what: `${name} ${version}`, signal, progress})
      await writeStoreInfo(convertedDir, info)
      moves.push({staged: convertedDir, box: copy})
    }
    await writeStoreInfo(staged, info)
    // The box itself last: a failed move undoes the copies placed before it.
    moves.push({staged, box: {name, version, provider}})

    signal?.throwIfAborted()
    await moveAllIntoPlace(dataDir, moves, scratch, force)
    const [stored, ...converted] = await Promise.all([...moves].reverse().map(({box}) => readStoredBox(dataDir, box.name, box.version, box.provider)))
    return {...stored!, converted}
  } finally {
    await rm(scratch, {recursive: true, force: true})
  }
}

/** A box ready in scratch space and where it goes. */
interface StagedMove {
  staged: string
  box: {name: string; version: string; provider: string}
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  )
}

async function writeStoreInfo(dir: string, info: StoreInfo): Promise<void> {
  await writeFile(join(dir, STORE_INFO_FILE), `${JSON.stringify(info, null, 2)}\n`)
}

/** Convert the box in `staged` into `into`, with a progress stage; `into` is scratch the caller removes. */
async function convertStaged(options: {staged: string; into: string; conversion: BoxConversion; what: string; signal?: AbortSignal; progress?: Progress}): Promise<void> {
  const {conversion, progress} = options
  const stage = progress?.stage(`Converting ${options.what} for ${conversion.label}`)
  try {
    await conversion.convert(options.staged, options.into, {signal: options.signal, onProgress: stage && ((percent) => stage.update(`${Math.floor(percent)} %`))})
    const {formatBytes} = await import('../core/progress.js')
    stage?.done(`${formatBytes(await directorySize(options.into))} as ${conversion.storedAs}`)
  } catch (error) {
    stage?.fail()
    if (options.signal?.aborted) throw new BoxError(`converting ${options.what} interrupted`, {exitCode: ExitCode.INTERRUPTED, cause: error})
    throw error
  }
}

/**
 * Give an installed box a copy converted for `hostProvider` (a machine's first `up` under a
 * provider the box was not added for, e.g. VirtualBox installed after `box add`). Atomic
 * like an import, and locked: a second `up` of the same box waits and then uses the copy.
 */
export async function convertStoredBox(options: {dataDir: string; box: StoredBox; hostProvider: string; signal?: AbortSignal; progress?: Progress}): Promise<StoredBox> {
  const {dataDir, box, hostProvider} = options
  const {conversionFor} = await import('./convert.js')
  const conversion = conversionFor(box.provider, hostProvider)
  if (!conversion) throw new BoxError(`box ${box.name} ${box.version} (${box.provider}) cannot be converted for ${hostProvider}`)
  const copy = {name: box.name, version: box.version, provider: conversion.storedAs}
  const root = boxesDir(dataDir)
  const {acquireLock} = await import('../core/lock.js')
  const lockName = `${escapeBoxName(copy.name)}-${copy.version}-${copy.provider}`
  const release = await acquireLock(join(root, `.convert-${lockName}.lock`), {
    waitMs: 60 * 60_000,
    busy: (pid) => new BoxError(`box ${box.name} ${box.version} is being converted for ${hostProvider} by another box command (pid ${pid})`, {suggestions: ['wait for it to finish, then try again']}),
  })
  try {
    if (!(await exists(boxPath(dataDir, copy)))) {
      const scratch = await mkdtemp(join(root, SCRATCH_PREFIX))
      try {
        const convertedDir = join(scratch, 'box')
        await convertStaged({staged: box.path, into: convertedDir, conversion, what: `${box.name} ${box.version}`, signal: options.signal, progress: options.progress})
        await writeStoreInfo(convertedDir, {addedAt: new Date().toISOString(), source: box.path})
        await moveAllIntoPlace(dataDir, [{staged: convertedDir, box: copy}], scratch, false)
      } finally {
        await rm(scratch, {recursive: true, force: true})
      }
    }
    return await readStoredBox(dataDir, copy.name, copy.version, copy.provider)
  } finally {
    await release()
  }
}

/**
 * When metadata.json is the archive's first entry (box writes it so), learn the box's
 * version and provider before extracting gigabytes only to refuse a duplicate.
 * Anything unusual is left to the full check after extraction.
 */
async function refuseInstalledEarly(dataDir: string, name: string, file: string, options: {version?: string; provider?: string}): Promise<void> {
  const {readArchiveFile} = await import('../box/archive.js')
  const text = await readArchiveFile(file, 'metadata.json', {maxEntries: 1, maxBytes: 1024 * 1024}).catch(() => undefined)
  if (!text) return
  let metadata: {provider?: unknown; box?: {version?: unknown}}
  try {
    metadata = JSON.parse(text.toString('utf8'))
  } catch {
    return
  }
  const provider = options.provider ?? metadata.provider
  const version = options.version ?? metadata.box?.version ?? '0'
  if (typeof provider !== 'string' || typeof version !== 'string' || !PROVIDER_PATTERN.test(provider) || !isVersion(version)) return
  if (await stat(boxPath(dataDir, {name, version, provider})).then(() => true, () => false)) throw alreadyInstalled(`${name} ${version} (${provider})`)
}

function alreadyInstalled(what: string): BoxError {
  return new BoxError(`box ${what} is already installed`, {
    exitCode: ExitCode.FAILURE,
    suggestions: ['add --force to replace it', 'or give it another version with --box-version'],
  })
}

/** Scratch older than this was left by a process that crashed (or lost power) mid-import. */
const STALE_SCRATCH_MS = 24 * 60 * 60 * 1000

/** Best effort: a crash can skip our cleanup, so the next import sweeps what it left. */
async function removeStaleScratch(root: string): Promise<void> {
  const entries = await readdir(root, {withFileTypes: true}).catch(() => [])
  await Promise.all(
    entries
      .filter((entry) => entry.isDirectory() && entry.name.startsWith(SCRATCH_PREFIX))
      .map(async (entry) => {
        const path = join(root, entry.name)
        const info = await stat(path).catch(() => undefined)
        if (info && Date.now() - info.mtimeMs > STALE_SCRATCH_MS) await rm(path, {recursive: true, force: true}).catch(() => undefined)
      }),
  )
}

async function readBoxMetadata(dir: string, file: string): Promise<BoxMetadata> {
  let text: string
  try {
    text = await readFile(join(dir, 'metadata.json'), 'utf8')
  } catch {
    throw new BoxError(`${file} is not a box: it has no metadata.json`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['a .box is a tar holding metadata.json (with at least {"provider": "qemu"}) and the disk image'],
    })
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (error) {
    throw new BoxError(`metadata.json in ${file} is not valid JSON: ${(error as Error).message}`, {exitCode: ExitCode.USAGE})
  }
  // zod is loaded only here: `box list` stays fast without it.
  const {BoxMetadataSchema} = await import('../box/metadata.js')
  const parsed = BoxMetadataSchema.safeParse(json)
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(top level)'}: ${issue.message}`)
    throw new BoxError(`metadata.json in ${file} is invalid`, {exitCode: ExitCode.USAGE, detail: problems.join('\n')})
  }
  return parsed.data
}

/** A QEMU/libvirt box must carry its disk (and the kernel/initrd its metadata names). */
async function checkBoxContents(dir: string, metadata: BoxMetadata, file: string): Promise<void> {
  const required: string[] = []
  if (metadata.provider === 'qemu' || metadata.provider === 'libvirt') required.push('box.img')
  if (metadata.box?.kernel) required.push(metadata.box.kernel)
  if (metadata.box?.initrd) required.push(metadata.box.initrd)
  for (const name of required) {
    const info = await stat(resolve(dir, name)).catch(() => undefined)
    if (!resolve(dir, name).startsWith(`${dir}/`) || !info?.isFile()) {
      throw new BoxError(`${file} is missing ${name}, which its metadata.json requires`, {exitCode: ExitCode.USAGE})
    }
  }
}

/**
 * rename(2) each staged box into place, all or nothing. With force an installed box is
 * first renamed into the scratch directory (removed with it); when a later move fails,
 * the boxes placed so far are taken back and what they replaced is put back.
 */
async function moveAllIntoPlace(dataDir: string, moves: StagedMove[], scratch: string, force: boolean): Promise<void> {
  const placed: Array<{target: string; replaced?: string}> = []
  try {
    for (const [index, {staged, box}] of moves.entries()) {
      const target = boxPath(dataDir, box)
      await mkdir(join(target, '..'), {recursive: true})
      const replaced = join(scratch, `replaced-${index}`)
      placed.push({target, replaced: (await moveIntoPlace(staged, target, replaced, force, `${box.name} ${box.version} (${box.provider})`)) ? replaced : undefined})
    }
  } catch (error) {
    for (const [index, {target, replaced}] of placed.reverse().entries()) {
      await rename(target, join(scratch, `undone-${index}`)).catch(() => undefined)
      if (replaced) await rename(replaced, target).catch(() => undefined)
    }
    throw error
  }
}

/** rename(2) `staged` to `target`; with force, an installed box goes to `replaced` first. Returns whether one was replaced. */
async function moveIntoPlace(staged: string, target: string, replaced: string, force: boolean, what: string): Promise<boolean> {
  const installed = await exists(target)
  if (installed && !force) throw alreadyInstalled(what)
  if (!installed) {
    try {
      await rename(staged, target)
    } catch (error) {
      // Another `box add` of the same box won the race: rename fails on a non-empty directory.
      if (['ENOTEMPTY', 'EEXIST'].includes((error as NodeJS.ErrnoException).code ?? '')) {
        throw alreadyInstalled(what)
      }
      throw error
    }
    return false
  }
  await rename(target, replaced)
  try {
    await rename(staged, target)
  } catch (error) {
    await rename(replaced, target).catch(() => undefined)
    throw error
  }
  return true
}

/** Remember the catalog a box came from (`box outdated` and `box update` ask it again). */
export async function setCatalogUrl(dataDir: string, name: string, url: string): Promise<void> {
  validateBoxName(name)
  const dir = join(boxesDir(dataDir), escapeBoxName(name))
  await mkdir(dir, {recursive: true})
  const temp = join(dir, `.catalog_url.${randomBytes(4).toString('hex')}`)
  await writeFile(temp, `${url}\n`)
  await rename(temp, join(dir, 'catalog_url'))
}

export async function getCatalogUrl(dataDir: string, name: string): Promise<string | undefined> {
  validateBoxName(name)
  const text = await readFile(join(boxesDir(dataDir), escapeBoxName(name), 'catalog_url'), 'utf8').catch(() => undefined)
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
    names = (await readdir(root, {withFileTypes: true}).catch(() => [])).filter((entry) => entry.isDirectory() && !entry.name.startsWith('.')).map((entry) => entry.name)
  }
  const found = await Promise.all(
    names.map(async (directory) => {
      const name = unescapeBoxName(directory)
      const versions = await subdirectories(join(root, directory))
      const perVersion = await Promise.all(
        versions.map(async (version) => {
          const providers = await subdirectories(join(root, directory, version))
          return Promise.all(providers.map((provider) => readStoredBox(dataDir, name, version, provider).catch(() => undefined)))
        }),
      )
      return perVersion.flat()
    }),
  )
  return found
    .flat()
    .filter((box): box is StoredBox => box !== undefined)
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : compareNewestFirst(a.version, b.version) || (a.provider < b.provider ? -1 : a.provider > b.provider ? 1 : 0)))
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
    (box) => query.providers.includes(box.provider) && (query.version === undefined || box.version === query.version || (isVersion(box.version) && isVersion(query.version) && compareVersions(box.version, query.version) === 0)),
  )
  // listBoxes sorts newest first; among one version, prefer the caller's provider order.
  const newest = boxes[0]
  if (!newest) return undefined
  const chosen = boxes.filter((box) => box.version === newest.version).sort((a, b) => query.providers.indexOf(a.provider) - query.providers.indexOf(b.provider))[0]
  // A box about to boot gets its metadata through the schema (defaults such as kernel_args filled in).
  const {BoxMetadataSchema} = await import('../box/metadata.js')
  const parsed = BoxMetadataSchema.safeParse(chosen.metadata)
  if (!parsed.success) {
    throw new BoxError(`the stored metadata.json of ${chosen.name} ${chosen.version} (${chosen.provider}) is invalid`, {
      detail: parsed.error.issues.map((issue) => `${issue.path.join('.') || '(top level)'}: ${issue.message}`).join('\n'),
      suggestions: [`add the box again: box add ${chosen.name} FILE --force`],
    })
  }
  return {...chosen, metadata: parsed.data}
}

async function subdirectories(dir: string): Promise<string[]> {
  const entries = await readdir(dir, {withFileTypes: true}).catch(() => [])
  return entries.filter((entry) => entry.isDirectory() && !entry.name.startsWith('.')).map((entry) => entry.name)
}

async function readStoredBox(dataDir: string, name: string, version: string, provider: string): Promise<StoredBox> {
  const path = boxPath(dataDir, {name, version, provider})
  // Validated in full at import; here only what listing relies on, without loading zod.
  const metadata = JSON.parse(await readFile(join(path, 'metadata.json'), 'utf8')) as BoxMetadata
  if (typeof metadata?.provider !== 'string') throw new Error(`${path}/metadata.json has no provider`)
  const [size, info] = await Promise.all([directorySize(path), readFile(join(path, STORE_INFO_FILE), 'utf8').then((text) => JSON.parse(text) as StoreInfo, () => undefined)])
  const addedAt = info?.addedAt ?? (await stat(path)).mtime.toISOString()
  return {name, version, provider, path, size, addedAt, metadata}
}

async function directorySize(dir: string): Promise<number> {
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

// ---------------------------------------------------------------------------------
// Removing

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
    throw new BoxError(`box ${name} is not installed`, {exitCode: ExitCode.USAGE, suggestions: ['see the installed boxes with: box list']})
  }
  const selected = installed.filter((box) => (options.version === undefined || box.version === options.version) && (options.provider === undefined || box.provider === options.provider))
  const describe = (box: StoredBox) => `${box.name} ${box.version} (${box.provider})`
  if (selected.length === 0) {
    throw new BoxError(`no installed box matches ${[name, options.version, options.provider && `(${options.provider})`].filter(Boolean).join(' ')}`, {
      exitCode: ExitCode.USAGE,
      detail: `installed:\n${installed.map(describe).join('\n')}`,
    })
  }
  // A copy converted from a selected box goes with it: `box remove NAME` means the box in every format.
  const isCopyOfSelected = (box: StoredBox) => selected.some((source) => source !== box && source.version === box.version && source.provider === box.metadata.converted_from)
  if (selected.filter((box) => !isCopyOfSelected(box)).length > 1 && !options.all) {
    throw new BoxError(`${name} has ${selected.length} matching versions/providers installed; say which to remove`, {
      exitCode: ExitCode.USAGE,
      detail: selected.map(describe).join('\n'),
      suggestions: ['pick one with --box-version V (and --provider P)', 'or remove them all with --all'],
    })
  }

  if (!options.force) {
    const {machinesUsingBox} = await import('./machine-index.js')
    const users = (await Promise.all(selected.map(async (box) => (await machinesUsingBox(dataDir, box)).map((machine) => ({box, machine}))))).flat()
    if (users.length > 0) {
      throw new BoxError(`cannot remove ${name}: ${users.length === 1 ? 'a machine uses' : `${users.length} machines use`} it`, {
        detail: users.map(({box, machine}) => `${machine.name} in ${machine.projectDir} (id ${machine.id}) uses ${describe(box)}`).join('\n'),
        suggestions: ['destroy those machines first (box destroy, in their project directory)', 'or remove anyway with --force (those machines will no longer start)'],
      })
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
