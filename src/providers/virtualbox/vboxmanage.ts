/**
 * The VBoxManage driver: one typed async function per subcommand box uses, each an
 * argument array (never a shell string), run with LC_ALL=C so VirtualBox's messages
 * come out in English and can be recognised. Failures become VBoxManageError with a
 * `kind` the provider can act on (missing VM, VM locked by a running session, NAT
 * rule conflict, VM not running).
 */
import {BoxError, tail} from '../../lib/core/errors.js'
import {run} from '../../lib/core/exec.js'

export const VBOXMANAGE = 'VBoxManage'

export type VBoxManageErrorKind = 'vm-not-found' | 'vm-locked' | 'vm-not-running' | 'nat-rule-conflict' | 'failed'

/** A failed VBoxManage call, classified from VirtualBox's own error text on stderr. */
export class VBoxManageError extends BoxError {
  constructor(
    message: string,
    readonly kind: VBoxManageErrorKind,
    readonly args: readonly string[],
    readonly stderr: string,
    /** VBoxManage's own exit code: 1 for a failed operation, 2 for a syntax error. */
    readonly vboxExitCode: number | undefined,
    options: {suggestions?: string[]; cause?: unknown} = {},
  ) {
    super(message, {detail: stderr ? tail(stderr) : undefined, suggestions: options.suggestions, cause: options.cause})
  }
}

/**
 * VirtualBox's messages (VBoxManage prefixes each line with "VBoxManage: error: "):
 * - missing VM: "Could not find a registered machine named 'x'" (VBOX_E_OBJECT_NOT_FOUND)
 * - VM in use by a session (running): "The machine 'x' is already locked for a session
 *   (or being unlocked)" / "… is already locked by a session (or being locked or unlocked)"
 *   (VBOX_E_INVALID_OBJECT_STATE), "Cannot unregister the machine 'x' while it is locked"
 * - controlvm on a stopped VM: "Machine 'x' is not currently running"
 * - NAT: "A NAT rule of this name already exists" / "A NAT rule for this host port and
 *   this host IP already exists" (NS_ERROR_INVALID_ARG)
 */
export function classifyVBoxManageError(stderr: string): VBoxManageErrorKind {
  if (/Could not find a registered machine|VBOX_E_OBJECT_NOT_FOUND/.test(stderr)) return 'vm-not-found'
  if (/A NAT rule (of this name|for this host port and this host IP) already exists/.test(stderr))
    return 'nat-rule-conflict'
  if (/is not currently running/.test(stderr)) return 'vm-not-running'
  if (/already locked (for|by) a session|while it is locked|VBOX_E_INVALID_OBJECT_STATE/.test(stderr))
    return 'vm-locked'
  return 'failed'
}

/** The error every command gets when VBoxManage is not on PATH. */
export function virtualBoxMissingError(cause?: unknown): BoxError {
  return new BoxError('VirtualBox is not installed: VBoxManage is not on PATH', {
    cause,
    suggestions: [
      "VirtualBox is not among Debian's packages (Debian stable does not ship it: apt-get install virtualbox finds nothing)",
      "get it from Oracle: https://www.virtualbox.org/wiki/Linux_Downloads (a .deb or Oracle's apt repository)",
      'or use QEMU instead: provider: qemu in the Boxfile',
      'check the host with: box doctor',
    ],
  })
}

/** Run VBoxManage; stdout on success, a classified VBoxManageError on failure. */
export async function vboxmanage(
  args: readonly string[],
  purpose: string,
  options: {timeoutMs?: number} = {},
): Promise<string> {
  try {
    const result = await run(VBOXMANAGE, args, {
      env: {LC_ALL: 'C'},
      stdin: 'ignore',
      timeout: options.timeoutMs,
      purpose,
    })
    return result.stdout
  } catch (error) {
    const cause = (error as {cause?: {code?: string; stderr?: unknown; exitCode?: number}}).cause
    if (cause?.code === 'ENOENT') throw virtualBoxMissingError(error)
    const stderr = typeof cause?.stderr === 'string' ? cause.stderr : ''
    const message = error instanceof Error ? error.message : String(error)
    throw new VBoxManageError(message, classifyVBoxManageError(stderr), args, stderr, cause?.exitCode, {cause: error})
  }
}

/** `VBoxManage --version` ("7.0.14r161095"). */
export async function vboxVersion(): Promise<string> {
  return (await vboxmanage(['--version'], 'asking VirtualBox for its version')).trim()
}

/** showvminfo --machinereadable: `key=value` lines, strings quoted, keys quoted when they hold spaces. */
export type MachineInfo = Map<string, string>

export function parseMachineReadable(text: string): MachineInfo {
  const info: MachineInfo = new Map()
  for (const line of text.split('\n')) {
    const match = /^("(?:[^"\\]|\\.)*"|[^=]+)=(.*)$/.exec(line.trim())
    if (!match) continue
    info.set(unquote(match[1]), unquote(match[2]))
  }
  return info
}

function unquote(value: string): string {
  if (value.length >= 2 && value.startsWith('"') && value.endsWith('"'))
    return value.slice(1, -1).replace(/\\(["\\])/g, '$1')
  return value
}

/** Full machine-readable info; throws VBoxManageError kind 'vm-not-found' for an unknown VM. */
export async function showVmInfo(vm: string): Promise<MachineInfo> {
  return parseMachineReadable(
    await vboxmanage(['showvminfo', vm, '--machinereadable'], `reading the state of VirtualBox VM ${vm}`),
  )
}

/** Info, or undefined when VirtualBox has no such VM (deleted by hand, never created). */
export async function findVm(vm: string): Promise<MachineInfo | undefined> {
  try {
    return await showVmInfo(vm)
  } catch (error) {
    if (error instanceof VBoxManageError && error.kind === 'vm-not-found') return undefined
    throw error
  }
}

/**
 * VirtualBox machine states (VMState=…) as the provider interface knows them. Transitional
 * and paused states hold a session, so they count as running: halt and destroy must stop them.
 */
export function machineStateOf(vmState: string | undefined): 'running' | 'poweroff' | 'aborted' {
  switch (vmState) {
    case 'poweroff':
    case 'saved':
    case 'teleported':
      return 'poweroff'
    case 'aborted':
    case 'aborted-saved':
      return 'aborted'
    default:
      // running, paused, stuck/gurumeditation, starting, stopping, saving, restoring, …
      return 'running'
  }
}

/** A NAT port-forwarding rule as `--natpf1` takes it and showvminfo prints it (`Forwarding(n)`). */
export interface NatRule {
  name: string
  protocol: 'tcp' | 'udp'
  hostIp: string
  hostPort: number
  guestIp: string
  guestPort: number
}

export function natRuleSpec(rule: NatRule): string {
  return [rule.name, rule.protocol, rule.hostIp, String(rule.hostPort), rule.guestIp, String(rule.guestPort)].join(',')
}

/** Rules of NAT adapter 1, from showvminfo's `Forwarding(0)="ssh,tcp,127.0.0.1,2222,,22"` lines. */
export function natRulesOf(info: MachineInfo): NatRule[] {
  const rules: NatRule[] = []
  for (const [key, value] of info) {
    if (!/^Forwarding\(\d+\)$/.test(key)) continue
    const [name, protocol, hostIp, hostPort, guestIp, guestPort] = value.split(',')
    rules.push({
      name,
      protocol: protocol === 'udp' ? 'udp' : 'tcp',
      hostIp,
      hostPort: Number(hostPort),
      guestIp,
      guestPort: Number(guestPort),
    })
  }
  return rules
}

/** Snapshot names of a VM (`SnapshotName`, `SnapshotName-1`, …). */
export function snapshotNamesOf(info: MachineInfo): string[] {
  return [...info].filter(([key]) => /^SnapshotName(-[\d-]+)?$/.test(key)).map(([, value]) => value)
}

/** `import OVF --vsys 0 --vmname NAME --basefolder DIR`: registers the appliance's first system as NAME. */
export async function importOvf(ovf: string, options: {name: string; baseFolder: string}): Promise<void> {
  await vboxmanage(
    ['import', ovf, '--vsys', '0', '--vmname', options.name, '--basefolder', options.baseFolder],
    `importing ${ovf} into VirtualBox`,
    {timeoutMs: 30 * 60_000},
  )
}

/** `createvm --register`: an empty VM for a converted disk. */
export async function createVm(options: {name: string; osType: string; baseFolder: string}): Promise<void> {
  await vboxmanage(
    ['createvm', '--name', options.name, '--ostype', options.osType, '--basefolder', options.baseFolder, '--register'],
    `creating VirtualBox VM ${options.name}`,
  )
}

/** `storagectl --add`: a storage controller (IDE takes no port count, SATA does). */
export async function addStorageController(
  vm: string,
  options: {name: string; bus: 'ide' | 'sata'; controller: 'PIIX4' | 'IntelAhci'; portCount?: number},
): Promise<void> {
  const args = ['storagectl', vm, '--name', options.name, '--add', options.bus, '--controller', options.controller]
  if (options.portCount !== undefined) args.push('--portcount', String(options.portCount))
  await vboxmanage(args, `adding a storage controller to ${vm}`)
}

/** `storageattach --type hdd`: attach a disk image (VDI/VMDK) to a controller port. */
export async function attachDisk(vm: string, options: {controller: string; port: number; disk: string}): Promise<void> {
  await vboxmanage(
    [
      'storageattach',
      vm,
      '--storagectl',
      options.controller,
      '--port',
      String(options.port),
      '--device',
      '0',
      '--type',
      'hdd',
      '--medium',
      options.disk,
    ],
    `attaching ${options.disk} to ${vm}`,
  )
}

/** `snapshot VM take NAME`: the fixed point linked clones hang from. */
export async function takeSnapshot(vm: string, name: string): Promise<void> {
  await vboxmanage(['snapshot', vm, 'take', name], `taking snapshot ${name} of ${vm}`)
}

/** `clonevm --snapshot S --options link --register`: a linked clone (differencing disks, nothing copied). */
export async function cloneVmLinked(
  source: string,
  options: {snapshot: string; name: string; baseFolder: string},
): Promise<void> {
  await vboxmanage(
    [
      'clonevm',
      source,
      '--snapshot',
      options.snapshot,
      '--options',
      'link',
      '--name',
      options.name,
      '--basefolder',
      options.baseFolder,
      '--register',
    ],
    `making ${options.name}, a linked clone of ${source}`,
  )
}

/** What `modifyvm` changes before a boot; only a powered-off VM accepts it. */
export interface VmSettings {
  cpus?: number
  memoryMiB?: number
  /** Attach adapter 1 to NAT (forwarded ports need it). */
  natAdapter?: boolean
  /** Adapter 1's emulated card: virtio-net is in every cloud kernel, e1000 in most desktop ones. */
  nicType?: 'virtio' | '82540EM'
  /** The guest clock is UTC (Linux guests expect it). */
  rtcUseUtc?: boolean
  /** COM1 written to this file (the serial console log). */
  serialLog?: string
  /** Rules of adapter 1 to delete, then rules to add (in one call, as Vagrant does). */
  deleteNatRules?: string[]
  addNatRules?: NatRule[]
}

export function modifyVmArgs(vm: string, settings: VmSettings): string[] {
  const args = ['modifyvm', vm]
  if (settings.cpus !== undefined) args.push('--cpus', String(settings.cpus))
  if (settings.memoryMiB !== undefined) args.push('--memory', String(settings.memoryMiB))
  // Several CPUs need an I/O APIC; VirtualBox refuses to start without it.
  if (settings.cpus !== undefined && settings.cpus > 1) args.push('--ioapic', 'on')
  if (settings.natAdapter) args.push('--nic1', 'nat')
  if (settings.nicType) args.push('--nictype1', settings.nicType)
  if (settings.rtcUseUtc !== undefined) args.push('--rtcuseutc', settings.rtcUseUtc ? 'on' : 'off')
  if (settings.serialLog) args.push('--uart1', '0x3F8', '4', '--uartmode1', 'file', settings.serialLog)
  for (const name of settings.deleteNatRules ?? []) args.push('--natpf1', 'delete', name)
  for (const rule of settings.addNatRules ?? []) args.push('--natpf1', natRuleSpec(rule))
  return args
}

export async function modifyVm(vm: string, settings: VmSettings): Promise<void> {
  await vboxmanage(modifyVmArgs(vm, settings), `configuring VirtualBox VM ${vm}`)
}

/** `setextradata VM KEY VALUE` (an empty value deletes the key). */
export async function setExtraData(vm: string, key: string, value: string): Promise<void> {
  await vboxmanage(['setextradata', vm, key, value], `setting ${key} of ${vm}`)
}

/** `startvm --type headless`: returns once VirtualBox has started the VM process. */
export async function startVmHeadless(vm: string): Promise<void> {
  await vboxmanage(['startvm', vm, '--type', 'headless'], `starting VirtualBox VM ${vm}`, {timeoutMs: 120_000})
}

/** `discardstate`: drop a saved (suspended) state, so the VM boots afresh and accepts modifyvm again. */
export async function discardSavedState(vm: string): Promise<void> {
  await vboxmanage(['discardstate', vm], `discarding the saved state of ${vm}`)
}

/** `controlvm acpipowerbutton`: asks the guest to shut down (it may ignore it). */
export async function pressAcpiPowerButton(vm: string): Promise<void> {
  await vboxmanage(['controlvm', vm, 'acpipowerbutton'], `asking ${vm} to shut down`)
}

/** `controlvm poweroff`: pulls the plug. */
export async function powerOffVm(vm: string): Promise<void> {
  await vboxmanage(['controlvm', vm, 'poweroff'], `powering off ${vm}`, {timeoutMs: 120_000})
}

/** `unregistervm` alone: forgets the VM, deletes nothing (for a base VM around a store disk). */
export async function unregisterVm(vm: string): Promise<void> {
  await vboxmanage(['unregistervm', vm], `unregistering VirtualBox VM ${vm}`)
}

/** `unregistervm --delete`: forgets the VM and deletes its settings, logs and its own disks. */
export async function unregisterVmAndDelete(vm: string): Promise<void> {
  await vboxmanage(['unregistervm', vm, '--delete'], `deleting VirtualBox VM ${vm}`, {timeoutMs: 10 * 60_000})
}
