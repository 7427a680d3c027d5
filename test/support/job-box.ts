import {mkdtemp, readFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {ensureBox} from '../../src/builder/index.js'
import {extractBoxArchive} from '../../src/lib/box/archive.js'
import {BoxMetadataSchema} from '../../src/lib/box/metadata.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import type {JobBox} from '../../src/lib/jobs/phases.js'
import {
  DEFAULT_FILE_SIZE_LIMIT,
  DEFAULT_JOB_USER,
  DEFAULT_NPROC,
  DEFAULT_OUTPUT_LIMIT,
  DEFAULT_OUTPUTS_LIMIT,
  PHASE_TIMEOUTS_MS,
  type JobSpec,
} from '../../src/lib/jobs/spec.js'
import {testCacheDir} from './cache.js'

/** The reference box (built by the tests, cached), unpacked once into a temp folder: what job phases boot. */
export async function referenceJobBox(): Promise<{box: JobBox; boxFile: string; dir: string}> {
  const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
  const dir = await mkdtemp(join(tmpdir(), 'box-jobbox-'))
  await extractBoxArchive({file: boxFile, dest: dir})
  const metadata = BoxMetadataSchema.parse(JSON.parse(await readFile(join(dir, 'metadata.json'), 'utf8')))
  return {box: {name: 'reference', version: '0', image: {dir, metadata}}, boxFile, dir}
}

/** A job spec with box's defaults and these fields. */
export function jobSpec(fields: Partial<JobSpec> & Pick<JobSpec, 'id' | 'command'>): JobSpec {
  return {
    inputs: [],
    outputs: [],
    timeoutMs: PHASE_TIMEOUTS_MS.run,
    outputLimit: DEFAULT_OUTPUT_LIMIT,
    outputsLimit: DEFAULT_OUTPUTS_LIMIT,
    network: false,
    user: DEFAULT_JOB_USER,
    nproc: DEFAULT_NPROC,
    fileSizeLimit: DEFAULT_FILE_SIZE_LIMIT,
    phaseTimeouts: {
      create: PHASE_TIMEOUTS_MS.create,
      wait: 240_000,
      copyIn: PHASE_TIMEOUTS_MS.copyIn,
      copyOut: PHASE_TIMEOUTS_MS.copyOut,
    },
    ...fields,
  }
}
