import {COMPATIBLE_BOX_PROVIDERS} from '../box/metadata.js'
import {addBoxFromSource, identifySource, type AddFromSourceOptions} from './add.js'
import {isCompatibleUpdate, loadCatalog, resolveCatalog, type ArchitectureChoice, type Catalog} from './catalog.js'
import {hostProvidersOnThisHost, providersConvertibleFor} from './convert.js'
import {BoxError, ExitCode} from '../core/errors.js'
import type {HttpOptions} from './http.js'
import {getCatalogUrl, listBoxes, type StoredBox} from './query.js'
import {compareNewestFirst, compareVersions, isVersion, parseUserConstraint, satisfies} from '../core/versions.js'

/**
 * Boxes against their catalogs: what is installed, what is newer, and fetching it.
 * Providers are grouped by the host provider that runs them (qemu runs qemu and libvirt
 * boxes), so a libvirt box is "updated" by a newer qemu box just as well.
 */

/** The acceptable box providers for a box of `provider`, that provider first. */
function providerGroup(provider: string): string[] {
  const group = Object.values(COMPATIBLE_BOX_PROVIDERS).find((providers) => providers.includes(provider)) ?? [provider]
  return [provider, ...group.filter((candidate) => candidate !== provider)]
}

/** Host provider a box provider belongs to ("libvirt" → "qemu"); the box provider itself when unknown. */
export function hostProviderOf(provider: string): string {
  return Object.entries(COMPATIBLE_BOX_PROVIDERS).find(([, providers]) => providers.includes(provider))?.[0] ?? provider
}

const newestFirst = (a: StoredBox, b: StoredBox) => compareNewestFirst(a.version, b.version)

/** The newest installed box of `name` for these providers that satisfies the constraint. */
export async function findInstalledBox(
  dataDir: string,
  query: {name: string; constraint?: string; providers: readonly string[]},
): Promise<StoredBox | undefined> {
  if (query.constraint !== undefined) parseUserConstraint(query.constraint)
  const boxes = (await listBoxes(dataDir, {name: query.name}))
    .filter((box) => query.providers.includes(box.provider))
    .filter(
      (box) => query.constraint === undefined || (isVersion(box.version) && satisfies(box.version, query.constraint)),
    )
    .sort((a, b) => newestFirst(a, b) || query.providers.indexOf(a.provider) - query.providers.indexOf(b.provider))
  return boxes[0]
}

export interface EnsureBoxInstalledOptions extends Pick<
  AddFromSourceOptions,
  'dataDir' | 'cacheDir' | 'signal' | 'progress' | 'downloadOptions' | 'checksum'
> {
  name: string
  /** Boxfile's box_url: a catalog or .box, by URL or path. */
  url?: string
  /** Boxfile's box_version. */
  constraint?: string
  /** The machine's provider ("qemu", "virtualbox"): the box must run under it, as it is or converted. */
  hostProvider: string
}

/**
 * The box a machine needs: the newest installed one satisfying the constraint (converted
 * for the machine's provider once, when only another provider's box is installed), else
 * fetched from `url` (what `up` does for a missing box), else a clear error.
 */
export async function ensureBoxInstalled(options: EnsureBoxInstalledOptions): Promise<StoredBox> {
  const {dataDir, name, constraint, hostProvider} = options
  const providers = COMPATIBLE_BOX_PROVIDERS[hostProvider] ?? [hostProvider]
  const installed = await findInstalledBox(dataDir, {name, constraint, providers})
  if (installed) return installed
  const convertible = await findInstalledBox(dataDir, {
    name,
    constraint,
    providers: providersConvertibleFor(hostProvider),
  })
  if (convertible) {
    const {convertStoredBox} = await import('./import.js')
    return convertStoredBox({
      dataDir,
      box: convertible,
      hostProvider,
      signal: options.signal,
      progress: options.progress,
    })
  }
  const wanted = `${name}${constraint ? ` (${constraint})` : ''}`
  if (!options.url) {
    throw new BoxError(`box ${wanted} is not installed`, {
      suggestions: [
        `add it: box add ${name} FILE_OR_URL`,
        'or give box_url in the Boxfile so up fetches it',
        'list installed boxes: box list',
      ],
    })
  }
  options.progress?.info(`Box ${wanted} is not installed; fetching it from ${options.url}`)
  // A catalog offering only the other provider's box will do: it is converted on import.
  const added = await addBoxFromSource({
    ...options,
    source: options.url,
    version: constraint,
    providers: [...providers, ...providersConvertibleFor(hostProvider)],
    convertFor: [...new Set([...(await hostProvidersOnThisHost()), hostProvider])],
  })
  const forMachine = [added.box, ...added.converted].find((box) => providers.includes(box.provider))
  if (!forMachine)
    throw new BoxError(
      `${options.url} gave ${added.box.name} ${added.box.version} (${added.box.provider}), which the ${hostProvider} provider cannot run`,
    )
  return forMachine
}

export interface OutdatedEntry {
  name: string
  /** The installed box's provider (the newest installed version of this provider group). */
  provider: string
  installed: string
  latest?: string
  catalogUrl?: string
  status: 'outdated' | 'up-to-date' | 'no-catalog' | 'error'
  /** Why the catalog could not be checked. */
  error?: string
}

/** One row per box name and host provider: the newest installed version against its catalog. */
export async function checkOutdated(options: {
  dataDir: string
  name?: string
  signal?: AbortSignal
  architecture?: ArchitectureChoice
  /** HTTP settings for reading the catalogs (`--ca-cert`). */
  http?: HttpOptions
}): Promise<OutdatedEntry[]> {
  const boxes = await listBoxes(options.dataDir, {name: options.name})
  if (options.name !== undefined && boxes.length === 0) {
    throw new BoxError(`box ${options.name} is not installed`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['see the installed boxes with: box list'],
    })
  }
  const architecture = options.architecture
  const names = [...new Set(boxes.map((box) => box.name))]
  const rows = await Promise.all(
    names.map(async (name) => {
      const newestPerGroup = newestByHostProvider(boxes.filter((box) => box.name === name))
      const catalogUrl = await getCatalogUrl(options.dataDir, name)
      if (!catalogUrl)
        return newestPerGroup.map((box): OutdatedEntry => ({
          name,
          provider: box.provider,
          installed: box.version,
          status: 'no-catalog',
        }))
      const failed = (box: (typeof newestPerGroup)[number], error: unknown): OutdatedEntry => ({
        name,
        provider: box.provider,
        installed: box.version,
        catalogUrl,
        status: 'error',
        error: (error as Error).message,
      })
      let catalog
      try {
        catalog = await loadCatalog(catalogUrl, {...options.http, signal: options.signal})
      } catch (error) {
        return newestPerGroup.map((box) => failed(box, error))
      }
      return newestPerGroup.map((box): OutdatedEntry => {
        let latest: string | undefined
        let compatible = true
        try {
          const providers = providerGroup(box.provider)
          const resolved = resolveCatalog(catalog, {providers, architecture})
          compatible = isCompatibleUpdate(catalog, {version: box.version, providers}, resolved, architecture)
          // A newer version only for an "unknown" architecture is no update of a box for a known one (Vagrant's rule).
          latest = compatible ? resolved.version : box.version
        } catch (error) {
          return failed(box, error)
        }
        const newer = compatible && (isVersion(box.version) ? compareVersions(latest, box.version) > 0 : true)
        return {
          name,
          provider: box.provider,
          installed: box.version,
          latest,
          catalogUrl,
          status: newer ? 'outdated' : 'up-to-date',
        }
      })
    }),
  )
  return rows.flat()
}

/** The newest installed box of each host-provider group (qemu+libvirt, virtualbox). */
function newestByHostProvider(boxes: StoredBox[]): StoredBox[] {
  const byGroup = new Map<string, StoredBox>()
  for (const box of [...boxes].sort(newestFirst)) {
    const group = hostProviderOf(box.provider)
    if (!byGroup.has(group)) byGroup.set(group, box)
  }
  return [...byGroup.values()]
}

export interface UpdateTarget {
  name: string
  /** Only versions satisfying this (the Boxfile's box_version). */
  constraint?: string
  /** Catalog to use when the store has none for the box (the Boxfile's box_url). */
  url?: string
  /** Acceptable box providers, preferred first; default: the groups of the installed providers. */
  providers?: readonly string[]
  /** CA file to trust for this target's catalog and box (the Boxfile's box_download_ca_cert) unless the caller gives one. */
  caCertFile?: string
}

export interface UpdateResult {
  name: string
  provider?: string
  from?: string
  to?: string
  status: 'updated' | 'up-to-date' | 'no-catalog'
  catalogUrl?: string
}

export interface UpdateOptions extends Pick<
  AddFromSourceOptions,
  'dataDir' | 'cacheDir' | 'signal' | 'progress' | 'downloadOptions' | 'architecture'
> {
  targets: UpdateTarget[]
}

/** Add the newest catalog version allowed for each target when it is newer than what is installed. Old versions stay (see prune). */
export async function updateBoxes(options: UpdateOptions): Promise<UpdateResult[]> {
  const results: UpdateResult[] = []
  for (const target of options.targets) {
    if (target.constraint !== undefined) parseUserConstraint(target.constraint)
    const installed = await listBoxes(options.dataDir, {name: target.name})
    const groups = target.providers
      ? [target.providers]
      : newestByHostProvider(installed).map((box) => providerGroup(box.provider))
    if (groups.length === 0) groups.push(COMPATIBLE_BOX_PROVIDERS.qemu)
    // --ca-cert, else the Boxfile's box_download_ca_cert for this machine's box.
    const downloadOptions = {
      ...options.downloadOptions,
      caCertFile: options.downloadOptions?.caCertFile ?? target.caCertFile,
    }
    const source = await catalogFor(options.dataDir, target, options.signal, downloadOptions)
    if (!source) {
      results.push({name: target.name, status: 'no-catalog'})
      continue
    }
    const {catalog, catalogUrl} = source
    for (const providers of groups) {
      // Compare with what the constraint allows: an installed 2.0 does not serve "< 2".
      const current = installed
        .filter(
          (box) =>
            providers.includes(box.provider) &&
            (target.constraint === undefined || (isVersion(box.version) && satisfies(box.version, target.constraint))),
        )
        .sort(newestFirst)[0]
      const resolved = resolveCatalog(catalog, {
        constraint: target.constraint,
        providers,
        architecture: options.architecture,
      })
      const newer =
        !current ||
        ((!isVersion(current.version) || compareVersions(resolved.version, current.version) > 0) &&
          isCompatibleUpdate(catalog, {version: current.version, providers}, resolved, options.architecture))
      if (!newer) {
        results.push({
          name: target.name,
          provider: current.provider,
          from: current.version,
          to: current.version,
          status: 'up-to-date',
          catalogUrl,
        })
        continue
      }
      const {dataDir, cacheDir, signal, progress, architecture} = options
      const {box} = await addBoxFromSource({
        dataDir,
        cacheDir,
        signal,
        progress,
        downloadOptions,
        architecture,
        // The catalog's name must be the box's: a mismatch is an error, not a different box.
        name: target.name,
        source: catalogUrl,
        version: `= ${resolved.version}`,
        providers,
      })
      results.push({
        name: target.name,
        provider: box.provider,
        from: current?.version,
        to: box.version,
        status: 'updated',
        catalogUrl,
      })
    }
  }
  return results
}

/** The catalog remembered in the store, else the target's URL when that is a catalog (not a .box). */
async function catalogFor(
  dataDir: string,
  target: UpdateTarget,
  signal?: AbortSignal,
  http: HttpOptions = {},
): Promise<{catalog: Catalog; catalogUrl: string} | undefined> {
  const stored = await getCatalogUrl(dataDir, target.name)
  if (stored) return {catalog: await loadCatalog(stored, {...http, signal}), catalogUrl: stored}
  if (!target.url) return undefined
  const source = await identifySource(target.url, {timeoutMs: http.timeoutMs, caCertFile: http.caCertFile, signal})
  return source.kind === 'catalog' ? {catalog: source.catalog, catalogUrl: source.location} : undefined
}

/** What a machine asks of the store: the Boxfile's box, box_version, box_url and provider (a ResolvedMachine will do). */
export interface MachineBoxRequest {
  box: string
  boxVersion?: string
  boxUrl?: string
  provider: string
  boxDownloadCaCert?: string
}

/**
 * What `box update` without a name updates: the boxes of the project's machines (with
 * their box_version and box_url) when the caller found a Boxfile, else every installed
 * box that came from a catalog.
 */
export async function updateTargets(options: {
  dataDir: string
  machines?: readonly MachineBoxRequest[]
}): Promise<UpdateTarget[]> {
  if (options.machines) {
    const seen = new Set<string>()
    const targets: UpdateTarget[] = []
    for (const machine of options.machines) {
      const providers = COMPATIBLE_BOX_PROVIDERS[machine.provider] ?? [machine.provider]
      const key = JSON.stringify([machine.box, machine.boxVersion, providers])
      if (seen.has(key)) continue
      seen.add(key)
      targets.push({
        name: machine.box,
        constraint: machine.boxVersion,
        url: machine.boxUrl,
        providers,
        caCertFile: machine.boxDownloadCaCert,
      })
    }
    return targets
  }
  const names = [...new Set((await listBoxes(options.dataDir)).map((box) => box.name))]
  const withCatalog = await Promise.all(
    names.map(async (name) => ((await getCatalogUrl(options.dataDir, name)) ? name : undefined)),
  )
  return withCatalog.filter((name): name is string => name !== undefined).map((name) => ({name}))
}
