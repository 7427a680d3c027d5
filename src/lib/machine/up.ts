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
import {forgetHostKeys, parseHostKeyPairs, type HostKey} from './host-keys.js'
import {closeSshMaster, waitForMachineSsh, type HostKeySource} from './keys.js'
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

    const boot = context.progress.stage(
      `${machine.name}: booting${choice.base ? ' the origin (--base)' : choice.resnap ? ' with resnap' : ''}`,
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
      }
      record = {
        ...record,
        sshPort: booted.sshPort,
        forwardedPorts: booted.forwardedPorts,
        privateKeyPath: machine.ssh.privateKeyPath,
      }
      await writeRecord(stateDir, record)
      const target = sshTarget(stateDir, record, provider)
      // One counter for the whole wait: a first boot waits twice (the box's key, then the machine's own), and each wait counts from 0.
      const waitStarted = Date.now()
      const reached = await waitForMachineSsh(stateDir, target, record, {
        timeoutMs: options.sshTimeoutMs ?? 300_000,
        isAlive: booted.isAlive,
        serialLog: booted.serialLog,
        sshListening: booted.sshListening,
        agentHostKeys: booted.sshListening ? agentHostKeys(provider, stateDir) : undefined,
        signal: context.signal,
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
