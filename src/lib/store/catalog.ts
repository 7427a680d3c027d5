import {arch} from 'node:os'
import {dirname, isAbsolute, resolve as resolvePath} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {fileURLToPath, pathToFileURL} from 'node:url'

import {z} from 'zod'

import {CHECKSUM_TYPES, type Checksum} from './download.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {parseJsonWithSchema, readJsonWithSchema, type SchemaErrorOptions} from '../core/fs.js'
import {compareNewestFirst, compareVersions, isVersion, parseUserConstraint, satisfies} from '../core/versions.js'
import {loadGot, permanentHttpFailure, requestOptions, type HttpOptions} from './http.js'

/**
 * Box catalogs in Vagrant's metadata format: a box name, its versions, and per version
 * the providers with a download URL and checksum. `box add` resolves a version and a
 * provider from one; `box outdated`/`box update` ask it again later.
 */

/** Empty strings and nulls mean "not given" in catalogs written by hand or by other tools. */
const optionalText = z
  .string()
  .nullish()
  .transform((value) => (value === null || value === undefined || value.trim() === '' ? undefined : value.trim()))
  // Optional in the parsed type too, so code can build catalogs without spelling out every field.
  .optional()

const CatalogProviderSchema = z.looseObject({
  name: z.string().min(1, 'a provider name is required'),
  url: z.string().min(1, 'a download URL is required'),
  checksum_type: optionalText
    .pipe(
      z
        .string()
        .transform((value) => value.toLowerCase())
        .pipe(z.enum(CHECKSUM_TYPES, {error: `must be one of ${CHECKSUM_TYPES.join(', ')}`}))
        .optional(),
    )
    .optional(),
  checksum: optionalText,
  architecture: optionalText,
  default_architecture: z.boolean().optional(),
})

const CatalogVersionSchema = z.looseObject({
  version: z.string().refine(isVersion, {message: 'must be a version such as 1.2.3'}),
  status: optionalText,
  description: optionalText,
  providers: z.array(CatalogProviderSchema).default([]),
})

const CatalogSchema = z.looseObject({
  name: z.string().min(1, 'the box name is required'),
  description: optionalText,
  versions: z.array(CatalogVersionSchema),
})

export type Catalog = z.infer<typeof CatalogSchema>
export type CatalogVersion = z.infer<typeof CatalogVersionSchema>
export type CatalogProvider = z.infer<typeof CatalogProviderSchema>

/** Versions a catalog lists but does not offer for download. */
const UNAVAILABLE_STATUSES = new Set(['revoked', 'unreleased'])
/** Catalogs are a few KB; anything much bigger is not one (it is a box). */
const MAX_CATALOG_BYTES = 16 << 20

/** Parse catalog text (JSON); `location` (URL or path) is named in every error. */
export function parseCatalogText(text: string, location: string): Catalog {
  return parseJsonWithSchema(text, CatalogSchema, location, catalogErrors(location))
}

function catalogErrors(location: string): SchemaErrorOptions {
  return {
    exitCode: ExitCode.USAGE,
    invalid: `${location} is not a valid box catalog`,
    notJson: (reason) => `${location} is not a box catalog: not valid JSON (${reason})`,
    suggestions: [
      'a catalog is Vagrant box metadata: {"name": "org/box", "versions": [{"version": "1.0.0", "providers": [{"name": "qemu", "url": "…", "checksum_type": "sha256", "checksum": "…"}]}]}',
    ],
  }
}

export interface LoadCatalogOptions extends HttpOptions {
  signal?: AbortSignal
}

/** Read a catalog from an http(s) URL, a file:// URL or a path. */
export async function loadCatalog(location: string, options: LoadCatalogOptions = {}): Promise<Catalog> {
  if (/^https?:\/\//i.test(location)) return parseCatalogText((await fetchCatalogText(location, options))!, location)
  const path = /^file:\/\//i.test(location) ? fileURLToPath(location) : location
  return readJsonWithSchema(path, CatalogSchema, `the catalog ${path}`, {
    ...catalogErrors(location),
    ifMissing: () => {
      throw new BoxError(`catalog not found: ${path}`, {exitCode: ExitCode.USAGE})
    },
  })
}

export interface FetchCatalogOptions extends LoadCatalogOptions {
  /** Answer undefined, having read only the first bytes, when the body is not JSON (it is a box). */
  onlyIfJson?: boolean
  /** Retries after a network error or a 408/429/5xx answer (default 2; 0 when `onlyIfJson`). */
  retries?: number
}

/**
 * GET a catalog: its text, read up to MAX_CATALOG_BYTES (a bigger body is no catalog).
 * With `onlyIfJson`, a body that is not JSON gives undefined after its first bytes, so
 * `box add URL` can ask a URL what it is without downloading a box twice.
 */
export async function fetchCatalogText(url: string, options: FetchCatalogOptions = {}): Promise<string | undefined> {
  const retries = options.retries ?? (options.onlyIfJson ? 0 : 2)
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetchCatalogOnce(url, options)
    } catch (error) {
      if (attempt >= retries || options.signal?.aborted || !(error instanceof RetryableFetchError))
        throw error instanceof RetryableFetchError ? error.error : error
      await sleep(1000 * 2 ** attempt, undefined, {signal: options.signal}).catch(() => undefined)
    }
  }
}

/** A failure worth one more try; `error` is what the caller sees when none is left. */
class RetryableFetchError extends Error {
  constructor(readonly error: BoxError) {
    super(error.message)
  }
}

async function fetchCatalogOnce(url: string, options: FetchCatalogOptions): Promise<string | undefined> {
  const got = await loadGot()
  const request = got.stream(url, {
    ...(await requestOptions(options)),
    decompress: true,
    headers: {accept: options.onlyIfJson ? 'application/json, */*' : 'application/json'},
  })
  const onAbort = () => request.destroy(new Error('aborted'))
  options.signal?.addEventListener('abort', onAbort, {once: true})
  // Kept here: got wraps an error given to destroy() in its own.
  let httpFailure: BoxError | RetryableFetchError | undefined
  try {
    const chunks: Buffer[] = []
    let bytes = 0
    let json: boolean | undefined = options.onlyIfJson ? undefined : true
    request.once(
      'response',
      (response: {
        statusCode: number
        statusMessage?: string
        headers: Record<string, string | string[] | undefined>
      }) => {
        if (response.statusCode >= 400) {
          const failure = new BoxError(
            `HTTP ${response.statusCode}${response.statusMessage ? ` ${response.statusMessage}` : ''} for ${url}`,
          )
          httpFailure =
            response.statusCode === 408 || response.statusCode === 429 || response.statusCode >= 500
              ? new RetryableFetchError(failure)
              : failure
          request.destroy(failure)
        } else if (/\bjson\b/i.test(String(response.headers['content-type'] ?? ''))) {
          json = true
        }
      },
    )
    for await (const chunk of request as AsyncIterable<Buffer>) {
      if (json === undefined) json = chunk.toString('latin1').trimStart().startsWith('{')
      if (!json) {
        request.destroy()
        return undefined
      }
      chunks.push(chunk)
      bytes += chunk.length
      if (bytes > MAX_CATALOG_BYTES) {
        request.destroy()
        throw new BoxError(`${url} is too big to be a box catalog`, {exitCode: ExitCode.USAGE})
      }
    }
    return Buffer.concat(chunks).toString('utf8')
  } catch (error) {
    if (httpFailure) throw httpFailure
    if (error instanceof BoxError) throw error
    const permanent = permanentHttpFailure(error, url)
    if (permanent) throw permanent
    if (options.signal?.aborted)
      throw new BoxError(`fetching ${url} interrupted`, {exitCode: ExitCode.INTERRUPTED, cause: error})
    throw new RetryableFetchError(new BoxError(`cannot fetch ${url}: ${(error as Error).message}`, {cause: error}))
  } finally {
    options.signal?.removeEventListener('abort', onAbort)
  }
}

/**
 * A provider URL as an absolute location: catalogs may name boxes relative to themselves
 * ("worker-1.2.0.box" next to "catalog.json"), which is handy for local mirrors.
 */
export function resolveProviderUrl(url: string, catalogLocation: string): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) return url
  if (/^https?:\/\//i.test(catalogLocation)) return new URL(url, catalogLocation).toString()
  const catalogPath = /^file:\/\//i.test(catalogLocation)
    ? fileURLToPath(catalogLocation)
    : resolvePath(catalogLocation)
  return isAbsolute(url) ? url : pathToFileURL(resolvePath(dirname(catalogPath), url)).toString()
}

/** Node's name for a CPU (process.arch) in the names catalogs use, Vagrant's: x64 → amd64, ia32 → i386; others as they are. */
export function catalogArchitecture(nodeArch: string): string {
  const names: Record<string, string> = {x64: 'amd64', ia32: 'i386'}
  return names[nodeArch] ?? nodeArch
}

/** This host's architecture in catalog names. */
export function hostArchitecture(): string {
  return catalogArchitecture(arch())
}

/**
 * Which architecture to take from a catalog, as Vagrant's `box_architecture` has it:
 * 'auto' (the default) this host's, with Vagrant's fallbacks; a name ("arm64") exactly
 * that one; null the entry the catalog flags `default_architecture`.
 */
export type ArchitectureChoice = 'auto' | string | null

export interface ResolveCatalogOptions {
  /** Version constraint (">= 1.2, < 2", "~> 1.4", "1.0.0"); default: any. */
  constraint?: string
  /** Acceptable provider names, preferred first (e.g. COMPATIBLE_BOX_PROVIDERS.qemu). */
  providers: readonly string[]
  /** Default 'auto': this host's (see pickProvider). */
  architecture?: ArchitectureChoice
}

export interface ResolvedCatalogBox {
  name: string
  version: string
  provider: CatalogProvider
  checksum?: Checksum
}

/** The newest version satisfying the constraint that has an acceptable provider; a clear error otherwise. */
export function resolveCatalog(catalog: Catalog, options: ResolveCatalogOptions): ResolvedCatalogBox {
  // A blank constraint (an empty --box-version) means any version.
  const requirements = options.constraint?.trim() ? parseUserConstraint(options.constraint) : undefined
  const available = catalog.versions.filter((version) => !UNAVAILABLE_STATUSES.has(version.status?.toLowerCase() ?? ''))
  const newestFirst = [...available].sort((a, b) => compareNewestFirst(a.version, b.version))
  // Not `??`: null (the default_architecture entry) is a choice of its own.
  const architecture = options.architecture === undefined ? 'auto' : options.architecture
  for (const version of newestFirst) {
    if (requirements && !satisfies(version.version, requirements)) continue
    const provider = pickProvider(version, options.providers, architecture)
    if (provider) {
      const checksum =
        provider.checksum_type && provider.checksum
          ? {type: provider.checksum_type, value: provider.checksum}
          : undefined
      return {name: catalog.name, version: version.version, provider, checksum}
    }
  }
  throw noMatchError(catalog, options, newestFirst)
}

/**
 * Whether `newer` (resolved from `catalog`) may replace the installed `current` version,
 * architecture-wise, as Vagrant's compatible_version_update? has it: not from an entry
 * for a known architecture to one marked "unknown", which cannot be verified (unless the
 * architecture choice is null). A current version the catalog no longer lists cannot be
 * compared: allowed. (Vagrant counts an entry without architecture as known; here it is
 * not, so a catalog from before architectures may move on to an "unknown" entry.)
 */
export function isCompatibleUpdate(
  catalog: Catalog,
  current: {version: string; providers: readonly string[]},
  newer: ResolvedCatalogBox,
  architecture: ArchitectureChoice = 'auto',
): boolean {
  if (architecture === null || newer.provider.architecture !== 'unknown') return true
  const entry = isVersion(current.version)
    ? catalog.versions.find((version) => compareVersions(version.version, current.version) === 0)
    : undefined
  const installed = entry && pickProvider(entry, current.providers, architecture)
  return !installed?.architecture || installed.architecture === 'unknown'
}

function pickProvider(
  version: CatalogVersion,
  providers: readonly string[],
  architecture: ArchitectureChoice,
): CatalogProvider | undefined {
  for (const name of providers) {
    const picked = pickArchitecture(
      version.providers.filter((provider) => provider.name === name),
      architecture,
    )
    if (picked) return picked
  }
  return undefined
}

/**
 * One provider's entries (one per architecture in Vagrant 2.4 catalogs) → the one to
 * download, by Vagrant's rules (BoxMetadata::Version#provider):
 * - a named architecture: only an entry for exactly it;
 * - 'auto': the host's; else the entry marked architecture "unknown" and
 *   default_architecture (how Vagrant Cloud serves boxes uploaded before architectures);
 * - null: the default_architecture entry;
 * - and for 'auto' and null, a catalog from before architectures (a single entry, no
 *   default_architecture field) gives that entry.
 */
function pickArchitecture(
  candidates: readonly CatalogProvider[],
  architecture: ArchitectureChoice,
): CatalogProvider | undefined {
  if (candidates.length === 0) return undefined
  if (architecture !== null) {
    const wanted = architecture === 'auto' ? hostArchitecture() : architecture
    const exact = candidates.find((provider) => provider.architecture === wanted)
    if (exact || architecture !== 'auto') return exact
    const unknown = candidates.find((provider) => provider.architecture === 'unknown' && provider.default_architecture)
    if (unknown) return unknown
  } else {
    const flagged = candidates.find((provider) => provider.default_architecture)
    if (flagged) return flagged
  }
  const legacy = candidates.length === 1 && candidates[0]!.default_architecture === undefined
  return legacy ? candidates[0] : undefined
}

function noMatchError(catalog: Catalog, options: ResolveCatalogOptions, newestFirst: CatalogVersion[]): BoxError {
  const wanted = [
    options.constraint?.trim() ? `version ${options.constraint.trim()}` : 'any version',
    `provider ${options.providers.join(' or ')}`,
    options.architecture === null
      ? 'the default architecture'
      : `architecture ${!options.architecture || options.architecture === 'auto' ? `${hostArchitecture()} (this host's)` : options.architecture}`,
  ].filter(Boolean)
  const listing = newestFirst.map((version) => {
    const providers = version.providers.map((provider) =>
      provider.architecture ? `${provider.name} (${provider.architecture})` : provider.name,
    )
    return `${version.version}: ${providers.length > 0 ? providers.join(', ') : 'no providers'}`
  })
  const hidden = catalog.versions.filter((version) => UNAVAILABLE_STATUSES.has(version.status?.toLowerCase() ?? ''))
  for (const version of hidden) listing.push(`${version.version}: ${version.status} (not offered)`)
  return new BoxError(`no version of ${catalog.name} matches ${wanted.join(', ')}`, {
    exitCode: ExitCode.USAGE,
    detail: listing.length > 0 ? `available:\n${listing.join('\n')}` : 'the catalog lists no versions',
    suggestions: ['pick a listed version with --box-version, or another provider with --provider'],
  })
}
