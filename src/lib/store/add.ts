import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, open, rm, stat} from 'node:fs/promises'
import {join, resolve} from 'node:path'
import {pipeline} from 'node:stream/promises'
import {fileURLToPath} from 'node:url'

import {COMPATIBLE_BOX_PROVIDERS} from '../box/metadata.js'
import {
  fetchCatalogText,
  loadCatalog,
  parseCatalogText,
  resolveCatalog,
  resolveProviderUrl,
  type ArchitectureChoice,
  type Catalog,
} from './catalog.js'
import {CHECKSUM_TYPES, download, isChecksumType, partPath, type Checksum, type DownloadOptions} from './download.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {formatBytes, formatDuration, formatTransfer, type Progress} from '../core/progress.js'
import type {HttpOptions} from './http.js'
import {addBoxFromFile} from './import.js'
import {validateBoxName} from './layout.js'
import {findBox, setCatalogUrl, type StoredBox} from './query.js'

/**
 * What `box add` was given, and the one function that brings it into the store:
 * a .box file, a .box URL, or a catalog (URL or path) resolved to a version and provider.
 */

export type BoxSourceKind =
  | {kind: 'box-file'; path: string}
  /** A bare cloud image (qcow2, or raw named .img/.raw): cloud-image.ts wraps it into a box. */
  | {kind: 'disk-image'; path: string}
  | {kind: 'box-url'; url: string}
  | {kind: 'catalog'; location: string; catalog: Catalog}

/** The provider a box added without --provider is for: box's default, QEMU (which also runs libvirt boxes). */
const DEFAULT_PROVIDERS = COMPATIBLE_BOX_PROVIDERS.qemu

function isHttpUrl(text: string): boolean {
  return /^https?:\/\//i.test(text)
}

/** A local path from a path or file:// URL. */
function localPath(text: string): string {
  return /^file:\/\//i.test(text) ? fileURLToPath(text) : resolve(text)
}

/**
 * Decide what a source is. http(s) URLs ending in .box are boxes; other URLs are asked
 * (a JSON answer is a catalog, anything else a box); local files are catalogs when they
 * start with "{" (a .box is a tar, gzip or zstd stream and never does).
 */
export async function identifySource(
  source: string,
  options: {signal?: AbortSignal} & HttpOptions = {},
): Promise<BoxSourceKind> {
  if (isHttpUrl(source)) {
    if (/\.box$/i.test(new URL(source).pathname)) return {kind: 'box-url', url: source}
    const text = await fetchCatalogText(source, {...options, onlyIfJson: true})
    return text === undefined
      ? {kind: 'box-url', url: source}
      : {kind: 'catalog', location: source, catalog: parseCatalogText(text, source)}
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source) && !/^file:\/\//i.test(source)) {
    throw new BoxError(`unsupported URL scheme in ${source}`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['use an http://, https:// or file:// URL, or a path'],
    })
  }
  const path = localPath(source)
  const info = await stat(path).catch(() => undefined)
  if (!info?.isFile()) {
    throw new BoxError(`${source} is neither a URL nor a file`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['give the path of a .box or of a catalog JSON, or an http(s):// URL'],
    })
  }
  const head = await readHead(path)
  if (head.toString('latin1').trimStart().startsWith('{'))
    return {kind: 'catalog', location: path, catalog: await loadCatalog(path, options)}
  // A file named .box is a box whatever it holds (a bare disk named so is refused saying what it is).
  if (!/\.box$/i.test(path)) {
    const {DISK_IMAGE_NAME} = await import('./cloud-image.js')
    if (head.toString('latin1', 0, 4) === 'QFI\u00FB' || (DISK_IMAGE_NAME.test(path) && !looksCompressedOrTar(head)))
      return {kind: 'disk-image', path}
  }
  return {kind: 'box-file', path}
}

async function readHead(path: string): Promise<Buffer> {
  const handle = await open(path, 'r')
  try {
    const {buffer, bytesRead} = await handle.read(Buffer.alloc(512), 0, 512, 0)
    return buffer.subarray(0, bytesRead)
  } finally {
    await handle.close()
  }
}

/** gzip, bzip2, xz, zstd or a ustar header: a .box someone named .img. */
function looksCompressedOrTar(head: Buffer): boolean {
  const magics = [
    [0x1f, 0x8b],
    [0x42, 0x5a, 0x68],
    [0xfd, 0x37, 0x7a, 0x58, 0x5a],
    [0x28, 0xb5, 0x2f, 0xfd],
  ]
  if (magics.some((magic) => magic.every((byte, index) => head[index] === byte))) return true
  return head.length >= 262 && head.toString('latin1', 257, 262) === 'ustar'
}

/** `--checksum` (and `--checksum-type`, else guessed from the digest's length). */
export function checksumFromFlags(value: string | undefined, type: string | undefined): Checksum | undefined {
  if (value === undefined) {
    if (type !== undefined) throw new BoxError('--checksum-type needs --checksum', {exitCode: ExitCode.USAGE})
    return undefined
  }
  const digest = value.trim()
  if (type !== undefined) {
    const lower = type.toLowerCase()
    if (!isChecksumType(lower))
      throw new BoxError(`unknown checksum type ${JSON.stringify(type)}: use one of ${CHECKSUM_TYPES.join(', ')}`, {
        exitCode: ExitCode.USAGE,
      })
    return {type: lower, value: digest}
  }
  const byLength: Record<number, Checksum['type']> = {32: 'md5', 40: 'sha1', 64: 'sha256', 96: 'sha384', 128: 'sha512'}
  const guessed = /^[0-9a-f]+$/i.test(digest) ? byLength[digest.length] : undefined
  if (!guessed)
    throw new BoxError(`cannot tell the type of checksum ${JSON.stringify(value)}`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`give it with --checksum-type (${CHECKSUM_TYPES.join(', ')})`],
    })
  return {type: guessed, value: digest}
}

/** Where the download of `url` lives while in progress: the same URL always gets the same file, so a rerun resumes. */
export function downloadPath(cacheDir: string, url: string): string {
  return join(cacheDir, 'downloads', `${createHash('sha256').update(url).digest('hex')}.box`)
}

export interface AddFromSourceOptions {
  dataDir: string
  cacheDir: string
  /** The box name; optional for a catalog (whose name is used). */
  name?: string
  /** A .box path or URL, or a catalog path or URL. */
  source: string
  /** For a catalog: a constraint (">= 1.2, < 2"); for a .box: the version to store it as. */
  version?: string
  /** For a catalog: the provider to pick (qemu also takes libvirt boxes); for a .box: the provider it must be for. */
  provider?: string
  /** For a catalog: acceptable providers, preferred first (overrides `provider`). */
  providers?: readonly string[]
  /** Overrides the catalog's checksum; for a .box, checked before import. */
  checksum?: Checksum
  force?: boolean
  /**
   * Host providers to store a converted copy for too (convert.ts); default: every
   * provider this host runs, so `up` works whichever one a Boxfile names. [] keeps the box only as it is.
   */
  convertFor?: readonly string[]
  /** Architecture to pick from a catalog; default 'auto' (this host's, with Vagrant's fallbacks). */
  architecture?: ArchitectureChoice
  signal?: AbortSignal
  progress?: Progress
  /** HTTP settings for the catalog and the download: CA certificates to trust (`--ca-cert`), and tuning (tests use short timeouts). */
  downloadOptions?: Pick<DownloadOptions, 'timeoutMs' | 'retries' | 'retryDelayMs' | 'caCertFile'>
}

export interface AddedBox {
  box: StoredBox
  /** Copies converted for other providers (a VirtualBox box's libvirt copy for QEMU, …). */
  converted: StoredBox[]
  /** The catalog the box came from, remembered in the store. */
  catalogUrl?: string
  /** The URL the .box was downloaded from, if it was. */
  url?: string
  /** Bytes fetched over the network (0 when a previous download was resumed to completion or the box was local). */
  fetched: number
}

/** `box add`: bring a box from any source into the store. */
export async function addBoxFromSource(options: AddFromSourceOptions): Promise<AddedBox> {
  const {signal, progress} = options
  const source = await identifySource(options.source, {
    signal,
    timeoutMs: options.downloadOptions?.timeoutMs,
    caCertFile: options.downloadOptions?.caCertFile,
  })

  if (source.kind === 'catalog') return addFromCatalog(options, source.location, source.catalog)

  const name = options.name
  if (name === undefined) {
    throw new BoxError(`${options.source} is a box, not a catalog: give the name to store it under`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`box add NAME ${options.source}`],
    })
  }
  validateBoxName(name)
  if (source.kind === 'disk-image') {
    if (options.checksum) await verifyFileChecksum(source.path, options.checksum, progress)
    const {addCloudImage} = await import('./cloud-image.js')
    const box = await addCloudImage({
      dataDir: options.dataDir,
      name,
      file: source.path,
      version: options.version,
      provider: options.provider,
      force: options.force,
      progress,
      signal,
    })
    return {box, converted: [], fetched: 0}
  }
  const location = source.kind === 'box-url' ? source.url : source.path
  return importBox(options, {
    name,
    location,
    version: options.version,
    provider: options.provider,
    checksum: options.checksum,
    progress,
  })
}

async function addFromCatalog(options: AddFromSourceOptions, location: string, catalog: Catalog): Promise<AddedBox> {
  // The catalog's name becomes the store's directory: refuse one that could climb out before downloading anything.
  validateBoxName(catalog.name)
  if (options.name !== undefined && options.name !== catalog.name) {
    throw new BoxError(`the catalog ${location} is for ${catalog.name}, not ${options.name}`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`box add ${location}`, `or: box add ${catalog.name} ${location}`],
    })
  }
  const providers =
    options.providers ??
    (options.provider ? (COMPATIBLE_BOX_PROVIDERS[options.provider] ?? [options.provider]) : DEFAULT_PROVIDERS)
  const resolved = resolveCatalog(catalog, {
    constraint: options.version,
    providers,
    architecture: options.architecture,
  })
  const what = `${resolved.name} ${resolved.version} (${resolved.provider.name})`
  if (!options.force) {
    // Say so before downloading gigabytes the store would refuse.
    const installed = await findBox(options.dataDir, {
      name: resolved.name,
      version: resolved.version,
      providers: [resolved.provider.name],
    })
    if (installed) throw new BoxError(`box ${what} is already installed`, {suggestions: ['add --force to replace it']})
  }
  options.progress?.info(`Adding ${what} from ${location}`)
  const added = await importBox(options, {
    name: resolved.name,
    location: resolveProviderUrl(resolved.provider.url, location),
    version: resolved.version,
    provider: resolved.provider.name,
    checksum: options.checksum ?? resolved.checksum,
    progress: options.progress,
  })
  await setCatalogUrl(options.dataDir, resolved.name, location)
  return {...added, catalogUrl: location}
}

interface ImportRequest {
  name: string
  /** http(s) URL, file:// URL or path of the .box. */
  location: string
  version?: string
  provider?: string
  checksum?: Checksum
  progress?: Progress
}

/** Download (resumably) when remote, verify the checksum, import into the store, drop the download. */
async function importBox(options: AddFromSourceOptions, request: ImportRequest): Promise<AddedBox> {
  const {dataDir, cacheDir, force, signal} = options
  const {name, location, progress} = request
  const {hostProvidersOnThisHost} = await import('./convert.js')
  const convertFor = options.convertFor ?? (await hostProvidersOnThisHost())
  const storeOptions = {
    dataDir,
    name,
    version: request.version,
    provider: request.provider,
    force,
    convertFor,
    signal,
    progress,
  }

  if (!isHttpUrl(location)) {
    const file = localPath(location)
    if (request.checksum) await verifyFileChecksum(file, request.checksum, progress)
    const {converted, ...box} = await addBoxFromFile({...storeOptions, file, source: file})
    return {box, converted, fetched: 0}
  }

  const dest = downloadPath(cacheDir, location)
  await mkdir(join(cacheDir, 'downloads'), {recursive: true})
  let fetched = 0
  if (!(await reusableDownload(dest, request.checksum, progress))) {
    fetched = await downloadWithProgress(
      {url: location, dest, checksum: request.checksum, signal, ...options.downloadOptions},
      progress,
    )
  }

  try {
    const {converted, ...box} = await addBoxFromFile({...storeOptions, file: dest, source: location})
    await rm(dest, {force: true})
    return {box, converted, url: location, fetched}
  } catch (error) {
    // Keep a finished download across Ctrl-C (the rerun imports it at once); otherwise it is suspect or unneeded.
    if (!signal?.aborted) await rm(dest, {force: true})
    throw error
  }
}

/**
 * A complete download left by a run whose import was interrupted (Ctrl-C during
 * extraction) is used as it is, after the checksum if there is one; one that fails it is
 * removed so the download starts afresh.
 */
async function reusableDownload(
  dest: string,
  checksum: Checksum | undefined,
  progress: Progress | undefined,
): Promise<boolean> {
  const exists = await stat(dest).then(
    (info) => info.isFile(),
    () => false,
  )
  if (!exists) return false
  if (!checksum) return true
  try {
    await verifyFileChecksum(dest, checksum, progress)
    return true
  } catch (error) {
    if (!(error instanceof BoxError)) throw error
    await rm(dest, {force: true})
    return false
  }
}

async function downloadWithProgress(options: DownloadOptions, progress: Progress | undefined): Promise<number> {
  const resuming = await stat(partPath(options.dest)).then(
    (info) => info.size,
    () => 0,
  )
  const stage = progress?.stage(
    `Downloading ${options.url}${resuming > 0 ? `, resuming after ${formatBytes(resuming)}` : ''}`,
  )
  const started = performance.now()
  try {
    const result = await download({
      ...options,
      onProgress: stage && ((p) => stage.update(formatTransfer(p))),
      onRetry:
        progress &&
        (({error, attempt, delayMs}) =>
          progress.warn(`${error.message}; retry ${attempt} in ${formatDuration(delayMs)}`)),
    })
    const seconds = (performance.now() - started) / 1000
    stage?.done(
      `${formatBytes(result.bytes)}${result.fetched > 0 && seconds > 0 ? `, ${formatBytes(result.fetched / seconds)}/s` : ''}${options.checksum ? `, ${options.checksum.type} verified` : ''}`,
    )
    return result.fetched
  } catch (error) {
    stage?.fail()
    throw error
  }
}

/** Hash a local file and compare; one pass, with progress for big boxes. */
async function verifyFileChecksum(file: string, checksum: Checksum, progress?: Progress): Promise<void> {
  const hash = createHash(checksum.type)
  const stage = progress?.stage(`Verifying ${checksum.type} of ${file}`)
  try {
    await pipeline(createReadStream(file, {highWaterMark: 1 << 20}), async function (source: AsyncIterable<Buffer>) {
      for await (const chunk of source) hash.update(chunk)
    })
  } catch (error) {
    stage?.fail()
    const code = (error as NodeJS.ErrnoException).code
    throw new BoxError(
      code === 'ENOENT' ? `box file not found: ${file}` : `cannot read ${file}: ${(error as Error).message}`,
      {exitCode: ExitCode.USAGE, cause: error},
    )
  }
  const actual = hash.digest('hex')
  const expected = checksum.value.trim().toLowerCase()
  if (actual !== expected) {
    stage?.fail()
    throw new BoxError(`checksum mismatch for ${file}`, {
      detail: `expected ${checksum.type} ${expected}\nactual   ${checksum.type} ${actual}`,
    })
  }
  stage?.done()
}
