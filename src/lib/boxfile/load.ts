/**
 * Loading a Boxfile: find it (find.ts), parse it against the schema (schema.ts), then
 * resolve it (types.ts) with the checks that need more than one field or the host's
 * file system. Every problem is reported with file:line:col.
 */
import {homedir} from 'node:os'
import {basename, dirname, join, resolve} from 'node:path'

import type {z} from 'zod'

import {configError, loadYamlFile, parseYaml, type LoadedYaml} from '../core/config-file.js'
import {BoxError} from '../core/errors.js'
import {stat} from 'node:fs/promises'

import {exists, isDirectory, isFile} from '../core/fs.js'
import {findBoxfile} from './find.js'
import {
  BoxfileSchema,
  URL_SCHEME_PATTERN,
  type BoxfileSettings,
  type ForwardedPortSchema,
  type MachineSettings,
  type ProvisionerSchema,
  type SyncedFolderSchema,
} from './schema.js'
import {
  CHECKSUM_DIGITS,
  CHECKSUM_TYPES,
  DEFAULT_INIT_BOX,
  DEFAULT_MACHINE_NAME,
  MACHINE_DEFAULTS,
  type Checksum,
  type Boxfile,
  type MachineField,
  type Provisioner,
  type ResolvedMachine,
} from './types.js'

export interface LoadBoxfileOptions {
  /** Where to search from (default: the process's cwd). */
  cwd?: string
  /** A Boxfile path (relative to cwd): no search. */
  file?: string
}

/** Find (or take), parse and check the Boxfile; every problem is reported with file:line:col. */
export async function loadBoxfile(options: LoadBoxfileOptions = {}): Promise<Boxfile> {
  const cwd = options.cwd ?? process.cwd()
  const file = options.file ? resolve(cwd, options.file) : await findBoxfile(cwd)
  return resolveBoxfile(await loadYamlFile(file, BoxfileSchema, 'Boxfile'))
}

/** The Boxfile for `cwd` when one is found there or above (as loadBoxfile finds it), else undefined. */
export async function loadBoxfileIfFound(options: {cwd?: string} = {}): Promise<Boxfile | undefined> {
  const cwd = options.cwd ?? process.cwd()
  const file = await findBoxfile(cwd).catch(() => undefined)
  return file === undefined ? undefined : loadBoxfile({cwd, file})
}

/** Parse Boxfile text as if it were at `file` (relative paths start at its directory). */
export async function parseBoxfile(file: string, text: string): Promise<Boxfile> {
  return resolveBoxfile(parseYaml(resolve(file), text, BoxfileSchema, 'Boxfile'))
}

// ---------------------------------------------------------------------------
// Resolution and the checks that need more than one field or the file system.

type YamlPath = Array<string | number>

/** A list item with where it was written, so later checks can point at it. */
interface Located<T> {
  value: T
  path: YamlPath
  machine: string
}

type RawPort = z.infer<typeof ForwardedPortSchema>
type RawFolder = z.infer<typeof SyncedFolderSchema>
type RawProvisioner = z.infer<typeof ProvisionerSchema>

async function resolveBoxfile(loaded: LoadedYaml<BoxfileSettings>): Promise<Boxfile> {
  const dir = dirname(loaded.file)
  const {machines: machineSections, ...defaults} = loaded.value
  const problems: BoxError[] = []
  const problem = (path: YamlPath, message: string) => problems.push(configError(loaded, path, message, 'Boxfile'))

  const sections: Array<{name: string; path: YamlPath; settings: MachineSettings}> =
    machineSections === undefined
      ? [{name: DEFAULT_MACHINE_NAME, path: [], settings: {}}]
      : Object.entries(machineSections).map(([name, settings]) => ({name, path: ['machines', name], settings}))
  if (machineSections !== undefined && sections.length === 0)
    problem(['machines'], 'must name at least one machine (or leave out machines: for one machine named default)')
  checkMachineNamesDifferInCase(sections, problem)

  // Items written at the top level are checked once, however many machines inherit them.
  await checkListItems(defaults, [], dir, problem)
  for (const section of sections) await checkListItems(section.settings, section.path, dir, problem)

  const allPorts: Array<Located<RawPort>> = []
  const checksumProblem = reportOnce(problem)
  const machines: ResolvedMachine[] = []
  for (const {name, path, settings} of sections) {
    const box = settings.box ?? defaults.box
    if (box === undefined) {
      problem([...path, 'box'], `required: the name of a box in the store (see box list), e.g. ${DEFAULT_INIT_BOX}`)
      continue
    }
    const inherited = <T>(field: 'forwarded_ports' | 'synced_folders' | 'provisioners') =>
      [
        ...((defaults[field] ?? []) as T[]).map((value, index) => ({value, path: [field, index], machine: name})),
        ...((settings[field] ?? []) as T[]).map((value, index) => ({
          value,
          path: [...path, field, index],
          machine: name,
        })),
      ] as Array<Located<T>>
    const ports = inherited<RawPort>('forwarded_ports')
    const folders = inherited<RawFolder>('synced_folders')
    const provisioners = inherited<RawProvisioner>('provisioners')
    allPorts.push(...ports)
    checkUnique(
      folders,
      (folder) => (folder.disabled ? undefined : folder.destination),
      (first) => `destination is already synced from ${loaded.where(first.path)}`,
      problem,
    )
    checkUnique(
      provisioners,
      (provisioner) => provisioner.name,
      (first) => `another provisioner of machine ${name} has this name (${loaded.where(first.path)})`,
      problem,
    )

    const boxUrl = settings.box_url ?? defaults.box_url
    const ssh = {...defaults.ssh, ...settings.ssh}
    const boxDownloadChecksum = downloadChecksum(settings, defaults, path, boxUrl, checksumProblem)
    const caCert = settings.box_download_ca_cert ?? defaults.box_download_ca_cert
    machines.push({
      name,
      box,
      boxUrl: boxUrl === undefined ? undefined : URL_SCHEME_PATTERN.test(boxUrl) ? boxUrl : hostPath(dir, boxUrl),
      boxVersion: settings.box_version ?? defaults.box_version,
      boxDownloadChecksum,
      boxDownloadCaCert: caCert === undefined ? undefined : hostPath(dir, caCert),
      provider: settings.provider ?? defaults.provider ?? MACHINE_DEFAULTS.provider,
      cpus: settings.cpus ?? defaults.cpus ?? MACHINE_DEFAULTS.cpus,
      memoryMiB: settings.memory ?? defaults.memory ?? MACHINE_DEFAULTS.memoryMiB,
      resnap: settings.resnap ?? defaults.resnap ?? MACHINE_DEFAULTS.resnap,
      resnapSet: (settings.resnap ?? defaults.resnap) !== undefined,
      forwardedPorts: ports.map(({value}) => ({
        guest: value.guest,
        host: value.host,
        protocol: value.protocol,
        hostIp: value.host_ip,
      })),
      forwardPorts: settings.forward_ports ?? defaults.forward_ports ?? 'off',
      syncedFolders: folders.map(({value}) => ({
        source: hostPath(dir, value.source),
        destination: value.destination,
        exclude: value.exclude,
        disabled: value.disabled,
      })),
      provisioners: provisioners.map(({value}, index) => resolveProvisioner(value, index, dir)),
      ssh: {
        username: ssh.username,
        privateKeyPath: ssh.private_key_path === undefined ? undefined : hostPath(dir, ssh.private_key_path),
        forwardAgent: ssh.forward_agent ?? false,
      },
      hostname: settings.hostname ?? defaults.hostname,
      site: settings.site ?? defaults.site,
      directorPort: settings.director_port ?? defaults.director_port ?? MACHINE_DEFAULTS.directorPort,
    })
  }
  checkHostPorts(allPorts, loaded, problem)

  if (problems.length > 0) throw combineProblems(problems)
  const whereField = (machine: string, field: MachineField) => {
    const section = sections.find((candidate) => candidate.name === machine)
    if (section && section.settings[field] !== undefined) return loaded.where([...section.path, field])
    if (defaults[field] !== undefined) return loaded.where([field])
    return loaded.where(section?.path ?? [])
  }
  return {file: loaded.file, dir, machines, whereField}
}

function resolveProvisioner(raw: RawProvisioner, index: number, dir: string): Provisioner {
  if (raw.type === 'ansible') {
    return {
      type: 'ansible',
      name: raw.name ?? basename(raw.playbook),
      playbook: hostPath(dir, raw.playbook),
      extraVars: raw.extra_vars,
      inventoryGroups: raw.inventory_groups,
      limit: raw.limit,
      become: raw.become,
      run: raw.run,
    }
  }
  if (raw.type === 'file') {
    return {
      type: 'file',
      name: raw.name ?? `file #${index + 1}`,
      source: hostPath(dir, raw.source),
      destination: raw.destination,
      run: raw.run,
    }
  }
  return {
    type: 'shell',
    name: raw.name ?? (raw.path ? basename(raw.path) : `shell #${index + 1}`),
    inline: raw.inline,
    path: raw.path === undefined ? undefined : hostPath(dir, raw.path),
    args: raw.args,
    env: raw.env,
    privileged: raw.privileged,
    run: raw.run,
  }
}

type Report = (path: YamlPath, message: string) => void

/**
 * box_download_checksum(_type) as a machine inherits them (Vagrant's names); the type, when
 * left out, is told from the digest's length as `box add --checksum` does.
 */
function downloadChecksum(
  settings: MachineSettings,
  defaults: MachineSettings,
  path: YamlPath,
  boxUrl: string | undefined,
  once: Report,
): Checksum | undefined {
  const at = (field: 'box_download_checksum' | 'box_download_checksum_type'): YamlPath =>
    settings[field] === undefined ? [field] : [...path, field]
  const value = settings.box_download_checksum ?? defaults.box_download_checksum
  const type = settings.box_download_checksum_type ?? defaults.box_download_checksum_type
  if (value === undefined) {
    if (type !== undefined)
      once(at('box_download_checksum_type'), 'needs box_download_checksum (the digest to check the download against)')
    return undefined
  }
  if (boxUrl === undefined) {
    once(
      at('box_download_checksum'),
      'checks the download from box_url, which is not set (an installed box is not downloaded)',
    )
    return undefined
  }
  const digest = value.toLowerCase()
  const guessed = type ?? CHECKSUM_TYPES.find((candidate) => CHECKSUM_DIGITS[candidate] === digest.length)
  if (guessed === undefined) {
    once(
      at('box_download_checksum'),
      `cannot tell the type of a ${digest.length}-digit digest: set box_download_checksum_type (${CHECKSUM_TYPES.join(', ')})`,
    )
    return undefined
  }
  if (CHECKSUM_DIGITS[guessed] !== digest.length) {
    once(
      at('box_download_checksum'),
      `a ${guessed} digest has ${CHECKSUM_DIGITS[guessed]} hex digits, this one has ${digest.length}`,
    )
    return undefined
  }
  return {type: guessed, value: digest}
}

/** A Report that drops a problem already reported at the same place (top-level fields inherited by every machine). */
function reportOnce(problem: Report): Report {
  const seen = new Set<string>()
  return (where, message) => {
    const key = `${where.join('.')}\0${message}`
    if (!seen.has(key)) problem(where, message)
    seen.add(key)
  }
}

/** Per-item checks that need the file system or two fields at once. */
async function checkListItems(settings: MachineSettings, path: YamlPath, dir: string, problem: Report): Promise<void> {
  if (settings.ssh?.private_key_path !== undefined) {
    const key = hostPath(dir, settings.ssh.private_key_path)
    const info = await stat(key).catch(() => undefined)
    // OpenSSH ignores a private key others can read ("UNPROTECTED PRIVATE KEY FILE"): say so before booting.
    if (!info?.isFile()) problem([...path, 'ssh', 'private_key_path'], `no such file: ${key}`)
    else if ((info.mode & 0o077) !== 0)
      problem(
        [...path, 'ssh', 'private_key_path'],
        `${key} is readable by others (mode ${(info.mode & 0o777).toString(8).padStart(4, '0')}); ssh refuses such keys: chmod 600 ${key}`,
      )
  }
  if (settings.box_download_ca_cert !== undefined) {
    const file = hostPath(dir, settings.box_download_ca_cert)
    if (!(await isFile(file))) problem([...path, 'box_download_ca_cert'], `no such file: ${file}`)
  }
  for (const [index, folder] of (settings.synced_folders ?? []).entries()) {
    if (folder.disabled) continue
    const source = hostPath(dir, folder.source)
    if (!(await isDirectory(source)))
      problem([...path, 'synced_folders', index, 'source'], `no such directory: ${source}`)
  }
  for (const [index, provisioner] of (settings.provisioners ?? []).entries()) {
    const at: YamlPath = [...path, 'provisioners', index]
    if (provisioner.type === 'file') {
      const source = hostPath(dir, provisioner.source)
      if (!(await exists(source))) problem([...at, 'source'], `no such file or directory: ${source}`)
      continue
    }
    if (provisioner.type === 'ansible') {
      const playbook = hostPath(dir, provisioner.playbook)
      if (!(await isFile(playbook))) problem([...at, 'playbook'], `no such file: ${playbook}`)
      continue
    }
    if (provisioner.inline !== undefined && provisioner.path !== undefined) {
      problem([...at, 'path'], 'set either inline (a script in the Boxfile) or path (a script file), not both')
    } else if (provisioner.inline === undefined && provisioner.path === undefined) {
      problem(at, 'a shell provisioner needs inline (a script in the Boxfile) or path (a script file)')
    } else if (provisioner.path !== undefined) {
      const script = hostPath(dir, provisioner.path)
      if (!(await isFile(script))) problem([...at, 'path'], `no such file: ${script}`)
    }
  }
}

/** Report every item whose key was already seen (items with no key are skipped). */
function checkUnique<T>(
  items: Array<Located<T>>,
  keyOf: (item: T) => string | undefined,
  message: (first: Located<T>) => string,
  problem: Report,
): void {
  const seen = new Map<string, Located<T>>()
  for (const item of items) {
    const key = keyOf(item.value)
    if (key === undefined) continue
    const first = seen.get(key)
    if (first) problem(item.path, message(first))
    else seen.set(key, item)
  }
}

/** Two forwards of one host port/protocol clash when their addresses overlap (the same, or either is a wildcard). */
function checkHostPorts(ports: Array<Located<RawPort>>, loaded: LoadedYaml<unknown>, problem: Report): void {
  const wildcard = (ip: string) => ip === '0.0.0.0' || ip === '::'
  const reported = new Set<string>()
  const sharers = (path: YamlPath) =>
    ports
      .filter((port) => port.path.join('.') === path.join('.'))
      .map((port) => port.machine)
      .join(', ')
  for (const [index, item] of ports.entries()) {
    const clash = ports
      .slice(0, index)
      .find(
        (earlier) =>
          earlier.value.host === item.value.host &&
          earlier.value.protocol === item.value.protocol &&
          (earlier.value.host_ip === item.value.host_ip ||
            wildcard(earlier.value.host_ip) ||
            wildcard(item.value.host_ip)),
      )
    if (!clash) continue
    const key = item.path.join('.')
    if (reported.has(key)) continue
    reported.add(key)
    const hostPort = `host port ${item.value.host}/${item.value.protocol}`
    const sameLine = clash.path.join('.') === key
    problem(
      [...item.path, 'host'],
      sameLine
        ? `${hostPort} is set for every machine (${sharers(item.path)}), which cannot all forward it: give each machine its own under machines.NAME.forwarded_ports`
        : clash.machine === item.machine
          ? `${hostPort} is already forwarded at ${loaded.where([...clash.path, 'host'])}`
          : `${hostPort} is already forwarded by machine ${clash.machine} at ${loaded.where([...clash.path, 'host'])}`,
    )
  }
}

/** State directories live on file systems that may ignore case (macOS): Web and web would share one. */
function checkMachineNamesDifferInCase(sections: Array<{name: string; path: YamlPath}>, problem: Report): void {
  const seen = new Map<string, string>()
  for (const {name, path} of sections) {
    const first = seen.get(name.toLowerCase())
    if (first !== undefined)
      problem(path, `machine name differs from "${first}" only in case; machine names must differ in more than case`)
    else seen.set(name.toLowerCase(), name)
  }
}

/** One BoxError listing every problem; each came from configError as "invalid Boxfile F:\n  problem". */
function combineProblems(problems: BoxError[]): BoxError {
  if (problems.length === 1) return problems[0]!
  const [first] = problems
  const header = first!.message.split('\n')[0]!
  const lines = problems.flatMap((error) => error.message.split('\n').slice(1))
  return new BoxError([header, ...lines].join('\n'), {exitCode: first!.exitCode, suggestions: first!.suggestions})
}

/** A host path from the Boxfile: ~ is the home directory, relative paths start at the Boxfile's directory. */
function hostPath(dir: string, path: string): string {
  if (path === '~' || path.startsWith('~/')) return join(homedir(), path.slice(1))
  return resolve(dir, path)
}
