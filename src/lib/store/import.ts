/**
 * Bringing a .box file into the local store (layout.ts). Imports are atomic: a box is
 * extracted into `boxes/.tmp-*`, checked, then renamed into place, so a box in the store
 * is always complete.
 */
import {mkdir, mkdtemp, readdir, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import type {BoxConversion} from './convert.js'
import type {BoxMetadata} from '../box/metadata.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {exists, readJsonWithSchema} from '../core/fs.js'
import type {Progress} from '../core/progress.js'
import {isVersion} from '../core/versions.js'
import {
  boxesDir,
  boxPath,
  escapeBoxName,
  PROVIDER_PATTERN,
  SCRATCH_PREFIX,
  STORE_INFO_FILE,
  validateBoxName,
  validateBoxVersion,
  validateProviderName,
  type StoreInfo,
} from './layout.js'
import {directorySize, readStoredBox, type StoredBox} from './query.js'

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
   * same atomic import (convert.ts). Providers that run the box as it is are
   * skipped, and so is a copy whose NAME/VERSION/PROVIDER is installed already (unless force).
   */
  convertFor?: readonly string[]
  signal?: AbortSignal
  progress?: Progress
}

/** A box just imported, with the copies converted for other providers (convert.ts). */
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
      // A local copy: no byte counter (its first figure, "0 B of 117 MB", was all a log showed); the spinner and the time say it moves.
      await extractBoxArchive({file, dest: staged, signal})
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
    const [stored, ...converted] = await Promise.all(
      [...moves].reverse().map(({box}) => readStoredBox(dataDir, box.name, box.version, box.provider)),
    )
    return {...stored!, converted}
  } finally {
    await rm(scratch, {recursive: true, force: true})
  }
}

/**
 * Bring a box another importer staged in `staged` (inside `scratch`, from `newScratch`) into
 * place atomically, as addBoxFromFile does; the caller removes `scratch` afterwards.
 */
export async function placeStagedBox(options: {
  dataDir: string
  scratch: string
  staged: string
  box: {name: string; version: string; provider: string}
  source: string
  force: boolean
}): Promise<StoredBox> {
  const {dataDir, box} = options
  if (!options.force && (await exists(boxPath(dataDir, box))))
    throw alreadyInstalled(`${box.name} ${box.version} (${box.provider})`)
  await writeStoreInfo(options.staged, {addedAt: new Date().toISOString(), source: options.source})
  await moveAllIntoPlace(dataDir, [{staged: options.staged, box}], options.scratch, options.force)
  return readStoredBox(dataDir, box.name, box.version, box.provider)
}

/** A new scratch directory inside the store (what a crash left there long ago is swept first). */
export async function newScratch(dataDir: string): Promise<string> {
  const root = boxesDir(dataDir)
  await mkdir(root, {recursive: true})
  await removeStaleScratch(root)
  return mkdtemp(join(root, SCRATCH_PREFIX))
}

/** A box ready in scratch space and where it goes. */
interface StagedMove {
  staged: string
  box: {name: string; version: string; provider: string}
}

async function writeStoreInfo(dir: string, info: StoreInfo): Promise<void> {
  await writeFile(join(dir, STORE_INFO_FILE), `${JSON.stringify(info, null, 2)}\n`)
}

/** Convert the box in `staged` into `into`, with a progress stage; `into` is scratch the caller removes. */
async function convertStaged(options: {
  staged: string
  into: string
  conversion: BoxConversion
  what: string
  signal?: AbortSignal
  progress?: Progress
}): Promise<void> {
  const {conversion, progress} = options
  const stage = progress?.stage(`Converting ${options.what} for ${conversion.label}`)
  try {
    await conversion.convert(options.staged, options.into, {
      signal: options.signal,
      onProgress: stage && ((percent) => stage.update(`${Math.floor(percent)} %`)),
    })
    const {formatBytes} = await import('../core/progress.js')
    stage?.done(`${formatBytes(await directorySize(options.into))} as ${conversion.storedAs}`)
  } catch (error) {
    stage?.fail()
    if (options.signal?.aborted)
      throw new BoxError(`converting ${options.what} interrupted`, {exitCode: ExitCode.INTERRUPTED, cause: error})
    throw error
  }
}

/**
 * Give an installed box a copy converted for `hostProvider` (a machine's first `up` under a
 * provider the box was not added for, e.g. VirtualBox installed after `box add`). Atomic
 * like an import, and locked: a second `up` of the same box waits and then uses the copy.
 */
export async function convertStoredBox(options: {
  dataDir: string
  box: StoredBox
  hostProvider: string
  signal?: AbortSignal
  progress?: Progress
}): Promise<StoredBox> {
  const {dataDir, box, hostProvider} = options
  const {conversionFor} = await import('./convert.js')
  const conversion = conversionFor(box.provider, hostProvider)
  if (!conversion)
    throw new BoxError(`box ${box.name} ${box.version} (${box.provider}) cannot be converted for ${hostProvider}`)
  const copy = {name: box.name, version: box.version, provider: conversion.storedAs}
  const root = boxesDir(dataDir)
  const {acquireLock} = await import('../core/lock.js')
  const lockName = `${escapeBoxName(copy.name)}-${copy.version}-${copy.provider}`
  const release = await acquireLock(join(root, `.convert-${lockName}.lock`), {
    waitMs: 60 * 60_000,
    busy: (pid) =>
      new BoxError(
        `box ${box.name} ${box.version} is being converted for ${hostProvider} by another box command (pid ${pid})`,
        {suggestions: ['wait for it to finish, then try again']},
      ),
  })
  try {
    if (!(await exists(boxPath(dataDir, copy)))) {
      const scratch = await mkdtemp(join(root, SCRATCH_PREFIX))
      try {
        const convertedDir = join(scratch, 'box')
        await convertStaged({
          staged: box.path,
          into: convertedDir,
          conversion,
          what: `${box.name} ${box.version}`,
          signal: options.signal,
          progress: options.progress,
        })
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
async function refuseInstalledEarly(
  dataDir: string,
  name: string,
  file: string,
  options: {version?: string; provider?: string},
): Promise<void> {
  const {readArchiveFile} = await import('../box/archive.js')
  const text = await readArchiveFile(file, 'metadata.json', {maxEntries: 1, maxBytes: 1024 * 1024}).catch(
    () => undefined,
  )
  if (!text) return
  let metadata: {provider?: unknown; box?: {version?: unknown}}
  try {
    metadata = JSON.parse(text.toString('utf8'))
  } catch {
    return
  }
  const provider = options.provider ?? metadata.provider
  const version = options.version ?? metadata.box?.version ?? '0'
  if (
    typeof provider !== 'string' ||
    typeof version !== 'string' ||
    !PROVIDER_PATTERN.test(provider) ||
    !isVersion(version)
  )
    return
  if (await exists(boxPath(dataDir, {name, version, provider})))
    throw alreadyInstalled(`${name} ${version} (${provider})`)
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
        if (info && Date.now() - info.mtimeMs > STALE_SCRATCH_MS)
          await rm(path, {recursive: true, force: true}).catch(() => undefined)
      }),
  )
}

async function readBoxMetadata(dir: string, file: string): Promise<BoxMetadata> {
  // zod is loaded only here: `box list` stays fast without it.
  const {BoxMetadataSchema} = await import('../box/metadata.js')
  return readJsonWithSchema(join(dir, 'metadata.json'), BoxMetadataSchema, `metadata.json in ${file}`, {
    exitCode: ExitCode.USAGE,
    ifMissing: () => {
      throw new BoxError(`${file} is not a box: it has no metadata.json`, {
        exitCode: ExitCode.USAGE,
        suggestions: ['a .box is a tar holding metadata.json (with at least {"provider": "qemu"}) and the disk image'],
      })
    },
  })
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
      placed.push({
        target,
        replaced: (await moveIntoPlace(staged, target, replaced, force, `${box.name} ${box.version} (${box.provider})`))
          ? replaced
          : undefined,
      })
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
async function moveIntoPlace(
  staged: string,
  target: string,
  replaced: string,
  force: boolean,
  what: string,
): Promise<boolean> {
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
