/** `box up`: create a machine the first time, boot it, wait for ssh, install its key, sync folders and provision. */
import {randomUUID} from 'node:crypto'
import {mkdir, readFile, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {providerFor} from '../../providers/index.js'
import type {MachineHandle, MachineState, Provider, Started} from '../../providers/provider.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {run} from '../core/exec.js'
import type {StoredBox} from '../store/query.js'
import {
  lockMachine,
  machineDir,
  machineFiles,
  readRecord,
  writeRecord,
  type MachineContext,
  type MachineRecord,
} from './context.js'
import {persistentMountScript, seedHostname} from '../box/cloud-init.js'
import {BoxError} from '../core/errors.js'
import {forgetHostKeys, parseHostKeyPairs, readKnownHosts, writeKnownHosts, type HostKey} from './host-keys.js'
import {closeSshMaster, waitForMachineSsh, type HostKeySource} from './keys.js'
import {sshRun, type SshTarget} from './ssh.js'
import {sshTarget} from './ssh-session.js'

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
    downloadOptions: {caCertFile: machine.boxDownloadCaCert},
  })
}

export async function handleFor(
  stateDir: string,
  machine: ResolvedMachine,
  box: {path: string; metadata: StoredBox['metadata']},
): Promise<MachineHandle> {
  const {BoxMetadataSchema} = await import('../box/metadata.js')
  return {
    name: machine.name,
    stateDir,
    // Parsed here (store listings keep metadata as stored): defaults such as kernel_args apply.
    box: {dir: box.path, metadata: BoxMetadataSchema.parse(box.metadata)},
    cpus: machine.cpus,
    memoryMiB: machine.memoryMiB,
    forwardedPorts: machine.forwardedPorts.map((p) => ({
      guest: p.guest,
      host: p.host,
      hostIp: p.hostIp,
      protocol: p.protocol,
    })),
  }
}

export interface UpOptions {
  /** Override the Boxfile's resnap policy for this boot (`--no-resnap` → false). */
  resnap?: boolean
  /** Boot the origin instead of the snapshot. */
  base?: boolean
  /**
   * Which provisioners run: 'pending' (the default) the run: once ones not run yet and the
   * run: always ones; 'all' the run: once ones again too (`--provision`); 'none' none (`--no-provision`).
   */
  provision?: 'pending' | 'all' | 'none'
  sshTimeoutMs?: number
  /** Forget the machine's pinned host key and learn it again (`--reset-host-key`), at once if it runs. */
  resetHostKey?: boolean
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
export async function upMachine(
  context: MachineContext,
  machine: ResolvedMachine,
  options: UpOptions = {},
): Promise<UpResult> {
  const stateDir = machineDir(context.projectDir, machine.name)
  await mkdir(stateDir, {recursive: true, mode: 0o700})
  const release = await lockMachine(stateDir, machine.name)
  try {
    const provider = providerFor(machine.provider, context.cacheDir)
    let record = await readRecord(stateDir)
    let state = await provider.state({stateDir})
    if (options.resetHostKey && (await forgetHostKeys(stateDir)))
      context.progress.info(`${machine.name}: forgot the pinned ssh host key`)
    if (state === 'running' && record?.sshPort) {
      if (options.resetHostKey) {
        // No master may carry on past the forgotten key: the next login is the one that learns it.
        await closeSshMaster(provider.sshControlPath({stateDir}))
        const learned = await waitForMachineSsh(stateDir, sshTarget(stateDir, record, provider), record, {
          timeoutMs: 60_000,
          agentHostKeys: agentHostKeys(provider, stateDir),
          listening: true,
        })
        reportHostKey(context, machine.name, learned.hostKeySource)
      }
      context.progress.info(`${machine.name}: already running (ssh on 127.0.0.1:${record.sshPort})`)
      return {name: machine.name, state, sshPort: record.sshPort, alreadyRunning: true}
    }
    if (state === 'aborted') context.progress.warn(`${machine.name}: QEMU had died (aborted); starting it again`)

    let box: {path: string; metadata: StoredBox['metadata']}
    const created = !record || state === 'not_created'
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
    const cloudInit = handle.box.metadata.box?.cloud_init === true
    const hostResnap = await prepareHostSide(context, provider, handle, machine, record, {
      resnap: choice.resnap,
      asked: options.resnap === true,
      freshOverlay: created,
    })
    if (hostResnap.keyGone) record = {...record, keyInstalled: false, authorizedKeysFile: undefined}

    const boot = context.progress.stage(
      `${machine.name}: booting${choice.base ? ' the origin (--base)' : choice.resnap ? (hostResnap.reset ? ' with resnap (a fresh disk)' : ' with resnap') : ''}`,
    )
    const started = Date.now()
    let booted
    try {
      booted = await provider.start(handle, {choice, sshPort: record.sshPort, signal: context.signal})
      if (booted.sshPort !== record.sshPort && record.sshPort)
        context.progress.warn(
          `${machine.name}: port ${record.sshPort} is taken; ssh now on 127.0.0.1:${booted.sshPort}`,
        )
      for (const forward of booted.forwardedPorts) {
        const wanted = handle.forwardedPorts.find((p) => p.guest === forward.guest && p.protocol === forward.protocol)
        if (wanted && wanted.host !== forward.host)
          context.progress.warn(
            `${machine.name}: host port ${wanted.host} is taken; guest port ${forward.guest} is forwarded from ${forward.hostIp}:${forward.host}`,
          )
        if (!isLoopback(forward.hostIp))
          context.progress.warn(
            `${machine.name}: guest port ${forward.guest}/${forward.protocol} is forwarded from ${forward.hostIp}:${forward.host}, which other hosts can reach (the Boxfile's host_ip)`,
          )
      }
      record = {
        ...record,
        sshPort: booted.sshPort,
        forwardedPorts: booted.forwardedPorts,
        privateKeyPath: machine.ssh.privateKeyPath,
      }
      await writeRecord(stateDir, record)
      const target = sshTarget(stateDir, record, provider)
      if (cloudInit) await pinSeedHostKey(context, machine.name, stateDir, target)
      // One counter for the whole wait: a first boot waits twice (the box's key, then the machine's own), and each wait counts from 0.
      const waitStarted = Date.now()
      const reached = await waitForMachineSsh(stateDir, target, record, {
        timeoutMs: options.sshTimeoutMs ?? 300_000,
        isAlive: booted.isAlive,
        serialLog: booted.serialLog,
        sshListening: booted.sshListening,
        agentHostKeys: booted.sshListening ? agentHostKeys(provider, stateDir) : undefined,
        signal: context.signal,
        timeoutReason: cloudInit ? CLOUD_INIT_SSH_TIMEOUT : undefined,
        onAttempt: () =>
          boot.update(
            `waiting for ssh on 127.0.0.1:${booted!.sshPort} (${Math.round((Date.now() - waitStarted) / 1000)} s)`,
          ),
      })
      record = reached.record
      boot.done(`ssh on 127.0.0.1:${record.sshPort}`)
      reportHostKey(context, machine.name, reached.hostKeySource)
    } catch (error) {
      boot.fail()
      // No orphan QEMU: whatever went wrong (Ctrl-C included), stop what we started.
      await provider.halt({stateDir}, {force: true, timeoutMs: 0})
      throw context.signal?.aborted ? context.signal.reason : error
    }
    const bootMs = Date.now() - started
    if (machine.forwardPorts === 'auto') await startAutoForwarding(context, machine.name, provider, stateDir, booted)

    if (hostResnap.mountPersistent) await mountPersistentOverSsh(sshTarget(stateDir, record, provider))
    // A cloud image's seed names it; any other box is told at every boot (a resnap boot starts from the box's /etc).
    if (machine.hostname && !cloudInit) await setGuestHostname(sshTarget(stateDir, record, provider), machine.hostname)

    if (machine.syncedFolders.some((folder) => !folder.disabled)) {
      const {syncFolders} = await import('./sync.js')
      await syncFolders(machine, sshTarget(stateDir, record, provider), {
        progress: context.progress,
        signal: context.signal,
      })
    }
    if (options.provision !== 'none') {
      const {runProvisioners} = await import('./provision.js')
      const firstTime = !record.provisioned || options.provision === 'all'
      await runProvisioners(context, machine, sshTarget(stateDir, record, provider), {firstTime})
      if (!record.provisioned) await writeRecord(stateDir, {...record, provisioned: true})
    }
    return {name: machine.name, state: 'running', sshPort: record.sshPort!, bootMs, alreadyRunning: false}
  } finally {
    await release()
  }
}

/** 127.0.0.0/8 and ::1: a forward only this host can reach. */
function isLoopback(ip: string): boolean {
  return ip.startsWith('127.') || ip === '::1'
}

/**
 * The Boxfile's hostname in the running guest, in /etc/hostname and as 127.0.1.1 in /etc/hosts
 * (Debian's place for it: sudo and hostname -f resolve it). The name is a checked host name,
 * passed as an argument, never spliced into the script.
 */
async function setGuestHostname(target: SshTarget, name: string): Promise<void> {
  const script = [
    'set -e',
    // eslint-disable-next-line no-template-curly-in-string -- shell parameter expansion, not a JS template
    'name=$1 short=${1%%.*}',
    'echo "$name" > /proc/sys/kernel/hostname',
    'echo "$name" > /etc/hostname',
    'aliases=$name',
    '[ "$short" = "$name" ] || aliases="$name $short"',
    `{ grep -v '^127[.]0[.]1[.]1[[:space:]]' /etc/hosts || true; printf '127.0.1.1\\t%s\\n' "$aliases"; } > /etc/hosts.box`,
    'mv /etc/hosts.box /etc/hosts',
  ].join('\n')
  await sshRun(target, ['sudo', '-n', 'sh', '-c', script, 'sh', name], {
    timeoutMs: 60_000,
    purpose: `setting the host name ${name}`,
  })
}

/** forward_ports: auto — the watcher (auto-forward.ts), once the guest's agent has shown it can tell which ports listen. */
async function startAutoForwarding(
  context: MachineContext,
  name: string,
  provider: Provider,
  stateDir: string,
  booted: Started,
): Promise<void> {
  const {startAutoForward} = await import('./auto-forward.js')
  const without = 'forward_ports: auto is off for this boot, only forwarded_ports apply'
  if (!provider.addForward || !provider.askAgent || !booted.sshListening) {
    context.progress.warn(`${name}: ${without} (it needs box-agent in the guest and the QEMU provider)`)
    return
  }
  try {
    await provider.askAgent({stateDir}, 'tcp-listeners', {timeoutMs: 5000})
  } catch (error) {
    context.progress.warn(
      `${name}: ${without}: the guest's box-agent does not report listening ports (${(error as Error).message}); a box built with this box version does`,
    )
    return
  }
  await startAutoForward(stateDir, provider.name)
}

/** The guest's host keys from its box-agent (`host-keys`); undefined when the agent cannot tell (an older one refuses). */
function agentHostKeys(provider: Provider, stateDir: string): (() => Promise<HostKey[] | undefined>) | undefined {
  if (!provider.askAgent) return undefined
  return async () => {
    const answer = await provider.askAgent!({stateDir}, 'host-keys', {timeoutMs: 10_000}).catch(() => undefined)
    return answer === undefined ? undefined : parseHostKeyPairs(answer)
  }
}

function reportHostKey(context: MachineContext, name: string, source: HostKeySource): void {
  switch (source) {
    case 'agent': {
      context.progress.info(`${name}: ssh host key pinned (told by the guest's agent)`)
      break
    }
    case 'console': {
      context.progress.info(`${name}: ssh host key pinned (the one its console printed)`)
      break
    }
    case 'first-use': {
      context.progress.warn(`${name}: ssh host key pinned on first use (the guest could not tell it beforehand)`)
      break
    }
    case 'pinned': {
      break
    }
  }
}

async function createMachine(
  context: MachineContext,
  provider: Provider,
  stateDir: string,
  machine: ResolvedMachine,
  stored: StoredBox,
): Promise<MachineRecord> {
  const stage = context.progress.stage(`${machine.name}: creating from ${stored.name} ${stored.version}`)
  const key = machineFiles(stateDir).key
  await rm(key, {force: true})
  await rm(`${key}.pub`, {force: true})
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `box-${machine.name}`, '-f', key], {
    purpose: 'creating the machine ssh key',
  })
  const record: MachineRecord = {
    id: randomUUID(),
    name: machine.name,
    provider: provider.name,
    box: {name: stored.name, version: stored.version, provider: stored.provider, path: stored.path},
    user: machine.ssh.username ?? stored.metadata.box?.user ?? 'vagrant',
    // A cloud image gets the machine's key from its seed at every boot: there is no insecure key to replace.
    keyInstalled: stored.metadata.box?.cloud_init === true ? true : undefined,
    provisioned: false,
    createdAt: new Date().toISOString(),
  }
  await provider.create(await handleFor(stateDir, machine, stored))
  await writeRecord(stateDir, record)
  const {registerMachine} = await import('../store/machine-index.js')
  await registerMachine(context.dataDir, {
    id: record.id,
    name: machine.name,
    projectDir: context.projectDir,
    stateDir,
    provider: provider.name,
    box: {name: stored.name, version: stored.version, provider: stored.provider},
  })
  stage.done('linked clone, own ssh key')
  return record
}

/** Why ssh never came to a cloud image: its cloud-init is what makes the user and installs the key. */
export const CLOUD_INIT_SSH_TIMEOUT =
  "this box is a cloud image, and only its cloud-init creates the login user with the machine's key from box's NoCloud seed: the image has no cloud-init, or it does not read a NoCloud seed (datasource_list without NoCloud), or it failed (see the serial console below)"

interface HostSide {
  /** The machine's disk was made afresh for this boot (host-side resnap). */
  reset: boolean
  /** The guest's root lost the machine key (a fresh disk of a box that is no cloud image): log in with the box's key again. */
  keyGone: boolean
  /** Mount the persistent disk over ssh (boxes that are no cloud image have no seed to do it). */
  mountPersistent: boolean
}

/**
 * Host-side resnap and the cloud-init seed, before a boot. A box without the LVM layout
 * cannot reset its root itself: with resnap, its overlay is thrown away and made again
 * (a cloud image always, other boxes when the Boxfile or the command asks for resnap by name),
 * and a small persistent disk, made at the first such boot, carries /persistent across.
 * A cloud image gets this boot's seed as a read-only drive.
 */
async function prepareHostSide(
  context: MachineContext,
  provider: Provider,
  handle: MachineHandle,
  machine: ResolvedMachine,
  record: MachineRecord,
  options: {resnap: boolean; asked: boolean; freshOverlay: boolean},
): Promise<HostSide> {
  const info = handle.box.metadata.box
  const cloudInit = info?.cloud_init === true
  const {persistentDrive, writeCloudSeed} = await import('./cloud-seed.js')
  if (cloudInit && !provider.resetDisk)
    throw new BoxError(`box ${record.box.name} is a cloud image, which box boots under QEMU only`, {
      suggestions: ['use provider: qemu for this machine'],
    })
  // Asked for by name: the Boxfile's own `resnap: always`, or this command's (box resnap, up --resnap).
  const wanted = options.resnap && !info?.lvm && (cloudInit || machine.resnapSet === true || options.asked)
  if (wanted && !provider.resetDisk)
    context.progress.warn(
      `${machine.name}: the ${provider.name} provider cannot reset the disk: resnap does nothing for this box`,
    )
  const hostResnap = wanted && provider.resetDisk !== undefined
  const reset = hostResnap && !options.freshOverlay
  if (reset) await provider.resetDisk!(handle)
  const drives = [...(handle.drives ?? [])]
  const persistent = await persistentDrive(handle.stateDir, {create: hostResnap})
  if (persistent) drives.push(persistent)
  if (cloudInit) {
    drives.push(
      await writeCloudSeed(handle.stateDir, {
        instanceId: `box-${record.id}`,
        hostname: seedHostname(machine.hostname ?? machine.name),
        user: record.user,
        publicKeyFile: `${machine.ssh.privateKeyPath ?? machineFiles(handle.stateDir).key}.pub`,
        persistent: persistent !== undefined,
      }),
    )
  }
  handle.drives = drives
  return {reset, keyGone: reset && !cloudInit, mountPersistent: persistent !== undefined && !cloudInit}
}

/** A cloud image serves the host key its seed hands it: pinned before the first login, never trusted on first use. */
async function pinSeedHostKey(
  context: MachineContext,
  name: string,
  stateDir: string,
  target: SshTarget,
): Promise<void> {
  const pin = target.hostKeys
  if (!pin || (await readKnownHosts(pin)).length > 0) return
  const {cloudHostKey} = await import('./cloud-seed.js')
  const {publicKey} = await cloudHostKey(stateDir)
  await writeKnownHosts(pin, parseHostKeyPairs(publicKey.trim().split(/\s+/).slice(0, 2).join(' ')))
  context.progress.info(`${name}: ssh host key pinned (the one box put in its cloud-init seed)`)
}

/** What the seed's bootcmd does for a cloud image, over ssh for any other box. */
async function mountPersistentOverSsh(target: SshTarget): Promise<void> {
  await sshRun(target, ['sudo', 'sh', '-c', persistentMountScript()], {purpose: 'mounting /persistent'})
}
