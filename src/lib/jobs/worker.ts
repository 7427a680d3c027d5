/**
 * Where a job's worker comes from: one swappable function. Today a fresh machine is made
 * per job and booted with resnap (a temp state dir under the cache, a qcow2 overlay on the
 * stored box image, started through the provider interface). The ready-state engine
 * (restore a saved running worker in about a second) plugs in here as another
 * WorkerSource with the same result; nothing else in src/lib/jobs needs to change.
 */
import {mkdir, mkdtemp, rm} from 'node:fs/promises'
import {join} from 'node:path'

import type {ExtraDrive, MachineHandle, Provider, Started} from '../../providers/provider.js'
import {BoxError} from '../core/errors.js'
import {providerFor} from '../../providers/index.js'

export interface WorkerSpec {
  jobId: string
  box: MachineHandle['box']
  cpus: number
  memoryMiB: number
  network: boolean
  /** The job's disks (no network: input and output images). */
  drives: ExtraDrive[]
}

export interface WorkerSourceOptions {
  cacheDir: string
  signal?: AbortSignal
}

/** A running worker: the handle the provider knows it by and what start reported. */
export interface Worker {
  stateDir: string
  provider: Provider
  handle: MachineHandle
  started: Started
}

export type WorkerSource = (spec: WorkerSpec, options: WorkerSourceOptions) => Promise<Worker>

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
    return {stateDir, provider, handle, started}
  } catch (error) {
    await provider.destroy({stateDir}).catch(() => undefined)
    await rm(stateDir, {recursive: true, force: true})
    throw error
  }
}

/** The worker source jobs use unless told otherwise (the ready state replaces this). */
export const defaultWorkerSource: WorkerSource = startResnapWorker

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
