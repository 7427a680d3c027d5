import {readFile, stat, writeFile} from 'node:fs/promises'
import {homedir} from 'node:os'
import {isIP} from 'node:net'
import {basename, dirname, join, resolve} from 'node:path'

import ejs from 'ejs'
import {z} from 'zod'

import {configError, loadYamlFile, parseYaml, type LoadedYaml} from '../core/config-file.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {PROJECT_ROOT} from '../core/paths.js'
import {BOXFILE_NAME, findBoxfile} from '../machine/project.js'
import {parseConstraint, VersionSyntaxError} from '../core/versions.js'

/** The single machine's name when the Boxfile has no `machines:` section (Vagrant's too). */
export const DEFAULT_MACHINE_NAME = 'default'
/** The box `box init` writes when given none: the project's reference box. */
export const DEFAULT_INIT_BOX = 'debian-bookworm'

export const PROVIDERS = ['qemu', 'virtualbox'] as const
export const RESNAP_POLICIES = ['always', 'never'] as const
export const PROVISIONER_RUNS = ['once', 'always', 'never'] as const
export const PROVISIONER_TYPES = ['shell', 'file'] as const
export const PROTOCOLS = ['tcp', 'udp'] as const

export type Provider = (typeof PROVIDERS)[number]
export type ResnapPolicy = (typeof RESNAP_POLICIES)[number]
export type ProvisionerRun = (typeof PROVISIONER_RUNS)[number]
export type Protocol = (typeof PROTOCOLS)[number]

/** Worker defaults: what a machine gets for every field the Boxfile leaves out. */
export const MACHINE_DEFAULTS = {
  provider: 'qemu' as Provider,
  cpus: 2,
  memoryMiB: 1024,
  resnap: 'always' as ResnapPolicy,
  hostIp: '127.0.0.1',
  protocol: 'tcp' as Protocol,
  privileged: true,
  run: 'once' as ProvisionerRun,
  /** The port a director serves its site's workers on (box secure opens it). */
  directorPort: 8443,
}

/** Store names: "name" or "org/name" as Vagrant catalogs spell them. */
export const BOX_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*(?:\/[A-Za-z0-9][A-Za-z0-9._-]*)?$/
/** Machine names become state directory names under .box/. */
export const MACHINE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/
const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/
const HOST_LABEL_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/
const URL_SCHEME_PATTERN = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//
/** Digest lengths (hex digits) of the checksums a box download can be checked with. */
const CHECKSUM_DIGITS = {md5: 32, sha1: 40, sha256: 64, sha384: 96, sha512: 128} as const
const CHECKSUM_TYPES = Object.keys(CHECKSUM_DIGITS) as [keyof typeof CHECKSUM_DIGITS, ...Array<keyof typeof CHECKSUM_DIGITS>]
/** A digest to check a download against (the store's Checksum has the same shape; the Boxfile imports no use case). */
export interface Checksum {
  type: keyof typeof CHECKSUM_DIGITS
  value: string
}
/** Below this a guest will not boot; a small number is almost always a forgotten "G". */
const MIN_MEMORY_MIB = 64

// ---------------------------------------------------------------------------
// Resolved form: what the rest of box works with.

export interface ForwardedPort {
  guest: number
  host: number
  protocol: Protocol
  hostIp: string
}

export interface SyncedFolder {
  /** Absolute host path. */
  source: string
  /** Absolute guest path. */
  destination: string
  exclude: string[]
  disabled: boolean
}

export interface ShellProvisioner {
  type: 'shell'
  /** The given name, else the script's file name, else "shell #N" (N counts from 1 in the machine's list). */
  name: string
  inline?: string
  /** Absolute host path of the script. */
  path?: string
  args: string[]
  env: Record<string, string>
  privileged: boolean
  run: ProvisionerRun
}

export interface FileProvisioner {
  type: 'file'
  name: string
  /** Absolute host path (file or directory). */
  source: string
  /** Guest path, absolute or ~/… */
  destination: string
  run: ProvisionerRun
}

export type Provisioner = ShellProvisioner | FileProvisioner

/** One machine with every default applied and every host path absolute. */
export interface ResolvedMachine {
  name: string
  box: string
  /** An http(s)/file URL, or an absolute path of a .box or catalog JSON. */
  boxUrl?: string
  /** A constraint such as ">= 1.2, < 2" (syntax already checked). */
  boxVersion?: string
  /** box_download_checksum(_type): checked while box_url's .box downloads. */
  boxDownloadChecksum?: Checksum
  provider: Provider
  cpus: number
  memoryMiB: number
  resnap: ResnapPolicy
  forwardedPorts: ForwardedPort[]
  syncedFolders: SyncedFolder[]
  /** Top-level provisioners first, then the machine's own (Vagrant's order). */
  provisioners: Provisioner[]
  /** privateKeyPath: absolute host path of a key the box trusts (used instead of a machine key). */
  ssh: {username?: string; privateKeyPath?: string; forwardAgent: boolean}
  hostname?: string
  site?: string
  directorPort: number
}

export interface Boxfile {
  /** Absolute path of the Boxfile. */
  file: string
  /** Its directory: the project directory, where relative paths start and .box/ lives. */
  dir: string
  machines: ResolvedMachine[]
  /** file:line:col of a machine's field: its own setting if it has one, else the top-level one. */
  whereField(machine: string, field: keyof MachineSettings): string
}

// ---------------------------------------------------------------------------
// Schema. Every object rejects unknown fields and lists the accepted ones; every
// message says what would be accepted.

/**
 * An object whose unknown fields are errors naming the accepted fields. (zod's
 * strictObject inside a record or union would lose the accepted list, so unknown
 * keys go through a catch-all that always fails with our message.)
 */
function closedObject<Shape extends z.ZodRawShape>(shape: Shape) {
  const message = `unknown field (accepted: ${Object.keys(shape).join(', ')})`
  const schema = z.object(shape).catchall(z.unknown().refine(() => false, {message, abort: true}))
  // The catch-all never lets a value through, so the parsed type has only the declared fields.
  return schema as unknown as z.ZodObject<Shape, z.core.$strip>
}

function oneOf<const Values extends readonly [string, ...string[]]>(values: Values) {
  return z.enum(values, {error: `must be one of: ${values.join(', ')}`})
}

/** A non-empty string; `description` completes "required: …" and "must be …". */
function text(description: string) {
  return z
    .string({error: (issue) => (issue.input === undefined ? `required: ${description}` : `must be ${description}`)})
    .min(1, `must not be empty: ${description}`)
}

const flag = () => z.boolean({error: 'must be true or false'})

const port = (which: string) =>
  z
    .number({error: (issue) => (issue.input === undefined ? `required: the ${which} port number (1-65535)` : 'must be a port number 1-65535')})
    .int('must be a port number 1-65535')
    .min(1, 'must be a port number 1-65535')
    .max(65_535, 'must be a port number 1-65535')

export function isHostName(name: string): boolean {
  return name.length <= 253 && name.split('.').every((label) => HOST_LABEL_PATTERN.test(label))
}

const hostName = (what: string) =>
  text(`a host name such as ${what}`).refine(isHostName, `must be a host name such as ${what} (letters, digits and "-" in dot-separated labels)`)

/**
 * Memory in MiB from a number of MiB or a string with a binary unit:
 * 1024, "1024", "512M", "512MiB", "2G", "1.5GB". undefined when not a whole number of MiB.
 */
export function parseMemory(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isInteger(value) && value > 0 ? value : undefined
  if (typeof value !== 'string') return undefined
  const match = /^\s*(\d+(?:\.\d+)?)\s*(?:([MGT])(?:i?B)?)?\s*$/i.exec(value)
  if (!match) return undefined
  const factor = {'': 1, M: 1, G: 1024, T: 1024 * 1024}[(match[2] ?? '').toUpperCase()] ?? 1
  const mib = Number(match[1]) * factor
  return Number.isInteger(mib) && mib > 0 ? mib : undefined
}

const memory = z.any().transform((value, ctx) => {
  const mib = parseMemory(value)
  if (mib === undefined) {
    ctx.addIssue({code: 'custom', message: 'must be MiB as a whole number (1024) or a size with a unit: "512M", "2G"'})
    return z.NEVER
  }
  if (mib < MIN_MEMORY_MIB) {
    ctx.addIssue({code: 'custom', message: `${mib} MiB is too small (at least ${MIN_MEMORY_MIB}; did you mean "${mib}G"?)`})
    return z.NEVER
  }
  return mib
})

const boxVersion = text('a version constraint such as ">= 1.2, < 2"').superRefine((constraint, ctx) => {
  try {
    parseConstraint(constraint)
  } catch (error) {
    if (!(error instanceof VersionSyntaxError)) throw error
    ctx.addIssue({code: 'custom', message: error.message})
  }
})

const boxUrl = text('a URL (https://…, file://…) or a path of a .box or a catalog JSON').refine((value) => {
  if (!URL_SCHEME_PATTERN.test(value)) return true
  try {
    return ['http:', 'https:', 'file:'].includes(new URL(value).protocol)
  } catch {
    return false
  }
}, 'must be an http://, https:// or file:// URL, or a path (relative to the Boxfile)')

const ForwardedPortSchema = closedObject({
  guest: port('guest'),
  host: port('host'),
  protocol: oneOf(PROTOCOLS).default(MACHINE_DEFAULTS.protocol),
  // Loopback unless the Boxfile says otherwise: exposing a guest to the network is a choice.
  host_ip: text('an IP address such as 127.0.0.1')
    .refine((ip) => isIP(ip) !== 0, 'must be an IP address such as 127.0.0.1 (0.0.0.0 exposes the port to the network)')
    .default(MACHINE_DEFAULTS.hostIp),
})

const SyncedFolderSchema = closedObject({
  source: text('a host directory (relative to the Boxfile)'),
  destination: text('an absolute guest path such as /srv/project').refine((path) => path.startsWith('/'), 'must be an absolute guest path such as /srv/project'),
  exclude: z.array(z.string({error: 'must be a list of rsync patterns'}), {error: 'must be a list of rsync patterns, e.g. [.git/, node_modules/]'}).default([]),
  disabled: flag().default(false),
})

const scalarText = z.union([z.string(), z.number(), z.boolean()], {error: 'must be a string, number or boolean'}).transform(String)

const ShellProvisionerSchema = closedObject({
  type: z.literal('shell'),
  name: text('a name for messages').optional(),
  inline: text('a shell script (text)').optional(),
  path: text('a script file (relative to the Boxfile)').optional(),
  args: z.array(scalarText, {error: 'must be a list of arguments, e.g. [--verbose, 2]'}).default([]),
  env: z
    .record(z.string().regex(ENV_NAME_PATTERN), scalarText, {
      error: (issue) =>
        issue.code === 'invalid_key' ? 'environment variable names use letters, digits and "_" and do not start with a digit' : 'must be a map of NAME: value',
    })
    .default({}),
  privileged: flag().default(MACHINE_DEFAULTS.privileged),
  run: oneOf(PROVISIONER_RUNS).default(MACHINE_DEFAULTS.run),
})

const FileProvisionerSchema = closedObject({
  type: z.literal('file'),
  name: text('a name for messages').optional(),
  source: text('a host file or directory (relative to the Boxfile)'),
  destination: text('a guest path such as /etc/app.conf or ~/app.conf').refine(
    (path) => path.startsWith('/') || path === '~' || path.startsWith('~/'),
    'must be an absolute guest path or one under ~/',
  ),
  run: oneOf(PROVISIONER_RUNS).default(MACHINE_DEFAULTS.run),
})

const ProvisionerSchema = z.discriminatedUnion('type', [ShellProvisionerSchema, FileProvisionerSchema], {
  error: (issue) =>
    (issue.code as string) === 'invalid_type'
      ? 'must be a provisioner such as {type: shell, inline: "echo hello"}'
      : `must be one of: ${PROVISIONER_TYPES.join(', ')}`,
})

const list = <Item extends z.ZodType>(item: Item, example: string) => z.array(item, {error: `must be a list, e.g. ${example}`})

/** Fields a machine can set, at the top level (defaults for all) or under machines.NAME. */
const machineShape = {
  box: text('the name of a box in the store (see box list), e.g. debian-bookworm').regex(
    BOX_NAME_PATTERN,
    'must be a box name such as debian-bookworm or org/name (letters, digits, ".", "_", "-")',
  ),
  box_url: boxUrl,
  box_version: boxVersion,
  box_download_checksum: text('the hex digest of the .box at box_url, as sha256sum prints it').regex(/^[0-9a-fA-F]+$/, 'must be a hex digest, as sha256sum prints it'),
  box_download_checksum_type: oneOf(CHECKSUM_TYPES),
  provider: oneOf(PROVIDERS),
  cpus: z.number({error: 'must be a whole number of CPUs, at least 1'}).int('must be a whole number of CPUs, at least 1').min(1, 'must be a whole number of CPUs, at least 1'),
  memory,
  resnap: oneOf(RESNAP_POLICIES),
  forwarded_ports: list(ForwardedPortSchema, '[{guest: 80, host: 8080}]'),
  synced_folders: list(SyncedFolderSchema, '[{source: ., destination: /srv/project}]'),
  provisioners: list(ProvisionerSchema, '[{type: shell, path: setup.sh}]'),
  ssh: closedObject({username: text('a user name').optional(), private_key_path: text('a private key file (relative to the Boxfile)').optional(), forward_agent: flag().optional()}),
  hostname: hostName('worker-1 or worker-1.example.org'),
  site: hostName('example.org'),
  director_port: port('director'),
}
type MachineShape = typeof machineShape
const MachineSettingsSchema = closedObject(
  Object.fromEntries(Object.entries(machineShape).map(([key, schema]) => [key, schema.optional()])) as {
    [K in keyof MachineShape]: z.ZodOptional<MachineShape[K]>
  },
)
export type MachineSettings = z.infer<typeof MachineSettingsSchema>

export const BoxfileSchema = closedObject({
  ...MachineSettingsSchema.shape,
  machines: z
    .record(
      z.string().regex(MACHINE_NAME_PATTERN),
      // `web:` with nothing under it is a machine with only the top-level settings.
      z.preprocess((value) => value ?? {}, MachineSettingsSchema),
      {
        error: (issue) =>
          issue.code === 'invalid_key'
            ? 'machine names use letters, digits, ".", "_", "-" and start with a letter or digit'
            : 'must be a map of machine names to their settings, e.g. {web: {memory: 2G}}',
      },
    )
    .optional(),
})
export type BoxfileSettings = z.infer<typeof BoxfileSchema>

// ---------------------------------------------------------------------------
// Finding and loading.

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
  if (machineSections !== undefined && sections.length === 0) problem(['machines'], 'must name at least one machine (or leave out machines: for one machine named default)')
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
        ...((settings[field] ?? []) as T[]).map((value, index) => ({value, path: [...path, field, index], machine: name})),
      ] as Array<Located<T>>
    const ports = inherited<RawPort>('forwarded_ports')
    const folders = inherited<RawFolder>('synced_folders')
    const provisioners = inherited<RawProvisioner>('provisioners')
    allPorts.push(...ports)
    checkUnique(folders, (folder) => (folder.disabled ? undefined : folder.destination), (first) => `destination is already synced from ${loaded.where(first.path)}`, problem)
    checkUnique(provisioners, (provisioner) => provisioner.name, (first) => `another provisioner of machine ${name} has this name (${loaded.where(first.path)})`, problem)

    const boxUrl = settings.box_url ?? defaults.box_url
    const ssh = {...defaults.ssh, ...settings.ssh}
    const boxDownloadChecksum = downloadChecksum(settings, defaults, path, boxUrl, checksumProblem)
    machines.push({
      name,
      box,
      boxUrl: boxUrl === undefined ? undefined : URL_SCHEME_PATTERN.test(boxUrl) ? boxUrl : hostPath(dir, boxUrl),
      boxVersion: settings.box_version ?? defaults.box_version,
      boxDownloadChecksum,
      provider: settings.provider ?? defaults.provider ?? MACHINE_DEFAULTS.provider,
      cpus: settings.cpus ?? defaults.cpus ?? MACHINE_DEFAULTS.cpus,
      memoryMiB: settings.memory ?? defaults.memory ?? MACHINE_DEFAULTS.memoryMiB,
      resnap: settings.resnap ?? defaults.resnap ?? MACHINE_DEFAULTS.resnap,
      forwardedPorts: ports.map(({value}) => ({guest: value.guest, host: value.host, protocol: value.protocol, hostIp: value.host_ip})),
      syncedFolders: folders.map(({value}) => ({
        source: hostPath(dir, value.source),
        destination: value.destination,
        exclude: value.exclude,
        disabled: value.disabled,
      })),
      provisioners: provisioners.map(({value}, index) => resolveProvisioner(value, index, dir)),
      ssh: {username: ssh.username, privateKeyPath: ssh.private_key_path === undefined ? undefined : hostPath(dir, ssh.private_key_path), forwardAgent: ssh.forward_agent ?? false},
      hostname: settings.hostname ?? defaults.hostname,
      site: settings.site ?? defaults.site,
      directorPort: settings.director_port ?? defaults.director_port ?? MACHINE_DEFAULTS.directorPort,
    })
  }
  checkHostPorts(allPorts, loaded, problem)

  if (problems.length > 0) throw combineProblems(problems)
  const whereField = (machine: string, field: keyof MachineSettings) => {
    const section = sections.find((candidate) => candidate.name === machine)
    if (section && section.settings[field] !== undefined) return loaded.where([...section.path, field])
    if (defaults[field] !== undefined) return loaded.where([field])
    return loaded.where(section?.path ?? [])
  }
  return {file: loaded.file, dir, machines, whereField}
}

function resolveProvisioner(raw: RawProvisioner, index: number, dir: string): Provisioner {
  if (raw.type === 'file') {
    return {type: 'file', name: raw.name ?? `file #${index + 1}`, source: hostPath(dir, raw.source), destination: raw.destination, run: raw.run}
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
 * left out, is told from the digest's length as `box add --checksum` does. A problem with a
 * top-level field is reported once, not once per machine.
 */
function downloadChecksum(settings: MachineSettings, defaults: MachineSettings, path: YamlPath, boxUrl: string | undefined, once: Report): Checksum | undefined {
  const at = (field: 'box_download_checksum' | 'box_download_checksum_type'): YamlPath => (settings[field] === undefined ? [field] : [...path, field])
  const value = settings.box_download_checksum ?? defaults.box_download_checksum
  const type = settings.box_download_checksum_type ?? defaults.box_download_checksum_type
  if (value === undefined) {
    if (type !== undefined) once(at('box_download_checksum_type'), 'needs box_download_checksum (the digest to check the download against)')
    return undefined
  }
  if (boxUrl === undefined) {
    once(at('box_download_checksum'), 'checks the download from box_url, which is not set (an installed box is not downloaded)')
    return undefined
  }
  const digest = value.toLowerCase()
  const guessed = type ?? CHECKSUM_TYPES.find((candidate) => CHECKSUM_DIGITS[candidate] === digest.length)
  if (guessed === undefined) {
    once(at('box_download_checksum'), `cannot tell the type of a ${digest.length}-digit digest: set box_download_checksum_type (${CHECKSUM_TYPES.join(', ')})`)
    return undefined
  }
  if (CHECKSUM_DIGITS[guessed] !== digest.length) {
    once(at('box_download_checksum'), `a ${guessed} digest has ${CHECKSUM_DIGITS[guessed]} hex digits, this one has ${digest.length}`)
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
    else if ((info.mode & 0o077) !== 0) problem([...path, 'ssh', 'private_key_path'], `${key} is readable by others (mode ${(info.mode & 0o777).toString(8).padStart(4, '0')}); ssh refuses such keys: chmod 600 ${key}`)
  }
  for (const [index, folder] of (settings.synced_folders ?? []).entries()) {
    if (folder.disabled) continue
    const source = hostPath(dir, folder.source)
    if (!(await isDirectory(source))) problem([...path, 'synced_folders', index, 'source'], `no such directory: ${source}`)
  }
  for (const [index, provisioner] of (settings.provisioners ?? []).entries()) {
    const at: YamlPath = [...path, 'provisioners', index]
    if (provisioner.type === 'file') {
      const source = hostPath(dir, provisioner.source)
      if (!(await exists(source))) problem([...at, 'source'], `no such file or directory: ${source}`)
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
function checkUnique<T>(items: Array<Located<T>>, keyOf: (item: T) => string | undefined, message: (first: Located<T>) => string, problem: Report): void {
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
  const sharers = (path: YamlPath) => ports.filter((port) => port.path.join('.') === path.join('.')).map((port) => port.machine).join(', ')
  for (const [index, item] of ports.entries()) {
    const clash = ports
      .slice(0, index)
      .find(
        (earlier) =>
          earlier.value.host === item.value.host &&
          earlier.value.protocol === item.value.protocol &&
          (earlier.value.host_ip === item.value.host_ip || wildcard(earlier.value.host_ip) || wildcard(item.value.host_ip)),
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
    if (first !== undefined) problem(path, `machine name differs from "${first}" only in case; machine names must differ in more than case`)
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

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  )
}

async function isFile(path: string): Promise<boolean> {
  return stat(path).then(
    (info) => info.isFile(),
    () => false,
  )
}

async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then(
    (info) => info.isDirectory(),
    () => false,
  )
}

// ---------------------------------------------------------------------------
// box init: a commented Boxfile from static/foruser/Boxfile.

export const BOXFILE_TEMPLATE = join(PROJECT_ROOT, 'static', 'foruser', 'Boxfile')

export interface NewBoxfileOptions {
  box?: string
  boxUrl?: string
  /** Only the box lines, no commented reference. */
  minimal?: boolean
}

/** The text `box init` writes; checked against the schema so init never writes a Boxfile validate rejects. */
export async function renderBoxfile(options: NewBoxfileOptions, file = resolve(BOXFILE_NAME)): Promise<string> {
  const box = options.box ?? DEFAULT_INIT_BOX
  if (!BOX_NAME_PATTERN.test(box)) {
    throw new BoxError(`invalid box name "${box}": use a name such as debian-bookworm or org/name (letters, digits, ".", "_", "-")`, {exitCode: ExitCode.USAGE})
  }
  const template = await readFile(BOXFILE_TEMPLATE, 'utf8')
  const rendered = ejs.render(template, {
    box,
    // JSON strings are valid YAML double-quoted scalars: safe for any URL or path.
    boxUrl: options.boxUrl === undefined ? undefined : JSON.stringify(options.boxUrl),
    minimal: options.minimal ?? false,
    defaults: MACHINE_DEFAULTS,
  })
  await parseBoxfile(file, rendered)
  return rendered
}

/** Write a new Boxfile; an existing one is kept unless `force`. Returns its path. */
export async function writeNewBoxfile(file: string, options: NewBoxfileOptions & {force?: boolean}): Promise<string> {
  const target = resolve(file)
  const text = await renderBoxfile(options, target)
  try {
    // 'wx' fails if the file exists, so two inits cannot both think they created it.
    await writeFile(target, text, {flag: options.force ? 'w' : 'wx'})
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new BoxError(`${target} already exists; not overwriting it`, {exitCode: ExitCode.USAGE, suggestions: ['box init --force to replace it']})
    }
    throw error
  }
  return target
}
