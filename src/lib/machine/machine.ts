// Modules that load zod (box-metadata, global-index) are imported where they are needed,
// not here: box ssh and box status load this module and must start fast.
import {randomUUID} from 'node:crypto'
import {mkdir, readFile, rm, writeFile, rename} from 'node:fs/promises'
import {join} from 'node:path'

import {QemuProvider} from '../../providers/qemu/index.js'
import {VirtualBoxProvider} from '../../providers/virtualbox/index.js'
import type {MachineHandle, MachineState, Provider} from '../../providers/provider.js'
import type {ResolvedMachine} from '../boxfile/boxfile.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {run, runAttached, spawn} from '../core/exec.js'
import {acquireLock} from '../core/lock.js'
import type {ForwardedPort} from '../core/ports.js'
import type {Progress} from '../core/progress.js'
import {replaceInsecureKeys, stageInsecureKeys} from './login-keys.js'
import {sshArgs, waitForSsh, type SshTarget} from './ssh.js'
import type {StoredBox} from '../store/store.js'

/** Everything about a machine that must survive between commands (`machine.json`). */
export interface MachineRecord {
  id: string
  name: string
  provider: string
  box: {name: string; version: string; provider: string; path: string}
  user: string
  sshPort?: number
  /** The machine's own key replaced the box's insecure one in the guest. */
  keyInstalled?: boolean
  /** The Boxfile's ssh.private_key_path: a key the box trusts, used on every boot instead of a machine key. */
  privateKeyPath?: string
  /** The guest file holding it: /persistent/… for boxes built by box, else ~/.ssh (in the root filesystem). */
  authorizedKeysFile?: string
  /** Forwards in force at the last boot (host ports may have moved off taken ones). */
  forwardedPorts?: ForwardedPort[]
  /** Provisioners with run: once have run (on the first successful `up`). */
  provisioned: boolean
  createdAt: string
}

export interface MachineContext {
  /** The Boxfile's directory; machines live in `.box/machines/<name>` under it. */
  projectDir: string
  dataDir: string
  cacheDir: string
  progress: Progress
  signal?: AbortSignal
  /** Where provisioner output goes, line by line (already prefixed with the machine name). */
  output?: (line: string) => void
  provider?: Provider
}

export function machineDir(projectDir: string, name: string): string {
  return join(projectDir, '.box', 'machines', name)
}

const files = (stateDir: string) => ({
  record: join(stateDir, 'machine.json'),
  key: join(stateDir, 'id_ed25519'),
  lock: join(stateDir, 'lock'),
})

/** One command at a time per machine: a second one waits briefly, then says who holds it. */
export async function lockMachine(stateDir: string, name: string): Promise<() => Promise<void>> {
  return acquireLock(files(stateDir).lock, {
    waitMs: 3000,
    busy: (pid) => new BoxError(`machine ${name} is busy: another box command (pid ${pid}) is working on it`, {suggestions: ['wait for that command to finish, then try again']}),
  })
}

export function providerFor(name: string, cacheDir: string): Provider {
  if (name === 'qemu') return new QemuProvider(cacheDir)
  if (name === 'virtualbox') return new VirtualBoxProvider()
  throw new BoxError(`provider "${name}" is not available in this version of box`, {
    exitCode: ExitCode.USAGE,
    suggestions: ['use provider: qemu in the Boxfile'],
  })
}

export async function readRecord(stateDir: string): Promise<MachineRecord | undefined> {
  try {
    return JSON.parse(await readFile(files(stateDir).record, 'utf8')) as MachineRecord
  } catch {
    return undefined
  }
}

async function writeRecord(stateDir: string, record: MachineRecord): Promise<void> {
  const target = files(stateDir).record
  await writeFile(`${target}.tmp`, `${JSON.stringify(record, null, 2)}\n`, {mode: 0o600})
  await rename(`${target}.tmp`, target)
}

/** The box a machine wants: the newest installed one its box_version allows, else fetched from box_url. */
async function resolveBox(context: MachineContext, machine: ResolvedMachine): Promise<StoredBox> {
  const {ensureBoxInstalled} = await import('../store/updates.js')
  return ensureBoxInstalled({
    dataDir: context.dataDir,
    cacheDir: context.cacheDir,
    name: machine.box,
    url: machine.boxUrl,
    checksum: machine.boxDownloadChecksum,
    constraint: machine.boxVersion,
    hostProvider: machine.provider,
    signal: context.signal,
    progress: context.progress,
  })
}

async function handleFor(stateDir: string, machine: ResolvedMachine, box: {path: string; metadata: StoredBox['metadata']}): Promise<MachineHandle> {
  const {BoxMetadataSchema} = await import('../box/metadata.js')
  return {
    name: machine.name,
    stateDir,
    // Parsed here (store listings keep metadata as stored): defaults such as kernel_args apply.
    box: {dir: box.path, metadata: BoxMetadataSchema.parse(box.metadata)},
    cpus: machine.cpus,
    memoryMiB: machine.memoryMiB,
    forwardedPorts: machine.forwardedPorts.map((p) => ({guest: p.guest, host: p.host, hostIp: p.hostIp, protocol: p.protocol})),
  }
}

export function sshTarget(stateDir: string, record: MachineRecord, provider: Provider): SshTarget {
  if (!record.sshPort) throw new BoxError(`machine ${record.name} has never been started`, {suggestions: ['start it: box up'] })
  return {host: '127.0.0.1', port: record.sshPort, user: record.user, keyFile: record.privateKeyPath ?? files(stateDir).key, controlPath: provider.sshControlPath({stateDir})}
}

/** The ssh target of a machine that must be running (ssh, provision, rsync); a clear error otherwise. */
export async function runningMachineTarget(context: Pick<MachineContext, 'projectDir' | 'cacheDir'>, machine: ResolvedMachine): Promise<SshTarget> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const provider = providerFor(machine.provider, context.cacheDir)
  const record = await readRecord(stateDir)
  if (!record || (await provider.state({stateDir})) !== 'running') {
    throw new BoxError(`machine ${machine.name} is not running`, {suggestions: [`start it: box up ${machine.name}`]})
  }
  return sshTarget(stateDir, record, provider)
}

/**
 * box ssh: an interactive shell with a TTY, or `command` (one shell string, as ssh takes it)
 * or `words` (each quoted for the remote shell); resolves to ssh's exit code.
 */
export async function sshSession(context: Pick<MachineContext, 'projectDir' | 'cacheDir'>, machines: readonly ResolvedMachine[], options: {command?: string; words: readonly string[]}): Promise<number> {
  if (machines.length !== 1) {
    throw new BoxError(`box ssh needs one machine; this Boxfile has ${machines.map((m) => m.name).join(', ')}`, {exitCode: ExitCode.USAGE, suggestions: [`name one: box ssh ${machines[0]!.name}`]})
  }
  const target = await runningMachineTarget(context, machines[0]!)
  const args = sshArgs(target, options.words, options.command)
  const interactive = options.command === undefined && options.words.length === 0
  return runAttached('ssh', interactive ? ['-t', ...args] : args)
}

export interface UpOptions {
  /** Override the Boxfile's resnap policy for this boot (`--no-resnap` → false). */
  resnap?: boolean
  /** Boot the origin instead of the snapshot. */
  base?: boolean
  /** Run provisioners even if they ran before. */
  provision?: boolean
  /** Skip provisioners. */
  noProvision?: boolean
  sshTimeoutMs?: number
}

export interface UpResult {
  name: string
  state: MachineState
  sshPort: number
  bootMs?: number
  alreadyRunning: boolean
}

/**
 * Create (first time) and boot a machine, wait for ssh, install its own key and
 * run its provisioners. Any failure or Ctrl-C after QEMU started stops QEMU again.
 */
export async function upMachine(context: MachineContext, machine: ResolvedMachine, options: UpOptions = {}): Promise<UpResult> {
  const stateDir = machineDir(context.projectDir, machine.name)
  await mkdir(stateDir, {recursive: true, mode: 0o700})
  const release = await lockMachine(stateDir, machine.name)
  try {
    const provider = context.provider ?? providerFor(machine.provider, context.cacheDir)
    let record = await readRecord(stateDir)
    let state = await provider.state({stateDir})
    if (state === 'running' && record?.sshPort) {
      context.progress.info(`${machine.name}: already running (ssh on 127.0.0.1:${record.sshPort})`)
      return {name: machine.name, state, sshPort: record.sshPort, alreadyRunning: true}
    }
    if (state === 'aborted') context.progress.warn(`${machine.name}: QEMU had died (aborted); starting it again`)

    let box: {path: string; metadata: StoredBox['metadata']}
    if (!record || state === 'not_created') {
      const stored = await resolveBox(context, machine)
      box = stored
      record = await createMachine(context, provider, stateDir, machine, stored)
      state = 'poweroff'
    } else {
      const metadata = JSON.parse(await readFile(join(record.box.path, 'metadata.json'), 'utf8'))
      box = {path: record.box.path, metadata}
    }
    const handle = await handleFor(stateDir, machine, box)
    const choice = {resnap: options.base ? false : (options.resnap ?? machine.resnap === 'always'), base: options.base}

    const boot = context.progress.stage(`${machine.name}: booting${choice.base ? ' the origin (--base)' : choice.resnap ? ' with resnap' : ''}`)
    const started = Date.now()
    let booted
    try {
      booted = await provider.start(handle, {choice, sshPort: record.sshPort, signal: context.signal})
      if (booted.sshPort !== record.sshPort && record.sshPort) context.progress.warn(`${machine.name}: port ${record.sshPort} is taken; ssh now on 127.0.0.1:${booted.sshPort}`)
      for (const forward of booted.forwardedPorts) {
        const wanted = handle.forwardedPorts.find((p) => p.guest === forward.guest && p.protocol === forward.protocol)
        if (wanted && wanted.host !== forward.host) context.progress.warn(`${machine.name}: host port ${wanted.host} is taken; guest port ${forward.guest} is forwarded from ${forward.hostIp}:${forward.host}`)
      }
      record = {...record, sshPort: booted.sshPort, forwardedPorts: booted.forwardedPorts, privateKeyPath: machine.ssh.privateKeyPath}
      await writeRecord(stateDir, record)
      const target = sshTarget(stateDir, record, provider)
      record = await waitForMachineSsh(stateDir, target, record, {
        timeoutMs: options.sshTimeoutMs ?? 300_000,
        isAlive: booted.isAlive,
        serialLog: booted.serialLog,
        sshListening: booted.sshListening,
        signal: context.signal,
        onAttempt: (ms) => boot.update(`waiting for ssh on 127.0.0.1:${booted!.sshPort} (${Math.round(ms / 1000)} s)`),
      })
      boot.done(`ssh on 127.0.0.1:${record.sshPort}`)
    } catch (error) {
      boot.fail()
      // No orphan QEMU: whatever went wrong (Ctrl-C included), stop what we started.
      await provider.halt({stateDir}, {force: true, timeoutMs: 0})
      throw context.signal?.aborted ? context.signal.reason : error
    }
    const bootMs = Date.now() - started

    if (machine.syncedFolders.some((folder) => !folder.disabled)) {
      const {syncFolders} = await import('./sync.js')
      await syncFolders(machine, sshTarget(stateDir, record, provider), {progress: context.progress, signal: context.signal})
    }
    if (!options.noProvision) {
      const {runProvisioners} = await import('./provision.js')
      const firstTime = !record.provisioned || options.provision === true
      await runProvisioners(context, machine, sshTarget(stateDir, record, provider), {firstTime})
      if (!record.provisioned) await writeRecord(stateDir, {...record, provisioned: true})
    }
    return {name: machine.name, state: 'running', sshPort: record.sshPort!, bootMs, alreadyRunning: false}
  } finally {
    await release()
  }
}

async function createMachine(context: MachineContext, provider: Provider, stateDir: string, machine: ResolvedMachine, stored: StoredBox): Promise<MachineRecord> {
  const stage = context.progress.stage(`${machine.name}: creating from ${stored.name} ${stored.version}`)
  const key = files(stateDir).key
  await rm(key, {force: true})
  await rm(`${key}.pub`, {force: true})
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `box-${machine.name}`, '-f', key], {purpose: 'creating the machine ssh key'})
  const record: MachineRecord = {
    id: randomUUID(),
    name: machine.name,
    provider: provider.name,
    box: {name: stored.name, version: stored.version, provider: stored.provider, path: stored.path},
    user: machine.ssh.username ?? stored.metadata.box?.user ?? 'vagrant',
    provisioned: false,
    createdAt: new Date().toISOString(),
  }
  await provider.create(await handleFor(stateDir, machine, stored))
  await writeRecord(stateDir, record)
  const {registerMachine} = await import('../store/machine-index.js')
  await registerMachine(context.dataDir, {id: record.id, name: machine.name, projectDir: context.projectDir, stateDir, provider: provider.name, box: {name: stored.name, version: stored.version, provider: stored.provider}})
  stage.done('linked clone, own ssh key')
  return record
}

/**
 * Wait for sshd. A machine fresh from its box only knows the insecure keys (login-keys.ts):
 * log in with those once and replace them by the machine's own key, used from then on.
 * The insecure login is one connection (a master, closed once the key is in place), and
 * the machine key's first login stays as the master for what follows.
 */
async function waitForMachineSsh(stateDir: string, target: SshTarget, record: MachineRecord, options: Parameters<typeof waitForSsh>[1]): Promise<MachineRecord> {
  if (record.keyInstalled || record.privateKeyPath) {
    await waitForSsh(target, options)
    return record
  }
  const insecure = await stageInsecureKeys(stateDir, record.box.path)
  let authorizedKeysFile: string
  const bootstrap = {...target, keyFile: insecure.keyFiles[0]!, moreKeyFiles: insecure.keyFiles.slice(1)}
  try {
    await waitForSsh(bootstrap, options)
    authorizedKeysFile = await replaceInsecureKeys(bootstrap, record.user, await readFile(`${target.keyFile}.pub`, 'utf8'))
  } finally {
    if (bootstrap.controlPath) await closeSshMaster(bootstrap.controlPath)
    await insecure.remove()
  }
  await waitForSsh(target, {...options, timeoutMs: 30_000})
  const updated = {...record, keyInstalled: true, authorizedKeysFile}
  await writeRecord(stateDir, updated)
  return updated
}

export async function haltMachine(context: Pick<MachineContext, 'projectDir' | 'cacheDir'>, machine: ResolvedMachine, options: {force?: boolean; timeoutMs?: number} = {}): Promise<'acpi' | 'forced' | 'not-running'> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const provider = providerFor(machine.provider, context.cacheDir)
  await closeSshMaster(provider.sshControlPath({stateDir}))
  return provider.halt({stateDir}, {force: options.force, timeoutMs: options.timeoutMs ?? 30_000})
}

export async function destroyMachine(context: Pick<MachineContext, 'projectDir' | 'cacheDir' | 'dataDir'>, machine: ResolvedMachine): Promise<boolean> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const record = await readRecord(stateDir)
  const provider = providerFor(machine.provider, context.cacheDir)
  await closeSshMaster(provider.sshControlPath({stateDir}))
  await provider.destroy({stateDir})
  await rm(stateDir, {recursive: true, force: true})
  if (record) {
    const {unregisterMachine} = await import('../store/machine-index.js')
    await unregisterMachine(context.dataDir, record.id)
  }
  return record !== undefined
}

async function closeSshMaster(controlPath: string): Promise<void> {
  await spawn('ssh', ['-o', `ControlPath=${controlPath}`, '-O', 'exit', 'box-machine'], {reject: false, stdin: 'ignore', timeout: 3000})
  await rm(controlPath, {force: true})
}
