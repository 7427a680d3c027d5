/**
 * The box batch job file (JOBS.yaml): a box, optional setup, defaults and a list of jobs.
 * Validated like the Boxfile (core/config-file.ts): every problem as file:line:col, unknown
 * fields named with the accepted ones. Paths are relative to the job file's folder.
 */
import {dirname, resolve} from 'node:path'

import {z} from 'zod'

import {BoxError} from '../core/errors.js'
import {configError, loadYamlFile, parseYaml, type LoadedYaml} from '../core/config-file.js'
import {
  DEFAULT_FILE_SIZE_LIMIT,
  DEFAULT_JOB_USER,
  DEFAULT_NPROC,
  DEFAULT_OUTPUT_LIMIT,
  DEFAULT_OUTPUTS_LIMIT,
  JOB_ID_PATTERN,
  PHASE_TIMEOUTS_MS,
  checkJobUser,
  checkOutputs,
  parseDuration,
  parseInput,
  parseSize,
  type JobSpec,
} from './spec.js'

const duration = z.union([z.string(), z.number()], {error: 'must be a duration such as 60s, 2m or 500ms'})
const size = z.union([z.string(), z.number()], {error: 'must be a size such as 1M, 500K or 1048576'})
const network = z.union([z.boolean(), z.enum(['on', 'off'])], {error: 'must be on or off'})
const pathList = z.array(z.string().min(1, 'must not be empty'), {error: 'must be a list of paths'})

const TimeoutsSchema = z.strictObject({
  create: duration.optional(),
  wait: duration.optional(),
  copy_in: duration.optional(),
  copy_out: duration.optional(),
})

const settings = {
  timeout: duration.optional(),
  output_limit: size.optional(),
  outputs_limit: size.optional(),
  network: network.optional(),
  user: z.string().optional(),
  nproc: z.number().int().positive().optional(),
  file_size_limit: size.optional(),
  timeouts: TimeoutsSchema.optional(),
}

const DefaultsSchema = z.strictObject(settings)

const JobSchema = z.strictObject({
  id: z
    .string({error: 'required: the job id (a plain name)'})
    .regex(JOB_ID_PATTERN, 'must be a plain name: letters, digits, ".", "_", "-", at most 64'),
  // YAML reads [echo, 1, true] as a string, a number and a boolean: each word is its text.
  command: z.union(
    [z.string().min(1), z.array(z.union([z.string(), z.number(), z.boolean()]).transform(String)).min(1)],
    {error: 'required: a command, as a list of words or one shell string'},
  ),
  in: pathList.optional(),
  out: pathList.optional(),
  ...settings,
})

export const JobFileSchema = z.strictObject({
  box: z.string().min(1).optional(),
  box_url: z.string().min(1).optional(),
  box_version: z.string().min(1).optional(),
  /** The .box's digest, TYPE:HEX (sha256:…); a catalog carries its own. */
  box_checksum: z
    .string()
    .regex(/^(?:(?:md5|sha1|sha256|sha384|sha512):)?[0-9a-fA-F]{32,128}$/, 'must be a digest such as sha256:0123…')
    .optional(),
  cpus: z.number().int().positive().optional(),
  memory: z.number().int().min(256, 'must be at least 256 (MiB)').optional(),
  setup: z.union([z.string().min(1), z.array(z.string().min(1))]).optional(),
  retries: z.number().int().min(0).max(10).optional(),
  defaults: DefaultsSchema.optional(),
  jobs: z.array(JobSchema, {error: 'required: a list of jobs'}).min(1, 'must hold at least one job'),
})

export type JobFileSettings = z.infer<typeof JobFileSchema>

export interface JobFile {
  file: string
  dir: string
  box?: string
  boxUrl?: string
  boxVersion?: string
  boxChecksum?: string
  cpus?: number
  memoryMiB?: number
  setup: string[]
  retries: number
  jobs: JobSpec[]
}

export async function loadJobFile(file: string, loginUser?: string): Promise<JobFile> {
  const loaded = await loadYamlFile(resolve(file), JobFileSchema, 'job file')
  return resolveJobFile(loaded, loginUser)
}

export function parseJobFile(file: string, text: string, loginUser?: string): JobFile {
  return resolveJobFile(parseYaml(resolve(file), text, JobFileSchema, 'job file'), loginUser)
}

/** The checks zod cannot make (durations, sizes, paths, ids), each reported at its position. */
function resolveJobFile(loaded: LoadedYaml<JobFileSettings>, loginUser?: string): JobFile {
  const value = loaded.value
  const dir = dirname(loaded.file)
  if (!value.box && !value.box_url)
    throw configError(loaded, [], 'name the box: box: NAME (a stored box) or box_url: URL', 'job file')
  const at = <T>(path: Array<string | number>, work: () => T): T => {
    try {
      return work()
    } catch (error) {
      if (error instanceof BoxError) throw configError(loaded, path, error.message, 'job file')
      throw error
    }
  }
  const defaults = value.defaults ?? {}
  const seen = new Set<string>()
  const jobs = value.jobs.map((job, index) => {
    const path = ['jobs', index]
    if (seen.has(job.id)) throw configError(loaded, [...path, 'id'], `the id ${job.id} is used twice`, 'job file')
    seen.add(job.id)
    const pick = <K extends keyof typeof settings>(key: K) =>
      job[key] !== undefined
        ? {value: job[key], where: [...path, key]}
        : {value: defaults[key], where: ['defaults', key]}
    const durationOf = (key: 'timeout', fallback: number) => {
      const {value: v, where} = pick(key)
      return v === undefined ? fallback : at(where, () => parseDuration(v as string | number, key))
    }
    const sizeOf = (key: 'output_limit' | 'outputs_limit' | 'file_size_limit', fallback: number) => {
      const {value: v, where} = pick(key)
      return v === undefined ? fallback : at(where, () => parseSize(v as string | number, key))
    }
    const timeouts = {...defaults.timeouts, ...job.timeouts}
    const phase = (key: keyof typeof timeouts, fallback: number) =>
      timeouts[key] === undefined ? fallback : at([...path, 'timeouts', key], () => parseDuration(timeouts[key]!, key))
    const net = pick('network').value
    const user = pick('user')
    const spec: JobSpec = {
      id: job.id,
      command: job.command,
      inputs: (job.in ?? []).map((text, i) => at([...path, 'in', i], () => parseInput(text, dir, 'in'))),
      outputs: at([...path, 'out'], () => checkOutputs(job.out ?? [], 'out')),
      timeoutMs: durationOf('timeout', PHASE_TIMEOUTS_MS.run),
      outputLimit: sizeOf('output_limit', DEFAULT_OUTPUT_LIMIT),
      outputsLimit: sizeOf('outputs_limit', DEFAULT_OUTPUTS_LIMIT),
      fileSizeLimit: sizeOf('file_size_limit', DEFAULT_FILE_SIZE_LIMIT),
      network: net === undefined ? false : net === true || net === 'on',
      user:
        user.value === undefined
          ? DEFAULT_JOB_USER
          : at(user.where, () => checkJobUser(user.value as string, loginUser)),
      nproc: (pick('nproc').value as number | undefined) ?? DEFAULT_NPROC,
      phaseTimeouts: {
        create: phase('create', PHASE_TIMEOUTS_MS.create),
        wait: phase('wait', PHASE_TIMEOUTS_MS.wait),
        copyIn: phase('copy_in', PHASE_TIMEOUTS_MS.copyIn),
        copyOut: phase('copy_out', PHASE_TIMEOUTS_MS.copyOut),
      },
    }
    return spec
  })
  const setup = value.setup === undefined ? [] : typeof value.setup === 'string' ? [value.setup] : value.setup
  if (setup.length > 0) {
    const offline = jobs.findIndex((job) => !job.network)
    if (offline !== -1) {
      throw configError(
        loaded,
        ['setup'],
        `setup: runs as root over ssh once, in the ready state the workers start from, and a worker without network has no interface for ssh: every job needs network: on (job ${jobs[offline]!.id} has it off)`,
        'job file',
      )
    }
  }
  return {
    file: loaded.file,
    dir,
    box: value.box,
    boxUrl: value.box_url,
    boxVersion: value.box_version,
    boxChecksum: value.box_checksum,
    cpus: value.cpus,
    memoryMiB: value.memory,
    setup,
    retries: value.retries ?? 1,
    jobs,
  }
}
