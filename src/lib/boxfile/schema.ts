/**
 * The Boxfile's schema (zod). Every object rejects unknown fields and lists the accepted
 * ones; every message says what would be accepted.
 */
import {isIP} from 'node:net'

import {z} from 'zod'

import {boxNameProblem} from '../box/name.js'
import {constraintProblem} from '../core/versions.js'
import {
  CHECKSUM_TYPES,
  FORWARD_PORTS_MODES,
  MACHINE_DEFAULTS,
  MACHINE_NAME_PATTERN,
  PROTOCOLS,
  PROVIDERS,
  PROVISIONER_RUNS,
  PROVISIONER_TYPES,
  RESNAP_POLICIES,
  type MachineField,
} from './types.js'

const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/
const HOST_LABEL_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/
/** A box_url with a scheme is a URL; without one, a path relative to the Boxfile. */
export const URL_SCHEME_PATTERN = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//
/** Below this a guest will not boot; a small number is almost always a forgotten "G". */
const MIN_MEMORY_MIB = 64

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
    .number({
      error: (issue) =>
        issue.input === undefined ? `required: the ${which} port number (1-65535)` : 'must be a port number 1-65535',
    })
    .int('must be a port number 1-65535')
    .min(1, 'must be a port number 1-65535')
    .max(65_535, 'must be a port number 1-65535')

export function isHostName(name: string): boolean {
  return name.length <= 253 && name.split('.').every((label) => HOST_LABEL_PATTERN.test(label))
}

const hostName = (what: string) =>
  text(`a host name such as ${what}`).refine(
    isHostName,
    `must be a host name such as ${what} (letters, digits and "-" in dot-separated labels)`,
  )

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
    ctx.addIssue({
      code: 'custom',
      message: `${mib} MiB is too small (at least ${MIN_MEMORY_MIB}; did you mean "${mib}G"?)`,
    })
    return z.NEVER
  }
  return mib
})

const boxVersion = text('a version constraint such as ">= 1.2, < 2"').superRefine((constraint, ctx) => {
  const problem = constraintProblem(constraint)
  if (problem !== undefined) ctx.addIssue({code: 'custom', message: problem})
})

const boxUrl = text('a URL (https://…, file://…) or a path of a .box or a catalog JSON').refine((value) => {
  if (!URL_SCHEME_PATTERN.test(value)) return true
  try {
    return ['http:', 'https:', 'file:'].includes(new URL(value).protocol)
  } catch {
    return false
  }
}, 'must be an http://, https:// or file:// URL, or a path (relative to the Boxfile)')

export const ForwardedPortSchema = closedObject({
  guest: port('guest'),
  host: port('host'),
  protocol: oneOf(PROTOCOLS).default(MACHINE_DEFAULTS.protocol),
  // Loopback unless the Boxfile says otherwise: exposing a guest to the network is a choice.
  host_ip: text('an IP address such as 127.0.0.1')
    .refine((ip) => isIP(ip) !== 0, 'must be an IP address such as 127.0.0.1 (0.0.0.0 exposes the port to the network)')
    .default(MACHINE_DEFAULTS.hostIp),
})

export const SyncedFolderSchema = closedObject({
  source: text('a host directory (relative to the Boxfile)'),
  destination: text('an absolute guest path such as /srv/project').refine(
    (path) => path.startsWith('/'),
    'must be an absolute guest path such as /srv/project',
  ),
  exclude: z
    .array(z.string({error: 'must be a list of rsync patterns'}), {
      error: 'must be a list of rsync patterns, e.g. [.git/, node_modules/]',
    })
    .default([]),
  disabled: flag().default(false),
})

const scalarText = z
  .union([z.string(), z.number(), z.boolean()], {error: 'must be a string, number or boolean'})
  .transform(String)

const ShellProvisionerSchema = closedObject({
  type: z.literal('shell'),
  name: text('a name for messages').optional(),
  inline: text('a shell script (text)').optional(),
  path: text('a script file (relative to the Boxfile)').optional(),
  args: z.array(scalarText, {error: 'must be a list of arguments, e.g. [--verbose, 2]'}).default([]),
  env: z
    .record(z.string().regex(ENV_NAME_PATTERN), scalarText, {
      error: (issue) =>
        issue.code === 'invalid_key'
          ? 'environment variable names use letters, digits and "_" and do not start with a digit'
          : 'must be a map of NAME: value',
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

const ANSIBLE_GROUP_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/

const AnsibleProvisionerSchema = closedObject({
  type: z.literal('ansible'),
  name: text('a name for messages').optional(),
  playbook: text('a playbook file (relative to the Boxfile)'),
  extra_vars: z
    .record(z.string(), z.unknown(), {error: 'must be a map of variable names to values, e.g. {app_port: 8080}'})
    .default({}),
  inventory_groups: z
    .record(
      z.string().regex(ANSIBLE_GROUP_PATTERN),
      z.array(z.string().regex(MACHINE_NAME_PATTERN, 'must be a machine name'), {
        error: 'must be a list of machine names, e.g. [web, db]',
      }),
      {
        error: (issue) =>
          issue.code === 'invalid_key'
            ? 'group names use letters, digits and "_" and do not start with a digit (as Ansible wants)'
            : 'must be a map of group names to machine names, e.g. {webservers: [web]}',
      },
    )
    .default({}),
  limit: text('an Ansible host pattern such as web or "webservers:!db"').optional(),
  become: flag().default(false),
  run: oneOf(PROVISIONER_RUNS).default(MACHINE_DEFAULTS.run),
})

export const ProvisionerSchema = z.discriminatedUnion(
  'type',
  [ShellProvisionerSchema, FileProvisionerSchema, AnsibleProvisionerSchema],
  {
    error: (issue) =>
      (issue.code as string) === 'invalid_type'
        ? 'must be a provisioner such as {type: shell, inline: "echo hello"}'
        : `must be one of: ${PROVISIONER_TYPES.join(', ')}`,
  },
)

const list = <Item extends z.ZodType>(item: Item, example: string) =>
  z.array(item, {error: `must be a list, e.g. ${example}`})
/** Fields a machine can set, at the top level (defaults for all) or under machines.NAME. */
const machineShape = {
  box: text('the name of a box in the store (see box list), e.g. debian-bookworm').refine(
    (name) => boxNameProblem(name) === undefined,
    'must be a box name such as debian-bookworm or org/name (letters, digits, ".", "_", "-")',
  ),
  box_url: boxUrl,
  box_version: boxVersion,
  box_download_checksum: text('the hex digest of the .box at box_url, as sha256sum prints it').regex(
    /^[0-9a-fA-F]+$/,
    'must be a hex digest, as sha256sum prints it',
  ),
  box_download_checksum_type: oneOf(CHECKSUM_TYPES),
  box_download_ca_cert: text('a PEM file of CA certificates (relative to the Boxfile)'),
  provider: oneOf(PROVIDERS),
  cpus: z
    .number({error: 'must be a whole number of CPUs, at least 1'})
    .int('must be a whole number of CPUs, at least 1')
    .min(1, 'must be a whole number of CPUs, at least 1'),
  memory,
  resnap: oneOf(RESNAP_POLICIES),
  forwarded_ports: list(ForwardedPortSchema, '[{guest: 80, host: 8080}]'),
  forward_ports: oneOf(FORWARD_PORTS_MODES),
  synced_folders: list(SyncedFolderSchema, '[{source: ., destination: /srv/project}]'),
  provisioners: list(ProvisionerSchema, '[{type: shell, path: setup.sh}]'),
  ssh: closedObject({
    username: text('a user name').optional(),
    private_key_path: text('a private key file (relative to the Boxfile)').optional(),
    forward_agent: flag().optional(),
  }),
  hostname: hostName('worker-1 or worker-1.example.org'),
  site: hostName('example.org'),
  director_port: port('director'),
} satisfies Record<MachineField, z.ZodType>
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
