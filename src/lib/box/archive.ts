/**
 * .box archives: a tar (plain, gzip or zstd) holding metadata.json, the disk image and
 * friends. Writing streams every file through the compressor and hashes the output on
 * the way to disk; extracting checks every entry before anything touches the disk, so a
 * hostile box can never write outside its destination.
 */
import {createHash} from 'node:crypto'
import {createReadStream, createWriteStream} from 'node:fs'
import {link, lstat, mkdir, open, readdir, rename, rm, stat, symlink, unlink} from 'node:fs/promises'
import {dirname, isAbsolute, join, posix, relative, resolve, sep} from 'node:path'
import {PassThrough, Transform, Writable, type Duplex} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {createGunzip, createGzip} from 'node:zlib'

import {execa} from 'execa'
import * as tar from 'tar-stream'

import {BoxError, ExitCode} from '../core/errors.js'
import {toBoxError} from '../core/exec.js'

export type Compression = 'zstd' | 'gzip' | 'none'

export type ProgressCallback = (bytesDone: number, bytesTotal: number) => void

export interface WriteBoxArchiveOptions {
  /** Directory the entries are read from. */
  sourceDir: string
  /** Names relative to sourceDir, in archive order (metadata.json first). Directories are added with their contents. */
  entries: string[]
  /** The .box file to write; `<output>.partial` exists only while writing. */
  output: string
  compression: Compression
  /** zstd level (1-19, default 3) or gzip level (1-9, default 6). */
  level?: number
  signal?: AbortSignal
  /** Uncompressed bytes of file content read so far, out of the total. */
  onProgress?: ProgressCallback
}

export interface WrittenBoxArchive {
  output: string
  /** sha256 (hex) of the bytes written to `output`. */
  sha256: string
  /** Size of `output` in bytes. */
  size: number
}

export interface ExtractBoxArchiveOptions {
  file: string
  /** Destination directory (created if missing). Nothing is ever written outside it. */
  dest: string
  signal?: AbortSignal
  /** Archive bytes (as stored, compressed) read so far, out of the file's size. */
  onProgress?: ProgressCallback
}

export interface ExtractedBoxArchive {
  compression: Compression
  /** Entry names written, normalised (no leading ./). */
  entries: string[]
}

/** Large reads: fewer syscalls and stream hops for multi-gigabyte disk images. */
const READ_CHUNK = 1024 * 1024

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd])
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b])
const ZIP_MAGIC = Buffer.from([0x50, 0x4b])

/** What a .box is compressed with, from its first bytes (never from its name). */
export async function detectCompression(file: string): Promise<Compression> {
  const head = Buffer.alloc(512)
  let bytesRead: number
  try {
    const handle = await open(file, 'r')
    try {
      ;({bytesRead} = await handle.read(head, 0, head.length, 0))
    } finally {
      await handle.close()
    }
  } catch (error) {
    throw fileError(file, error)
  }
  if (bytesRead >= 4 && head.subarray(0, 4).equals(ZSTD_MAGIC)) return 'zstd'
  if (bytesRead >= 2 && head.subarray(0, 2).equals(GZIP_MAGIC)) return 'gzip'
  if (bytesRead >= 262 && head.toString('latin1', 257, 262) === 'ustar') return 'none'
  if (bytesRead >= 4 && head.subarray(0, 2).equals(ZIP_MAGIC)) {
    throw new BoxError(`zip boxes are not supported yet: ${file}`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['repack it as a tar: unzip it, then `tar -czf NAME.box metadata.json box.img …`'],
    })
  }
  throw new BoxError(`${file} is not a box: expected a tar archive (plain, gzip or zstd)`, {exitCode: ExitCode.USAGE})
}

/**
 * Write a .box: tar → compressor → sha256 → `<output>.partial`, renamed to `output`
 * once complete. Files are streamed (a 20 GB sparse qcow2 never sits in memory) and
 * the checksum is taken from the bytes as they are written, so there is no second pass.
 * On failure or abort the partial file is removed.
 */
export async function writeBoxArchive(options: WriteBoxArchiveOptions): Promise<WrittenBoxArchive> {
  const {sourceDir, output, compression, signal, onProgress} = options
  const files = await listSourceFiles(sourceDir, options.entries)
  const bytesTotal = files.reduce((sum, file) => sum + (file.type === 'file' ? file.size : 0), 0)
  const partial = `${output}.partial`
  const hash = createHash('sha256')
  let size = 0
  const hashOutput = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk)
      size += chunk.length
      callback(null, chunk)
    },
  })

  const pack = tar.pack()
  const compressor = createCompressor(compression, options.level)
  const fileOut = createWriteStream(partial)
  let bytesDone = 0
  onProgress?.(0, bytesTotal)

  // Feed the pack while the pipeline drains it.
  const feed = (async () => {
    for (const file of files) {
      signal?.throwIfAborted()
      const header = {name: file.name, mode: file.mode, mtime: file.mtime}
      if (file.type === 'directory') {
        await new Promise<void>((done, fail) => pack.entry({...header, type: 'directory'}, (error) => (error ? fail(error) : done())))
        continue
      }
      const entry = pack.entry({...header, type: 'file', size: file.size})
      const counter = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          bytesDone += chunk.length
          onProgress?.(bytesDone, bytesTotal)
          callback(null, chunk)
        },
      })
      await pipeline(createReadStream(join(sourceDir, file.name), {highWaterMark: READ_CHUNK}), counter, entry, {signal})
    }
    pack.finalize()
  })()

  try {
    await settleTogether([pipeline(pack, compressor.stream, hashOutput, fileOut, {signal}), feed], () => {
      pack.destroy()
      compressor.stream.destroy()
      fileOut.destroy()
    })
    await compressor.finished
    await rename(partial, output)
  } catch (error) {
    compressor.stream.destroy()
    await compressor.finished.catch(() => undefined)
    await rm(partial, {force: true})
    throw archiveError(error, signal, `writing ${output}`, compressor)
  }
  return {output, sha256: hash.digest('hex'), size}
}

/**
 * Extract a .box into `dest`, refusing (with the entry's name) absolute paths, `..`,
 * links that lead outside, devices and fifos. Each entry is checked before anything is
 * written for it. The caller owns `dest` and removes it when this throws.
 */
export async function extractBoxArchive(options: ExtractBoxArchiveOptions): Promise<ExtractedBoxArchive> {
  const {file, signal, onProgress} = options
  const dest = resolve(options.dest)
  const compression = await detectCompression(file)
  const fileSize = (await stat(file)).size
  await mkdir(dest, {recursive: true})

  const input = createReadStream(file, {highWaterMark: READ_CHUNK})
  let bytesRead = 0
  onProgress?.(0, fileSize)
  const countInput = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      bytesRead += chunk.length
      onProgress?.(bytesRead, fileSize)
      callback(null, chunk)
    },
  })
  const decompressor = createDecompressor(compression)
  const extract = tar.extract()
  const written: string[] = []

  const consume = async () => {
    for await (const entry of extract) {
      signal?.throwIfAborted()
      const name = await writeEntry(dest, entry)
      if (name !== undefined) written.push(name)
    }
  }

  try {
    await settleTogether([pipeline(input, countInput, decompressor.stream, extract, {signal}), consume()], () => {
      input.destroy()
      decompressor.stream.destroy()
      extract.destroy()
    })
    await decompressor.finished
  } catch (error) {
    input.destroy()
    decompressor.stream.destroy()
    extract.destroy()
    await decompressor.finished.catch(() => undefined)
    throw archiveError(error, signal, `extracting ${file}`, decompressor)
  }
  return {compression, entries: written}
}

/**
 * One file's content from a .box (metadata.json, typically) without extracting the rest:
 * reading stops at the entry, so it is quick when the file comes first, as box writes it.
 * Entries larger than `maxBytes` are refused (metadata is small; a disk image is not).
 */
export async function readArchiveFile(
  file: string,
  name: string,
  options: {maxBytes?: number; signal?: AbortSignal; /** Give up (undefined) after this many entries: a cheap peek. */ maxEntries?: number} = {},
): Promise<Buffer | undefined> {
  const maxBytes = options.maxBytes ?? 16 * 1024 * 1024
  let entriesSeen = 0
  const wanted = normaliseEntryName(name)
  const compression = await detectCompression(file)
  const input = createReadStream(file)
  const decompressor = createDecompressor(compression)
  const extract = tar.extract()
  // The pipeline fails with a premature close once we stop reading early; that is expected.
  const flowing = pipeline(input, decompressor.stream, extract, {signal: options.signal}).catch((error: unknown) => error)
  let found: Buffer | undefined
  let failure: unknown
  try {
    for await (const entry of extract) {
      if (normaliseEntryName(entry.header.name) === wanted && isFileType(entry.header.type)) {
        if ((entry.header.size ?? 0) > maxBytes) {
          throw new BoxError(`${name} in ${file} is larger than ${maxBytes} bytes`, {exitCode: ExitCode.USAGE})
        }
        const chunks: Buffer[] = []
        for await (const chunk of entry) chunks.push(chunk as Buffer)
        found = Buffer.concat(chunks)
        break
      }
      if (++entriesSeen >= (options.maxEntries ?? Number.POSITIVE_INFINITY)) break
      entry.resume()
    }
  } catch (error) {
    failure = error
  } finally {
    input.destroy()
    decompressor.stream.destroy()
    extract.destroy()
  }
  const pipelineError = await flowing
  await decompressor.finished.catch(() => undefined)
  if (failure) throw archiveError(failure, options.signal, `reading ${file}`, decompressor)
  // A damaged archive ends the entry loop early through the pipeline, not the loop.
  if (found === undefined && pipelineError && entriesSeen < (options.maxEntries ?? Number.POSITIVE_INFINITY)) throw archiveError(pipelineError, options.signal, `reading ${file}`, decompressor)
  return found
}

/**
 * Await stream jobs that feed each other. On the first failure every stream is destroyed
 * (so none waits forever), all jobs settle, and the most telling error wins: a BoxError
 * (a refused entry) over the "premature close" it causes downstream.
 */
async function settleTogether(jobs: Array<Promise<unknown>>, destroyAll: () => void): Promise<void> {
  let destroyed = false
  const watched = jobs.map((job) =>
    job.catch((error: unknown) => {
      if (!destroyed) {
        destroyed = true
        destroyAll()
      }
      throw error
    }),
  )
  const errors = (await Promise.allSettled(watched)).flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : []))
  if (errors.length > 0) throw errors.find((error) => error instanceof BoxError) ?? errors[0]
}

// ---------------------------------------------------------------------------------
// Writing helpers

interface SourceFile {
  name: string
  type: 'file' | 'directory'
  size: number
  mode: number
  mtime: Date
}

/** Stat every entry up front: the tar header needs the size, and progress needs the total. */
async function listSourceFiles(sourceDir: string, entries: string[]): Promise<SourceFile[]> {
  const files: SourceFile[] = []
  const visit = async (name: string): Promise<void> => {
    const normalised = normaliseEntryName(name)
    if (!isSafeRelativeName(normalised)) throw new BoxError(`cannot add ${JSON.stringify(name)} to a box: entries must be relative paths inside ${sourceDir}`)
    const path = join(sourceDir, normalised)
    let info
    try {
      info = await stat(path)
    } catch (error) {
      throw fileError(path, error)
    }
    const common = {name: normalised, mode: info.mode & 0o777, mtime: info.mtime}
    if (info.isDirectory()) {
      files.push({...common, type: 'directory', size: 0})
      for (const child of (await readdir(path)).sort()) await visit(posix.join(normalised, child))
    } else if (info.isFile()) {
      files.push({...common, type: 'file', size: info.size})
    } else {
      throw new BoxError(`cannot add ${path} to a box: only regular files and directories can be packed`)
    }
  }
  for (const name of entries) await visit(name)
  return files
}

// ---------------------------------------------------------------------------------
// Compressors: zlib for gzip; the system zstd for zstd (Node 20's zlib has none).

interface StreamStage {
  stream: Duplex
  /** Settles when the stage is completely done (for zstd: the process has exited). */
  finished: Promise<void>
  /** The zstd process's own error, to name it in messages. */
  processError?: () => unknown
}

function createCompressor(compression: Compression, level?: number): StreamStage {
  if (compression === 'gzip') return zlibStage(createGzip({level: level ?? 6}))
  if (compression === 'zstd') return zstdStage(['-q', '-c', '-T0', `-${level ?? 3}`])
  return zlibStage(new PassThrough())
}

function createDecompressor(compression: Compression): StreamStage {
  if (compression === 'gzip') return zlibStage(createGunzip())
  if (compression === 'zstd') return zstdStage(['-q', '-d', '-c'])
  return zlibStage(new PassThrough())
}

function zlibStage(stream: Duplex): StreamStage {
  return {stream, finished: Promise.resolve()}
}

function zstdStage(args: string[]): StreamStage {
  const subprocess = execa('zstd', args, {stdin: 'pipe', stdout: 'pipe', stderr: 'pipe', buffer: {stdout: false, stderr: true}})
  let processError: unknown
  const finished = subprocess.then(
    () => undefined,
    (error: unknown) => {
      processError = error
      throw error
    },
  )
  finished.catch(() => undefined) // observed through processError / the stream
  const stream = subprocess.duplex()
  return {
    stream,
    finished,
    processError: () => (processError === undefined ? undefined : toBoxError('zstd', args, processError, 'zstd')),
  }
}

// ---------------------------------------------------------------------------------
// Extraction: every check happens before the entry touches the disk.

/** One entry as tar-stream yields it (a streamx Readable carrying its header). */
type TarEntry = tar.ExtractEvents['entry'][1]

async function writeEntry(dest: string, entry: TarEntry): Promise<string | undefined> {
  const {header} = entry
  const rawName = header.name
  const name = normaliseEntryName(rawName)
  const shown = JSON.stringify(rawName)
  const refuse = (why: string): never => {
    entry.resume()
    throw new BoxError(`refusing to extract entry ${shown}: ${why}`, {exitCode: ExitCode.FAILURE, suggestions: ['this box is damaged or hostile: get it again from a source you trust']})
  }

  if (rawName.includes('\0')) refuse('its name contains a NUL byte')
  if (isAbsolute(rawName) || rawName.startsWith('/')) refuse('absolute paths are not allowed')
  if (rawName.split(/[/\\]/).includes('..')) refuse('paths with ".." are not allowed')
  if (name === '') {
    entry.resume() // the archive's root ("./")
    return undefined
  }
  const target = join(dest, ...name.split('/'))
  if (!isInside(dest, target)) refuse('it points outside the destination')

  switch (header.type) {
    case 'file':
    case 'contiguous-file': {
      await assertNoLinkInParents(dest, target, refuse)
      await prepareParent(dest, target)
      await removeExisting(target)
      await pipeline(entry, await createSparseFileWriter(target, (header.mode ?? 0o644) & 0o777))
      return name
    }
    case 'directory': {
      await assertNoLinkInParents(dest, target, refuse)
      const existing = await lstat(target).catch(() => undefined)
      if (existing && !existing.isDirectory()) await removeExisting(target)
      await mkdir(target, {recursive: true, mode: ((header.mode ?? 0o755) & 0o777) | 0o700})
      entry.resume()
      return name
    }
    case 'symlink': {
      const linkname: string = header.linkname ?? ''
      if (linkname === '') refuse('symlink without a target')
      if (isAbsolute(linkname)) refuse(`symlink to an absolute path (${linkname})`)
      const parts = linkname.split('/').filter((part) => part !== '' && part !== '.')
      // ".." only at the start: then it climbs real directories (no links in our own path), never through another link.
      const firstDown = parts.findIndex((part) => part !== '..')
      if (firstDown !== -1 && parts.slice(firstDown).includes('..')) refuse(`symlink target ${linkname} has ".." after a path component`)
      if (!isInside(dest, resolve(dirname(target), linkname), true)) refuse(`symlink to ${linkname} leads outside the destination`)
      await assertNoLinkInParents(dest, target, refuse)
      await prepareParent(dest, target)
      await removeExisting(target)
      await symlink(linkname, target)
      entry.resume()
      return name
    }
    case 'link': {
      // A hard link's target is relative to the archive root, like entry names.
      const linkname: string = header.linkname ?? ''
      if (linkname === '' || isAbsolute(linkname) || linkname.split('/').includes('..')) refuse(`hard link to ${JSON.stringify(linkname)} leads outside the destination`)
      const linkTarget = join(dest, ...normaliseEntryName(linkname).split('/'))
      if (!isInside(dest, linkTarget)) refuse(`hard link to ${linkname} leads outside the destination`)
      await assertNoLinkInParents(dest, linkTarget, refuse)
      const targetInfo = await lstat(linkTarget).catch(() => undefined)
      // Only to a regular file already extracted: a hard link to a symlink would move its base.
      if (!targetInfo?.isFile()) refuse(`hard link to ${linkname}, which is not a file extracted earlier`)
      await assertNoLinkInParents(dest, target, refuse)
      await prepareParent(dest, target)
      await removeExisting(target)
      await link(linkTarget, target)
      entry.resume()
      return name
    }
    case 'character-device':
    case 'block-device':
      refuse(`${header.type} entries are not allowed`)
      break
    case 'fifo':
      refuse('fifo entries are not allowed')
      break
  }
  return refuse(`unsupported entry type ${String(header.type)} (sparse or vendor-specific tar entries are not supported)`)
}

const SPARSE_BLOCK = 4096
const ZERO_BLOCK = Buffer.alloc(SPARSE_BLOCK)

/**
 * A file writer that leaves all-zero 4 KiB blocks as holes: a raw or preallocated disk
 * image takes only the space its data needs, as `tar --sparse`/`cp --sparse` would do.
 * Opened with 'wx': never follows (or overwrites) anything at the target.
 */
async function createSparseFileWriter(path: string, mode: number): Promise<Writable> {
  const handle = await open(path, 'wx', mode)
  let position = 0
  return new Writable({
    async write(chunk: Buffer, _encoding, callback) {
      try {
        let offset = 0
        while (offset < chunk.length) {
          // Blocks are aligned to the file, so holes fall on filesystem block boundaries.
          const end = Math.min(chunk.length, offset + SPARSE_BLOCK - ((position + offset) % SPARSE_BLOCK))
          let runEnd = end
          const zero = chunk.subarray(offset, end).equals(ZERO_BLOCK.subarray(0, end - offset))
          // Extend the run while blocks stay of the same kind, so data is written in large pieces.
          while (runEnd < chunk.length) {
            const next = Math.min(chunk.length, runEnd + SPARSE_BLOCK)
            if (chunk.subarray(runEnd, next).equals(ZERO_BLOCK.subarray(0, next - runEnd)) !== zero) break
            runEnd = next
          }
          if (!zero) await handle.write(chunk, offset, runEnd - offset, position + offset)
          offset = runEnd
        }
        position += chunk.length
        callback()
      } catch (error) {
        callback(error as Error)
      }
    },
    async final(callback) {
      try {
        await handle.truncate(position) // a trailing hole still counts towards the size
        await handle.close()
        callback()
      } catch (error) {
        callback(error as Error)
      }
    },
    async destroy(error, callback) {
      await handle.close().catch(() => undefined)
      callback(error)
    },
  })
}

/** Strip "./" prefixes and trailing slashes: "./box.img" and "box.img" are the same entry. */
function normaliseEntryName(name: string): string {
  return name
    .split('/')
    .filter((part) => part !== '' && part !== '.')
    .join('/')
}

function isSafeRelativeName(name: string): boolean {
  return name !== '' && !isAbsolute(name) && !name.split('/').includes('..')
}

function isFileType(type: tar.Header['type'] | null | undefined): boolean {
  return type === 'file' || type === 'contiguous-file'
}

/** `path` is strictly below `dir` (or, with allowSelf, `dir` itself: a symlink may point at the root). */
function isInside(dir: string, path: string, allowSelf = false): boolean {
  const rel = relative(dir, path)
  if (rel === '') return allowSelf
  return !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel)
}

/** Refuse an entry whose parent path goes through a symlink: writing there would follow it. */
async function assertNoLinkInParents(dest: string, target: string, refuse: (why: string) => never): Promise<void> {
  const parts = relative(dest, target).split(sep).slice(0, -1)
  let current = dest
  for (const part of parts) {
    current = join(current, part)
    const info = await lstat(current).catch(() => undefined)
    if (!info) return // the rest does not exist yet: mkdir creates real directories
    if (info.isSymbolicLink()) refuse(`its path goes through the symlink ${relative(dest, current)}`)
    if (!info.isDirectory()) refuse(`its parent ${relative(dest, current)} is not a directory`)
  }
}

async function prepareParent(dest: string, target: string): Promise<void> {
  const parent = dirname(target)
  if (parent !== dest) await mkdir(parent, {recursive: true})
}

/** A later entry replaces an earlier one of the same name, as tar does; directories stay. */
async function removeExisting(target: string): Promise<void> {
  const info = await lstat(target).catch(() => undefined)
  if (!info) return
  if (info.isDirectory()) await rm(target, {recursive: true, force: true})
  else await unlink(target)
}

// ---------------------------------------------------------------------------------
// Errors

function fileError(file: string, error: unknown): BoxError {
  const code = (error as NodeJS.ErrnoException).code
  if (code === 'ENOENT') return new BoxError(`file not found: ${file}`, {exitCode: ExitCode.USAGE, cause: error})
  return new BoxError(`cannot read ${file}: ${(error as Error).message}`, {cause: error})
}

function archiveError(error: unknown, signal: AbortSignal | undefined, doing: string, stage: StreamStage): unknown {
  if (signal?.aborted) return signal.reason instanceof BoxError ? signal.reason : new BoxError(`${doing} was interrupted`, {exitCode: ExitCode.INTERRUPTED, cause: error})
  if (error instanceof BoxError) return error
  const code = (error as {code?: string}).code
  const processError = stage.processError?.()
  // zstd missing: the exec wrapper's error names the package to install.
  if (processError instanceof BoxError && (processError.cause as {code?: string} | undefined)?.code === 'ENOENT') return processError
  if (code === 'ENOSPC') return new BoxError(`${doing} failed: no space left on the device`, {cause: error})
  const message = (error as Error).message ?? String(error)
  return new BoxError(`${doing} failed: ${message}`, {
    cause: error,
    detail: processError instanceof BoxError ? processError.detail : undefined,
    suggestions: /unexpected end|premature|truncated|incorrect header|invalid tar|unknown format/i.test(message) ? ['the archive looks truncated or damaged: get it again'] : [],
  })
}
