/**
 * `box repackage NAME VERSION PROVIDER`: an installed box back into a .box file, as
 * `vagrant box repackage` does. The store keeps what the archive held, extracted as it was
 * (metadata.json, the disk, Vagrantfile, anything else) plus its own note of where the box
 * came from (STORE_INFO_FILE), which is left out: the members are those that were added.
 */
import {lstat, readdir} from 'node:fs/promises'
import {resolve} from 'node:path'

import {BoxError, ExitCode} from '../core/errors.js'
import {formatBytes, type Progress} from '../core/progress.js'
import {
  boxPath,
  SCRATCH_PREFIX,
  STORE_INFO_FILE,
  validateBoxName,
  validateBoxVersion,
  validateProviderName,
} from './layout.js'

export interface RepackageOptions {
  dataDir: string
  name: string
  version: string
  provider: string
  output: string
  compression: 'gzip' | 'zstd'
  force: boolean
  progress: Progress
  signal?: AbortSignal
}

export interface Repackaged {
  output: string
  sha256: string
  size: number
  /** The archive's members, in order. */
  entries: string[]
}

export async function repackageBox(options: RepackageOptions): Promise<Repackaged> {
  const {name, version, provider} = options
  validateBoxName(name)
  validateBoxVersion(version)
  validateProviderName(provider)
  const dir = boxPath(options.dataDir, {name, version, provider})
  if (!(await lstat(dir).catch(() => undefined))?.isDirectory()) {
    throw new BoxError(`box ${name} ${version} (${provider}) is not installed`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['see the installed ones: box list'],
    })
  }
  const output = resolve(options.output)
  if (!options.force && (await lstat(output).catch(() => undefined))) {
    throw new BoxError(`${output} already exists`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['pass --force to replace it, or --output to name another file'],
    })
  }
  const names = (await readdir(dir))
    .filter((entry) => entry !== STORE_INFO_FILE && !entry.startsWith(SCRATCH_PREFIX))
    .sort()
  // metadata.json first, as Vagrant's and box's own boxes have it (readers may stop early).
  const entries = ['metadata.json', ...names.filter((entry) => entry !== 'metadata.json')]
  const {writeBoxArchive} = await import('../box/archive.js')
  const stage = options.progress.stage(`Repackaging ${name} ${version} (${provider})`)
  try {
    const written = await writeBoxArchive({
      sourceDir: dir,
      entries,
      output,
      compression: options.compression,
      signal: options.signal,
      onProgress: (done, total) => stage.update(`${formatBytes(done)} of ${formatBytes(total)}`),
    })
    stage.done(`${output}, ${formatBytes(written.size)}`)
    return {...written, entries}
  } catch (error) {
    stage.fail()
    throw error
  }
}
