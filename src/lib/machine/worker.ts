/**
 * Fresh workers from a ready state: the engine under `box run`/`box batch`. For a box and
 * the worker settings, one worker is booted once with resnap, made ready (box-agent answers,
 * sshd listens, the optional setup commands ran), and its running state saved into the
 * cache; every fresh worker after that is that state restored into a new empty overlay:
 * the same pristine machine in a second or two, nothing of one worker visible to the next.
 *
 * The ready state's folder is named by a key over everything it depends on (box name,
 * version and image checksum, cpus, memory, network, setup, the hypervisor's version and
 * machine type), so it is made again when any of them changes and never shared between
 * boxes; a lock keeps two processes from making the same one twice. Workers are
 * ephemeral: /persistent is whatever the ready state had.
 */
import {createHash, randomBytes} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, readFile, rename, rm, stat, truncate, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {pipeline} from 'node:stream/promises'

import type {BoxImage, ExtraDrive, MachineHandle, Provider, Started} from '../../providers/provider.js'
import {BoxError} from '../core/errors.js'
import {run} from '../core/exec.js'
import {writeFileAtomic} from '../core/fs.js'
import {acquireLock} from '../core/lock.js'
import {PROJECT_ROOT} from '../core/paths.js'
import {createProgress, type Progress} from '../core/progress.js'
import {providerFor} from '../../providers/index.js'
import {closeSshMaster, installMachineKey} from './keys.js'
import {installPrivateKey, sshRun, waitForSsh, type SshTarget} from './ssh.js'

export interface WorkerSpec {
  box: {name: string; version?: string}
  cpus: number
  memoryMiB: number
  /** false: the guest has no network (ssh from the host still works). */
  network: boolean
  /**
   * No network interface at all (box run --network off, HTCondor style): box-agent is the
   * only way in, so the box must have it, there is no ssh and no setup (it would need one).
   */
  noInterface?: boolean
  /**
   * Extra raw disks the state is saved with, as empty placeholders of these sizes: a
   * restored guest keeps the disks it saw at save, so every start gives its own files of
   * the same serials, modes and sizes in their place (FreshWorkerOptions.drives).
   */
  drives?: DriveSlot[]
  /** Shell commands run as root, in order, once in the ready state before it is saved. */
  setup?: string[]
  /**
   * An unprivileged user made in the ready state for the jobs its workers run (box-job's
   * `user`, which refuses one who is or can become root): making it costs a job a second
   * or more under TCG. A box whose agent cannot make it (an older one) leaves it to the jobs.
   */
  jobUser?: string
  /** The box already resolved (box run/batch); without it `box` is looked up in the store. */
  image?: {name: string; version: string; box: BoxImage}
}

export interface DriveSlot {
  serial: string
  readOnly?: boolean
  bytes: number
}

export interface FreshWorkerOptions {
  dataDir: string
  cacheDir: string
  progress?: Progress
  signal?: AbortSignal
  /** Default: QEMU. */
  provider?: Provider
  /** Wait until a new ssh login works before returning (default true; never without an interface). */
  waitForSsh?: boolean
  /** This start's files for the spec's drive slots, in their order and of their sizes. */
  drives?: ExtraDrive[]
}

/** A ready state on disk: where, under which key, and whether this call made it. */
export interface ReadyState {
  dir: string
  key: string
  built: boolean
  record: ReadyRecord
  /** The handle a worker of this state gets (its own state dir and name). */
  handleIn(stateDir: string, name: string, drives?: ExtraDrive[]): MachineHandle
}

export interface FreshWorker {
  name: string
  stateDir: string
  /** The ready state it was restored from. */
  readyState: {dir: string; key: string}
  handle: MachineHandle
  started: Started
  /** Absent without a network interface. */
  ssh?: SshTarget
  /** One question to the worker's box-agent (provisioners/box-agent). */
  askAgent(request: string, options?: {timeoutMs?: number}): Promise<string>
  /** Resolves once a new ssh login works (at once when startFreshWorker waited for it). */
  sshReady(): Promise<void>
  timings: {
    /** The ready state was made by this call (a resnap boot, setup, save). */
    builtReadyState: boolean
    /** From the restore's start to the guest running. */
    loadMs: number
    /** From the restore's start to box-agent's first answer. */
    agentMs: number
    /** From the restore's start to the first ssh login (when waited for). */
    sshMs?: number
    diskBytesBeforeRun?: number
  }
  /** Stop the worker and delete everything it had; makes sure no process is left. */
  destroy(): Promise<void>
}

export interface ReadyRecord {
  key: string
  inputs: Record<string, unknown>
  user: string
  agent: boolean
  stateBytes: number
  createdAt: string
}

const readyRoot = (cacheDir: string) => join(cacheDir, 'ready-states')
const workersRoot = (cacheDir: string) => join(cacheDir, 'workers')

/** sha256 of the box image, computed once per image file (its size, mtime and inode say when it changed). */
async function imageChecksum(cacheDir: string, image: string): Promise<string> {
  const info = await stat(image)
  const stamp = `${info.size}:${info.mtimeMs}:${info.ino}`
  const file = join(
    readyRoot(cacheDir),
    'checksums',
    `${createHash('sha256').update(image).digest('hex').slice(0, 24)}.json`,
  )
  try {
    const cached = JSON.parse(await readFile(file, 'utf8')) as {stamp: string; sha256: string}
    if (cached.stamp === stamp) return cached.sha256
  } catch {}
  const hash = createHash('sha256')
  await pipeline(createReadStream(image, {highWaterMark: 1 << 20}), hash)
  const sha256 = hash.digest('hex')
  await mkdir(join(readyRoot(cacheDir), 'checksums'), {recursive: true})
  // Two jobs of one batch may get here at once: each writes a temporary file of its own.
  await writeFileAtomic(file, JSON.stringify({stamp, sha256}))
  return sha256
}

function slug(text: string): string {
  return text.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 40)
}

async function newWorkerDir(cacheDir: string, prefix: string): Promise<string> {
  const dir = join(workersRoot(cacheDir), `${prefix}-${randomBytes(5).toString('hex')}`)
  await mkdir(dir, {recursive: true, mode: 0o700})
  return dir
}

/**
 * A fresh worker of `spec`: restored from the ready state (made first when missing or stale).
 * On any failure, or Ctrl-C, the worker started here is destroyed again.
 */
export async function startFreshWorker(spec: WorkerSpec, options: FreshWorkerOptions): Promise<FreshWorker> {
  const provider = options.provider ?? providerFor('qemu', options.cacheDir)
  const readyState = await ensureReadyState(spec, {...options, provider})
  return startFromReadyState(readyState, spec, {...options, provider})
}

/** Whether workers of this provider can come from a ready state at all (else: a boot per worker). */
export function canMakeReadyStates(provider: Provider): boolean {
  return provider.runningStates !== undefined
}

/** The ready state for `spec`, made now (a resnap boot, setup, save; with progress) when missing or stale. */
export async function ensureReadyState(spec: WorkerSpec, options: FreshWorkerOptions): Promise<ReadyState> {
  const progress = options.progress ?? createProgress({silent: true})
  const provider = options.provider ?? providerFor('qemu', options.cacheDir)
  if (!provider.runningStates)
    throw new BoxError(`the ${provider.name} provider cannot start workers from a saved state`)
  if (spec.noInterface && (spec.setup ?? []).length > 0)
    throw new BoxError('setup commands need a worker with a network interface (they run over ssh)', {
      suggestions: ['turn the network on for these jobs, or put what setup does into the box'],
    })
  let stored: {name: string; version: string; path: string}
  let box: BoxImage
  if (spec.image) {
    stored = {name: spec.image.name, version: spec.image.version, path: spec.image.box.dir}
    box = spec.image.box
  } else {
    const {findBox} = await import('../store/query.js')
    const {COMPATIBLE_BOX_PROVIDERS, BoxMetadataSchema} = await import('../box/metadata.js')
    const found = await findBox(options.dataDir, {
      name: spec.box.name,
      version: spec.box.version,
      providers: COMPATIBLE_BOX_PROVIDERS[provider.name] ?? [provider.name],
    })
    if (!found) {
      throw new BoxError(
        `box ${spec.box.name}${spec.box.version ? ` ${spec.box.version}` : ''} is not installed for ${provider.name}`,
        {suggestions: [`add it: box add ${spec.box.name} URL`]},
      )
    }
    stored = found
    box = {dir: found.path, metadata: BoxMetadataSchema.parse(found.metadata)}
  }
  if (spec.noInterface && box.metadata.box?.agent === undefined)
    throw new BoxError(`box ${stored.name} has no box-agent: a worker without a network interface needs it`)
  if (box.metadata.box?.cloud_init)
    throw new BoxError(`box ${stored.name} is a cloud image: fresh workers hand it no cloud-init seed yet`, {
      suggestions: ['use a box built by box (box build) for fresh workers'],
    })
  const inputs = {
    box: stored.name,
    version: stored.version,
    image: await imageChecksum(options.cacheDir, join(stored.path, 'box.img')),
    // The saved disk chain ends in this folder's image: a copy of the box elsewhere is another state.
    imageDir: stored.path,
    cpus: spec.cpus,
    memoryMiB: spec.memoryMiB,
    network: spec.network,
    ...(spec.noInterface ? {noInterface: true} : {}),
    ...(spec.drives?.length ? {drives: spec.drives.map((slot) => ({...slot, readOnly: slot.readOnly ?? false}))} : {}),
    setup: spec.setup ?? [],
    ...(spec.jobUser ? {jobUser: spec.jobUser} : {}),
    host: await provider.runningStates.hostKey(),
  }
  const key = createHash('sha256').update(JSON.stringify(inputs)).digest('hex').slice(0, 20)
  const readyDir = join(readyRoot(options.cacheDir), `${slug(stored.name)}-${slug(stored.version)}-${key}`)
  const handleIn = (stateDir: string, name: string, drives?: ExtraDrive[]): MachineHandle => ({
    name,
    stateDir,
    box,
    cpus: spec.cpus,
    memoryMiB: spec.memoryMiB,
    forwardedPorts: [],
    network: spec.noInterface ? 'none' : spec.network ? 'full' : 'restricted',
    ...(drives ? {drives} : {}),
  })

  let builtReadyState = false
  let ready = await readReady(readyDir)
  if (!ready) {
    await mkdir(readyRoot(options.cacheDir), {recursive: true})
    const release = await acquireLock(`${readyDir}.lock`, {
      waitMs: 20 * 60_000,
      busy: (pid) =>
        new BoxError(
          `the ready state for ${stored.name} ${stored.version} is being made by another box process (pid ${pid})`,
          {suggestions: ['wait for it, then try again']},
        ),
    })
    try {
      ready = await readReady(readyDir)
      if (!ready) {
        ready = await buildReadyState(provider, readyDir, handleIn, {key, inputs, spec, options, progress})
        builtReadyState = true
      }
    } finally {
      await release()
    }
  }
  return {dir: readyDir, key, built: builtReadyState, record: ready, handleIn}
}

/** A worker restored from `readyState` into a new overlay (and this start's drives). */
export async function startFromReadyState(
  readyState: ReadyState,
  spec: WorkerSpec,
  options: FreshWorkerOptions,
): Promise<FreshWorker> {
  const provider = options.provider ?? providerFor('qemu', options.cacheDir)
  if (!provider.runningStates)
    throw new BoxError(`the ${provider.name} provider cannot start workers from a saved state`)
  const {dir: readyDir, record: ready, built: builtReadyState} = readyState
  const slots = spec.drives ?? []
  const drives = options.drives ?? []
  if (drives.length !== slots.length || drives.some((drive, i) => drive.serial !== slots[i]!.serial))
    throw new BoxError(
      `this worker needs the disks ${slots.map((slot) => slot.serial).join(', ') || '(none)'}, it was given ${drives.map((drive) => drive.serial).join(', ') || 'none'}`,
    )
  const stateDir = await newWorkerDir(options.cacheDir, 'worker')
  const handle = readyState.handleIn(stateDir, `worker-${stateDir.slice(-10)}`, drives)
  const destroy = makeDestroy(provider, handle)
  try {
    const begun = Date.now()
    const restored = await provider.runningStates.start(handle, readyDir, {signal: options.signal})
    const askAgent = agentOf(provider, handle)
    // The clock is the ready state's until set, and every worker starts with its RNG state.
    if (ready.agent) {
      await askAgent(`set-clock ${(Date.now() / 1000).toFixed(3)}`, {timeoutMs: 10_000})
    }
    const agentMs = Date.now() - begun
    if (ready.agent) await askAgent(`reseed ${randomBytes(64).toString('hex')}`, {timeoutMs: 10_000})
    const worker = {
      name: handle.name,
      stateDir,
      readyState: {dir: readyDir, key: readyState.key},
      handle,
      started: restored.started,
      askAgent,
      destroy,
    }
    const timings = {builtReadyState, loadMs: restored.loadMs, agentMs, diskBytesBeforeRun: restored.diskBytesBeforeRun}
    if (spec.noInterface) {
      return {
        ...worker,
        sshReady: () => Promise.reject(new BoxError('this worker has no network interface: no ssh')),
        timings,
      }
    }
    const ssh: SshTarget = {
      host: '127.0.0.1',
      port: restored.started.sshPort,
      user: ready.user,
      keyFile: join(readyDir, 'id_ed25519'),
      controlPath: provider.sshControlPath({stateDir}),
    }
    let sshWait: Promise<void> | undefined
    const sshReady = () =>
      (sshWait ??= waitForSsh(ssh, sshWaitOptions(restored.started, options.signal)).then(async () => {
        if (!ready!.agent)
          await sshRun(ssh, ['sudo', 'date', '-u', '-s', `@${(Date.now() / 1000).toFixed(3)}`], {
            purpose: 'setting the worker clock',
          })
      }))
    let sshMs: number | undefined
    if (options.waitForSsh !== false) {
      await sshReady()
      sshMs = Date.now() - begun
    }
    return {...worker, ssh, sshReady, timings: {...timings, sshMs}}
  } catch (error) {
    await destroy()
    throw options.signal?.aborted ? options.signal.reason : error
  }
}

function agentOf(provider: Provider, handle: MachineHandle): FreshWorker['askAgent'] {
  return async (request, options) => {
    if (!provider.askAgent) throw new BoxError(`the ${provider.name} provider has no guest agent channel`)
    return provider.askAgent({stateDir: handle.stateDir}, request, {timeoutMs: options?.timeoutMs ?? 10_000})
  }
}

function sshWaitOptions(started: Started, signal?: AbortSignal): Parameters<typeof waitForSsh>[1] {
  return {
    // The login stays as the master for the worker's commands; the probe needs no session.
    masterOnly: true,
    timeoutMs: 120_000,
    isAlive: started.isAlive,
    serialLog: started.serialLog,
    sshListening: started.sshListening,
    signal,
  }
}

function makeDestroy(provider: Provider, handle: MachineHandle): () => Promise<void> {
  let done: Promise<void> | undefined
  return () =>
    (done ??= (async () => {
      // At once: the master's connection ends with the guest anyway.
      await Promise.all([
        closeSshMaster(provider.sshControlPath({stateDir: handle.stateDir})),
        provider.destroy({stateDir: handle.stateDir}),
      ])
      if ((await provider.state({stateDir: handle.stateDir})) === 'running') {
        throw new BoxError(`worker ${handle.name} is still running after destroy`, {detail: handle.stateDir})
      }
      await rm(handle.stateDir, {recursive: true, force: true})
    })())
}

async function readReady(dir: string): Promise<ReadyRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'ready.json'), 'utf8')) as ReadyRecord
  } catch {
    return undefined
  }
}

interface BuildContext {
  key: string
  inputs: Record<string, unknown>
  spec: WorkerSpec
  options: FreshWorkerOptions
  progress: Progress
}

/** Boot one worker with resnap, make it ready, save its running state into `readyDir`. */
async function buildReadyState(
  provider: Provider,
  readyDir: string,
  handleIn: ReadyState['handleIn'],
  build: BuildContext,
): Promise<ReadyRecord> {
  const {spec, options, progress} = build
  const stage = progress.stage(`making the ready state for ${spec.box.name} (a resnap boot, once)`)
  await rm(readyDir, {recursive: true, force: true})
  const partialDir = `${readyDir}.partial`
  await rm(partialDir, {recursive: true, force: true})
  await mkdir(partialDir, {recursive: true, mode: 0o700})
  const stateDir = await newWorkerDir(options.cacheDir, 'ready-build')
  // Empty placeholders in the drive slots: each worker's own disks of these sizes take their place.
  const placeholders: ExtraDrive[] = []
  for (const [index, slot] of (spec.drives ?? []).entries()) {
    const file = join(stateDir, `slot-${index}.img`)
    await writeFile(file, '')
    await truncate(file, slot.bytes)
    placeholders.push({file, serial: slot.serial, readOnly: slot.readOnly})
  }
  const handle = handleIn(stateDir, `ready-build-${stateDir.slice(-10)}`, placeholders)
  const destroy = makeDestroy(provider, handle)
  try {
    const box = handle.box.metadata.box
    const user = box?.user ?? 'vagrant'
    if (spec.noInterface) {
      await provider.create(handle)
      const started = await provider.start(handle, {choice: {resnap: true}, signal: options.signal})
      stage.update('waiting for the guest agent')
      await waitForAgentAndSshd(provider, handle, started, options.signal)
      if (spec.jobUser)
        await makeJobUser(spec.jobUser, {
          agent: (request) => provider.askAgent!(handle, request, {timeoutMs: 60_000}),
        })
      stage.update('saving the running state')
      const saved = await provider.runningStates!.save(handle, partialDir, {signal: options.signal})
      return await finishReady(partialDir, readyDir, build, {user, agent: true, stateBytes: saved.stateBytes}, stage)
    }
    const key = join(partialDir, 'id_ed25519')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'box-worker', '-f', key], {
      purpose: 'creating the worker ssh key',
    })
    await provider.create(handle)
    const started = await provider.start(handle, {choice: {resnap: true}, signal: options.signal})
    const controlPath = provider.sshControlPath({stateDir})
    const insecure = await installPrivateKey(
      join(PROJECT_ROOT, 'static', 'insecure_key'),
      join(stateDir, 'insecure_key'),
    )
    const bootstrap: SshTarget = {host: '127.0.0.1', port: started.sshPort, user, keyFile: insecure, controlPath}
    stage.update('waiting for ssh')
    await waitForSsh(bootstrap, {...sshWaitOptions(started, options.signal), timeoutMs: 300_000})
    await installMachineKey(bootstrap, user, await readFile(`${key}.pub`, 'utf8'))
    await closeSshMaster(controlPath)
    const target: SshTarget = {...bootstrap, keyFile: key}
    await waitForSsh(target, sshWaitOptions(started, options.signal))
    const agent = box?.agent !== undefined && provider.askAgent !== undefined
    if (agent) await provider.askAgent!({stateDir}, 'ping', {timeoutMs: 30_000})
    for (const [index, command] of (spec.setup ?? []).entries()) {
      stage.update(`setup ${index + 1}/${spec.setup!.length}`)
      await sshRun(target, ['sudo', 'sh', '-euc', command], {
        purpose: `running setup command ${index + 1} in the ready state`,
        timeoutMs: 30 * 60_000,
      })
    }
    if (spec.jobUser) await makeJobUser(spec.jobUser, {ssh: target})
    // Everything the guest wrote is in its page cache or on disk; sshd's connection must not be in the state.
    await sshRun(target, ['sync'], {purpose: "syncing the ready state's disk"})
    await closeSshMaster(controlPath)
    stage.update('saving the running state')
    const saved = await provider.runningStates!.save(handle, partialDir, {signal: options.signal})
    return await finishReady(partialDir, readyDir, build, {user, agent, stateBytes: saved.stateBytes}, stage)
  } catch (error) {
    stage.fail()
    await rm(partialDir, {recursive: true, force: true})
    throw options.signal?.aborted ? options.signal.reason : error
  } finally {
    await destroy()
  }
}

/**
 * The job user made in the worker being saved, by box-job: through box-agent (`job-user`)
 * without an interface, else box's own box-job over ssh (so any box with sudo gets it). An
 * agent older than the verb refuses it: its jobs make the user themselves, as before.
 */
async function makeJobUser(
  user: string,
  via: {agent: (request: string) => Promise<string>} | {ssh: SshTarget},
): Promise<void> {
  if ('agent' in via) {
    try {
      await via.agent(`job-user ${user}`)
    } catch (error) {
      // box-agent's own answer to a verb it does not have.
      if (!/unknown request: job-user/.test((error as Error).message)) throw error
    }
    return
  }
  await sshRun(via.ssh, ['sudo', 'sh', '-s', '--', 'user', user], {
    input: await readFile(join(PROJECT_ROOT, 'provisioners', 'box-job'), 'utf8'),
    purpose: `making the job user ${user} in the ready state`,
  })
}

async function finishReady(
  partialDir: string,
  readyDir: string,
  build: BuildContext,
  saved: Pick<ReadyRecord, 'user' | 'agent' | 'stateBytes'>,
  stage: ReturnType<Progress['stage']>,
): Promise<ReadyRecord> {
  const record: ReadyRecord = {key: build.key, inputs: build.inputs, ...saved, createdAt: new Date().toISOString()}
  await writeFile(join(partialDir, 'ready.json'), `${JSON.stringify(record, null, 2)}\n`, {mode: 0o600})
  await rename(partialDir, readyDir)
  stage.done(`state ${Math.round(saved.stateBytes / 1e6)} MB`)
  return record
}

/**
 * A worker without a network interface has no ssh to wait for: it is ready once box-agent
 * answers and sshd listens inside (sshd comes late in the boot, so the saved state does not
 * go on booting in every worker restored from it).
 */
async function waitForAgentAndSshd(
  provider: Provider,
  handle: MachineHandle,
  started: Started,
  signal?: AbortSignal,
): Promise<void> {
  const deadline = Date.now() + 300_000
  for (;;) {
    signal?.throwIfAborted()
    if (!started.isAlive()) throw new BoxError('the worker stopped while it booted', {detail: started.serialLog})
    const agent = await provider.askAgent!({stateDir: handle.stateDir}, 'ping', {timeoutMs: 2000}).then(
      () => true,
      () => false,
    )
    if (agent && (await started.sshListening?.().catch(() => false)) !== false) return
    if (Date.now() > deadline)
      throw new BoxError('the worker did not come up within 300 s (box-agent and sshd)', {detail: started.serialLog})
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
}
