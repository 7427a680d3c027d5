/**
 * What comes back from a worker is written on the host only through here: stdout and stderr
 * cut at the output limit with a marker line, and the out: files from box-job's tar, where
 * each entry is checked before anything is written for it — regular files and folders
 * only, inside results/<id>/, never through a link. Links, devices, fifos, absolute names
 * and ".." are refused and listed in the record, never created.
 */
import {createReadStream} from 'node:fs'
import {lstat, mkdir, open, type FileHandle} from 'node:fs/promises'
import {join, posix} from 'node:path'
import {Writable} from 'node:stream'
import {pipeline} from 'node:stream/promises'

import * as tar from 'tar-stream'

import {BoxError} from '../core/errors.js'
import {formatBytes} from '../core/progress.js'

/** The line that ends an output cut at the limit. */
export function cutMarker(limit: number): string {
  return `\n[box: output cut at ${formatBytes(limit)} (${limit} bytes): the job wrote more and was stopped]\n`
}

/**
 * A file that keeps the first `limit` bytes written to it; past that it notes the cut and
 * ignores the rest. `finish()` appends the marker when something was cut.
 */
export class CappedOutput {
  private written = 0
  private closed = false
  cut = false

  private constructor(
    private readonly handle: FileHandle,
    readonly limit: number,
    private readonly echo?: (chunk: Buffer) => void,
  ) {}

  static async create(path: string, limit: number, echo?: (chunk: Buffer) => void): Promise<CappedOutput> {
    return new CappedOutput(await open(path, 'wx', 0o644), limit, echo)
  }

  get bytes(): number {
    return this.written
  }

  async write(chunk: Buffer): Promise<void> {
    const room = this.limit - this.written
    if (chunk.length > room) this.cut = true
    const kept = room > 0 ? chunk.subarray(0, room) : undefined
    if (!kept || kept.length === 0) return
    this.written += kept.length
    this.echo?.(kept)
    await this.handle.write(kept)
  }

  /** A Writable for pipelines (e.g. ssh's stdout). */
  stream(): Writable {
    return new Writable({
      write: (chunk: Buffer, _encoding, callback) => void this.write(chunk).then(() => callback(), callback),
    })
  }

  async finish(cut = false): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (cut) this.cut = true
    if (this.cut) await this.handle.write(cutMarker(this.limit))
    await this.handle.close()
  }
}

/** Copy `source` (what box-job kept: up to limit + 1 bytes) into a capped file. */
export async function capFile(
  source: string | undefined,
  dest: string,
  limit: number,
  cut: boolean,
): Promise<{bytes: number; cut: boolean}> {
  const output = await CappedOutput.create(dest, limit)
  try {
    if (source) await pipeline(createReadStream(source), output.stream())
  } finally {
    await output.finish(cut)
  }
  return {bytes: output.bytes, cut: output.cut}
}

export interface ExtractedOutputs {
  files: number
  bytes: number
  refused: Array<{name: string; reason: string}>
}

/**
 * Extract box-job's tar of the out: paths into `dest`. An entry belongs to the out path it
 * starts with and lands at `<basename of that path>/<rest>`; anything else is refused.
 * `maxBytes` bounds what is written in all.
 */
export async function extractOutputs(
  tarFile: string,
  dest: string,
  outputs: readonly string[],
  maxBytes: number,
): Promise<ExtractedOutputs> {
  const result: ExtractedOutputs = {files: 0, bytes: 0, refused: []}
  // Guest paths as tar stores them: no leading "/".
  const roots = outputs.map((output) => ({stored: output.replace(/^\/+/, ''), name: posix.basename(output)}))
  const extract = tar.extract()
  // Names refused for not being files or folders: nothing is written under them either.
  const refusedNames: string[] = []
  const consume = async () => {
    for await (const entry of extract) {
      const name = entry.header.name
        .split('/')
        .filter((part) => part !== '' && part !== '.')
        .join('/')
      const under = refusedNames.find((refused) => name.startsWith(`${refused}/`))
      const reason = under
        ? `it lies under ${under}, which was refused`
        : await writeEntry(entry, dest, roots, maxBytes - result.bytes, result)
      if (reason && !under && entry.header.type !== 'file' && entry.header.type !== 'directory') refusedNames.push(name)
      if (reason) {
        result.refused.push({name: entry.header.name, reason})
        entry.resume()
      }
    }
  }
  await Promise.all([pipeline(createReadStream(tarFile), extract), consume()])
  return result
}

type TarEntry = tar.ExtractEvents['entry'][1]

/** Writes one entry, or says why not (undefined when written). */
async function writeEntry(
  entry: TarEntry,
  dest: string,
  roots: Array<{stored: string; name: string}>,
  room: number,
  result: ExtractedOutputs,
): Promise<string | undefined> {
  const {header} = entry
  const raw = header.name
  if (raw.includes('\0')) return 'its name holds a NUL byte'
  if (raw.startsWith('/')) return 'absolute names are not written'
  const parts = raw.split('/').filter((part) => part !== '' && part !== '.')
  if (parts.includes('..')) return 'names with ".." are not written'
  const name = parts.join('/')
  const root = roots.find((candidate) => name === candidate.stored || name.startsWith(`${candidate.stored}/`))
  if (!root) return 'not under any out: path'
  const rest = name.slice(root.stored.length).replace(/^\//, '')
  const relativeParts = [root.name, ...(rest === '' ? [] : rest.split('/'))]
  if (header.type !== 'file' && header.type !== 'contiguous-file' && header.type !== 'directory') {
    return `${header.type} entries are not written (only files and folders)`
  }
  // Every parent must be a real folder of ours: never write through a link.
  let current = dest
  for (const part of relativeParts.slice(0, -1)) {
    current = join(current, part)
    const info = await lstat(current).catch(() => undefined)
    if (!info) await mkdir(current, {mode: 0o755})
    else if (!info.isDirectory() || info.isSymbolicLink()) return `its folder ${part} is not a folder`
  }
  const target = join(dest, ...relativeParts)
  if (header.type === 'directory') {
    const info = await lstat(target).catch(() => undefined)
    if (!info) await mkdir(target, {mode: 0o755})
    else if (!info.isDirectory()) return 'a non-folder of that name was written already'
    entry.resume()
    return undefined
  }
  const size = header.size ?? 0
  if (size > room) return `over the outputs limit (${formatBytes(size)} with ${formatBytes(Math.max(0, room))} left)`
  // 'wx': never follows or replaces what is there (a link included).
  let handle: FileHandle
  try {
    handle = await open(target, 'wx', (header.mode ?? 0o644) & 0o755)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return 'a file of that name was written already'
    throw new BoxError(`cannot write ${target}: ${(error as Error).message}`, {cause: error})
  }
  try {
    for await (const chunk of entry) await handle.write(chunk as Buffer)
  } finally {
    await handle.close()
  }
  result.files++
  result.bytes += size
  return undefined
}
