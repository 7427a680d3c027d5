/**
 * The Boxfile as the rest of box sees it: the resolved form (every default applied,
 * every host path absolute) and the constants its fields draw on. Imports no code (only
 * core's ForwardedPort type, which providers share), so anything may use these types
 * without loading the parser.
 */
import type {ForwardedPort} from '../core/ports.js'

/** The single machine's name when the Boxfile has no `machines:` section (Vagrant's too). */
export const DEFAULT_MACHINE_NAME = 'default'
/** The box `box init` writes when given none: the project's reference box. */
export const DEFAULT_INIT_BOX = 'debian-bookworm'

/** Digest lengths (hex digits) of the checksums a box download can be checked with. */
export const CHECKSUM_DIGITS = {md5: 32, sha1: 40, sha256: 64, sha384: 96, sha512: 128} as const
export const CHECKSUM_TYPES = Object.keys(CHECKSUM_DIGITS) as [
  keyof typeof CHECKSUM_DIGITS,
  ...Array<keyof typeof CHECKSUM_DIGITS>,
]
/** A digest to check a download against (the store's Checksum has the same shape). */
export interface Checksum {
  type: keyof typeof CHECKSUM_DIGITS
  value: string
}

export const PROVIDERS = ['qemu', 'virtualbox'] as const
export const RESNAP_POLICIES = ['always', 'never'] as const
export const PROVISIONER_RUNS = ['once', 'always', 'never'] as const
export const PROVISIONER_TYPES = ['shell', 'file', 'ansible'] as const
/** forward_ports: auto adds a forward for each TCP port that starts listening in the guest; off: only forwarded_ports. */
export const FORWARD_PORTS_MODES = ['auto', 'off'] as const
export const PROTOCOLS = ['tcp', 'udp'] as const

export type Provider = (typeof PROVIDERS)[number]
export type ResnapPolicy = (typeof RESNAP_POLICIES)[number]
export type ProvisionerRun = (typeof PROVISIONER_RUNS)[number]
export type Protocol = (typeof PROTOCOLS)[number]
export type ForwardPortsMode = (typeof FORWARD_PORTS_MODES)[number]

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

/** Machine names become state directory names under .box/. */
export const MACHINE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/

/** The fields a machine can set, at the top level (defaults for all) or under machines.NAME (schema.ts checks it is the schema's list). */
export type MachineField =
  | 'box'
  | 'box_url'
  | 'box_version'
  | 'box_download_checksum'
  | 'box_download_checksum_type'
  | 'box_download_ca_cert'
  | 'provider'
  | 'cpus'
  | 'memory'
  | 'resnap'
  | 'forwarded_ports'
  | 'forward_ports'
  | 'synced_folders'
  | 'provisioners'
  | 'ssh'
  | 'hostname'
  | 'site'
  | 'director_port'

// ---------------------------------------------------------------------------
// Resolved form: what the rest of box works with.

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

/** Runs ansible-playbook on the host against the machine, over the ssh settings `box ssh-config` prints. */
export interface AnsibleProvisioner {
  type: 'ansible'
  name: string
  /** Absolute host path of the playbook. */
  playbook: string
  /** Passed as a JSON file (--extra-vars @FILE): never on the command line. */
  extraVars: Record<string, unknown>
  /** Inventory groups (Vagrant's ansible.groups): group name → machine names. */
  inventoryGroups: Record<string, string[]>
  /** ansible-playbook --limit; default: the machine's name. */
  limit?: string
  become: boolean
  run: ProvisionerRun
}

export type Provisioner = ShellProvisioner | FileProvisioner | AnsibleProvisioner

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
  /** box_download_ca_cert: absolute host path of a PEM file of CAs trusted for box_url's HTTPS. */
  boxDownloadCaCert?: string
  provider: Provider
  cpus: number
  memoryMiB: number
  resnap: ResnapPolicy
  /**
   * The Boxfile itself says `resnap` (not the default). A box with neither the LVM layout
   * nor cloud-init gets host-side resnap only then: such boxes kept their root across boots
   * before host-side resnap existed, default or not.
   */
  resnapSet?: boolean
  forwardedPorts: ForwardedPort[]
  /** auto: TCP ports that start listening in the guest are forwarded too, while it runs. */
  forwardPorts?: ForwardPortsMode
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
  whereField(machine: string, field: MachineField): string
}
