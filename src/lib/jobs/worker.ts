/**
 * Where a job's worker comes from: one swappable function. The default restores the ready
 * state of (box, version, cpus, memory, network, setup, job disk sizes) into a new overlay
 * (src/lib/machine/worker.ts), making that state once on first use; only a provider that
 * cannot save running states gets a resnap boot per job (a temp state dir under the cache,
 * a qcow2 overlay on the stored box image), and the record says which it was.
 */
import {mkdir, mkdtemp, rm, stat} from 'node:fs/promises'
import {join} from 'node:path'

import type {ExtraDrive, MachineHandle, Provider, Started} from '../../providers/provider.js'
import {BoxError} from '../core/errors.js'
import type {Progress} from '../core/progress.js'
import {
  canMakeReadyStates,
  ensureReadyState,
  startFromReadyState,
  type WorkerSpec as ReadyWorkerSpec,
} from '../machine/worker.js'
import type {SshTarget} from '../machine/ssh.js'
import {providerFor} from '../../providers/index.js'
import {DEFAULT_JOB_USER, type WorkerStart} from './spec.js'

export interface WorkerSpec {
  jobId: string
  box: MachineHandle['box']
  /** The box's store name and version (part of the ready state's key). */
  boxName: string
  boxVersion: string
  cpus: number
  memoryMiB: number
  network: boolean
  /** The job's disks (no network: input and output images). */
  drives: ExtraDrive[]
  /** Shell lines run as root once in the ready state before it is saved (box batch's setup:). */
  setup?: string[]
}

export interface WorkerSourceOptions {
  cacheDir: string
  signal?: AbortSignal
  /** Shows the making of a ready state (a boot, once). */
  progress?: Progress
}

/** A running worker: the handle the provider knows it by and what start reported. */
export interface Worker {
  stateDir: string
  provider: Provider
  handle: MachineHandle
  started: Started
  start: WorkerStart
  /** The login to use (a restored worker has the ready state's key); absent: the box's insecure key. */
  ssh?: SshTarget
  /** Resolves once ssh logs in (and the clock is set where the agent could not). */
  sshReady?: () => Promise<void>
  /** The setup lines already ran in it (in its ready state); else they run over ssh before the inputs. */
  setupDone: boolean
}

export type WorkerSource = ((spec: WorkerSpec, options: WorkerSourceOptions) => Promise<Worker>) & {
  /**
   * Make what workers of `spec` start from, before the job's create phase (and its
   * deadline) begins; says whether it had to be made now.
   */
  prepare?: (spec: WorkerSpec, options: WorkerSourceOptions) => Promise<{made: boolean}>
}

/** Every worker's state dir lives here (tests and Ctrl-C cleanup look for QEMU by this path). */
export function workersDir(cacheDir: string): string {
  return join(cacheDir, 'workers')
}

/**
 * A fresh machine for one job: a new overlay on the box image, booted with resnap so the
 * root snapshot is new whatever the image holds. Anything that fails after QEMU started
 * stops it again before the error goes on.
 */
export const startResnapWorker: WorkerSource = async (spec, options) => {
  // Jobs log in with box's own key (boxes built by box): a cloud image would never let them in.
  if (spec.box.metadata.box?.cloud_init)
    throw new BoxError('a cloud image box cannot run jobs yet: box run hands no cloud-init seed', {
      suggestions: ['run jobs on a box built by box (box build)'],
    })
  await mkdir(workersDir(options.cacheDir), {recursive: true, mode: 0o700})
  const stateDir = await mkdtemp(join(workersDir(options.cacheDir), `${spec.jobId}-`))
  const provider = providerFor('qemu', options.cacheDir)
  const handle: MachineHandle = {
    name: `job-${spec.jobId}`,
    stateDir,
    box: spec.box,
    cpus: spec.cpus,
    memoryMiB: spec.memoryMiB,
    forwardedPorts: [],
    network: spec.network ? 'full' : 'none',
    drives: spec.drives,
  }
  try {
    options.signal?.throwIfAborted()
    await provider.create(handle)
    const started = await provider.start(handle, {choice: {resnap: true}, signal: options.signal})
    return {stateDir, provider, handle, started, start: {how: 'resnap-boot', why: 'asked for'}, setupDone: false}
  } catch (error) {
    await provider.destroy({stateDir}).catch(() => undefined)
    await rm(stateDir, {recursive: true, force: true})
    throw error
  }
}

/** The ready state's view of a job worker: a job without network has no interface at all and two disk slots. */
async function readyWorkerSpec(spec: WorkerSpec): Promise<ReadyWorkerSpec> {
  return {
    box: {name: spec.boxName, version: spec.boxVersion},
    image: {name: spec.boxName, version: spec.boxVersion, box: spec.box},
    cpus: spec.cpus,
    memoryMiB: spec.memoryMiB,
    network: spec.network,
    noInterface: !spec.network,
    drives: await Promise.all(
      spec.drives.map(async (drive) => ({
        serial: drive.serial,
        readOnly: drive.readOnly ?? false,
        bytes: (await stat(drive.file)).size,
      })),
    ),
    setup: spec.setup ?? [],
    // Made once in the ready state; a job with another --user makes its own.
    jobUser: DEFAULT_JOB_USER,
  }
}

/**
 * A fresh worker restored from the ready state (made first, once, with progress); a resnap
 * boot only when the provider cannot save a running state.
 */
const startReady = async (spec: WorkerSpec, options: WorkerSourceOptions): Promise<Worker> => {
  const provider = providerFor('qemu', options.cacheDir)
  if (!canMakeReadyStates(provider)) {
    const worker = await startResnapWorker(spec, options)
    const why = `the ${provider.name} provider cannot save running states`
    options.progress?.stage(`job ${spec.jobId}: a resnap boot (${why})`).done()
    return {...worker, start: {how: 'resnap-boot', why}}
  }
  const {readySpec, readyState, common} = await readyStateOf(spec, options, provider)
  const fresh = await startFromReadyState(readyState, readySpec, {...common, drives: spec.drives, waitForSsh: false})
  return {
    stateDir: fresh.stateDir,
    provider,
    handle: fresh.handle,
    started: fresh.started,
    ssh: fresh.ssh,
    sshReady: fresh.ssh ? fresh.sshReady : undefined,
    setupDone: true,
    start: {
      how: 'restored',
      readyState: readyState.key,
      madeReadyState: readyState.built,
      loadMs: fresh.timings.loadMs,
    },
  }
}

/** The ready state for a job worker of `spec`, made now if there is none yet. */
async function readyStateOf(spec: WorkerSpec, options: WorkerSourceOptions, provider: Provider) {
  const readySpec = await readyWorkerSpec(spec)
  const common = {dataDir: '', cacheDir: options.cacheDir, provider, signal: options.signal, progress: options.progress}
  return {readySpec, common, readyState: await ensureReadyState(readySpec, common)}
}

export const startReadyWorker: WorkerSource = Object.assign(startReady, {
  prepare: async (spec: WorkerSpec, options: WorkerSourceOptions) => {
    const provider = providerFor('qemu', options.cacheDir)
    if (!canMakeReadyStates(provider)) return {made: false}
    return {made: (await readyStateOf(spec, options, provider)).readyState.built}
  },
})

/** The worker source jobs use unless told otherwise. */
export const defaultWorkerSource: WorkerSource = startReadyWorker

/**
 * A destroy that makes sure: the provider's forced stop (QMP quit, then SIGKILL), then a
 * check that the process is really gone, then the state dir removed.
 */
export async function destroyWorker(worker: Pick<Worker, 'stateDir' | 'provider' | 'started'>): Promise<void> {
  await worker.provider.destroy({stateDir: worker.stateDir})
  const deadline = Date.now() + 5000
  while (worker.started.isAlive() || (await worker.provider.state({stateDir: worker.stateDir})) === 'running') {
    if (Date.now() > deadline)
      throw new BoxError(`the worker in ${worker.stateDir} did not stop`, {
        suggestions: ['look for its QEMU process (ps -ef | grep qemu) and kill it'],
      })
    await worker.provider.destroy({stateDir: worker.stateDir})
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await rm(worker.stateDir, {recursive: true, force: true})
}
