/**
 * .box archives: a tar holding metadata.json, the disk image and friends. Writing (tar-stream)
 * streams every file through the compressor (gzip or zstd) and hashes the output on the way
 * to disk. Reading takes every dialect real boxes come in (tar-reader.ts says which and why
 * it is our own), compressed with gzip (zlib), bzip2, xz or zstd (the system programs, in
 * a process of their own so decompression runs beside extraction) as the first bytes say,
 * and checks every entry before anything touches the disk, so a hostile box can never write
 * outside its destination. Sparse entries are written sparse.
 */
import {createHash} from 'node:crypto'
import {closeSync, createReadStream, createWriteStream, openSync} from 'node:fs'
import {
  link,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  statfs,
  symlink,
  unlink,
  type FileHandle,
} from 'node:fs/promises'
import {dirname, isAbsolute, join, posix, relative, resolve, sep} from 'node:path'
import {PassThrough, Transform, type Duplex} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {createGunzip, createGzip} from 'node:zlib'

import * as tar from 'tar-stream'

import {BoxError, ExitCode} from '../core/errors.js'
import {spawn, toBoxError} from '../core/exec.js'
import {formatBytes} from '../core/progress.js'
import {shQuote} from '../core/shell-quote.js'
import {NotATarError, TarReader, TruncatedArchiveError, type TarEntry} from './tar-reader.js'

/** What box writes a .box with. */
export type Compression = 'zstd' | 'gzip' | 'none'
/** What a .box may be compressed with, as read. */
export type ArchiveCompression = Compression | 'bzip2' | 'xz'

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
  compression: ArchiveCompression
  /** Entry names written, normalised (no leading ./). */
  entries: string[]
}

/** Large reads: fewer syscalls and stream hops for multi-gigabyte disk images. */
const READ_CHUNK = 1024 * 1024

const MAGICS: Array<[ArchiveCompression, Buffer]> = [
  ['zstd', Buffer.from([0x28, 0xb5, 0x2f, 0xfd])],
  ['gzip', Buffer.from([0x1f, 0x8b])],
  ['xz', Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ['bzip2', Buffer.from('BZh', 'latin1')],
]
const ZIP_MAGIC = Buffer.from([0x50, 0x4b])
/** Enough of the file to recognise a tar header, a disk image or an ISO. */
const HEAD_BYTES = 36 * 1024

/** What a .box is compressed with, from its first bytes (never from its name); a file that is no box is refused saying what it is. */
export async function detectCompression(file: string): Promise<ArchiveCompression> {
  const head = await readHead(file)
  for (const [compression, magic] of MAGICS) {
    if (head.length >= magic.length && head.subarray(0, magic.length).equals(magic)) return compression
  }
  if (looksLikeTarHeader(head)) return 'none'
  throw notABox(file, head, 'none')
}

async function readHead(file: string): Promise<Buffer> {
  try {
    const handle = await open(file, 'r')
    try {
      const {buffer, bytesRead} = await handle.read(Buffer.alloc(HEAD_BYTES), 0, HEAD_BYTES, 0)
      return buffer.subarray(0, bytesRead)
    } finally {
      await handle.close()
    }
  } catch (error) {
    throw fileError(file, error)
  }
}

/** A ustar magic, or (for v7 archives, which have none) a header whose checksum adds up. */
function looksLikeTarHeader(head: Buffer): boolean {
  if (head.length < 512) return false
  if (head.toString('latin1', 257, 262) === 'ustar') return true
  const stored = head
    .toString('latin1', 148, 156)
    .replace(/[\0 ]+$/, '')
    .trim()
  if (!/^[0-7]{1,8}$/.test(stored) || head[0] === 0) return false
  let sum = 8 * 0x20
  for (let i = 0; i < 512; i++) if (i < 148 || i >= 156) sum += head[i]!
  return sum === Number.parseInt(stored, 8)
}

/** What a file that is not a tar is, from its first bytes: a disk image people mistake for a box, mostly. */
function identifyContent(
  head: Buffer,
): {what: string; image?: 'qcow2' | 'raw' | 'other'; virtualSize?: number} | undefined {
  const at = (offset: number, text: string) =>
    head.length >= offset + text.length && head.toString('latin1', offset, offset + text.length) === text
  if (at(0, 'QFI\u00FB'))
    return {
      what: 'a qcow2 disk image',
      image: 'qcow2',
      virtualSize: head.length >= 32 ? Number(head.readBigUInt64BE(24)) : undefined,
    }
  if (at(0, 'KDMV') || at(0, '# Disk DescriptorFile')) return {what: 'a VMDK disk image', image: 'other'}
  if (head.length >= 68 && head.readUInt32LE(64) === 0xbeda107f)
    return {what: 'a VirtualBox VDI disk image', image: 'other'}
  if (at(0, 'vhdxfile')) return {what: 'a VHDX disk image', image: 'other'}
  if (at(0, 'conectix')) return {what: 'a VHD disk image', image: 'other'}
  if (at(32769, 'CD001')) return {what: 'an ISO 9660 image', image: 'other'}
  if (at(512, 'EFI PART')) return {what: 'a raw disk image (GPT partition table)', image: 'raw'}
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa)
    return {what: 'a raw disk image (MBR boot sector)', image: 'raw'}
  if (head.length >= 1082 && head.readUInt16LE(1080) === 0xef53)
    return {what: 'a raw ext2/3/4 filesystem image', image: 'raw'}
  if (head.length >= 4 && head.subarray(0, 2).equals(ZIP_MAGIC)) return {what: 'a zip archive'}
  return undefined
}

/** The refusal for a file that is no tar: what it is, and how to make a box of it. */
function notABox(file: string, head: Buffer, compression: ArchiveCompression): BoxError {
  const found = identifyContent(head)
  const compressed = compression === 'none' ? '' : `${compression}-compressed `
  if (found?.what === 'a zip archive') {
    return new BoxError(`zip boxes are not supported yet: ${file}`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['repack it as a tar: unzip it, then `tar -czf NAME.box metadata.json box.img …`'],
    })
  }
  if (found?.image) {
    const what = compressed ? `${compressed}${found.what.replace(/^an? /, '')}` : found.what
    const article = compressed ? 'a ' : ''
    const gib = found.virtualSize ? Math.ceil(found.virtualSize / 2 ** 30) : undefined
    const unpack = compressed ? `decompress it (${compression} -dc ${shQuote(file)} > IMAGE), then ` : ''
    const image = compressed ? 'IMAGE' : shQuote(file)
    const suggestions =
      found.image === 'qcow2'
        ? [
            `${unpack}wrap it in a box: mkdir wrap && cp ${image} wrap/box.img && echo '{"provider":"libvirt","format":"qcow2","virtual_size":${gib ?? 'GiB'}}' > wrap/metadata.json && tar -czf NAME.box -C wrap metadata.json box.img`,
            'then: box add NAME NAME.box',
          ]
        : found.image === 'raw'
          ? [
              `${unpack}convert it and wrap it in a box: mkdir wrap && qemu-img convert -O qcow2 ${image} wrap/box.img && echo '{"provider":"libvirt","format":"qcow2","virtual_size":GiB}' > wrap/metadata.json && tar -czf NAME.box -C wrap metadata.json box.img`,
              'then: box add NAME NAME.box',
            ]
          : [
              `${unpack}convert it to qcow2 (qemu-img convert -O qcow2 ${image} box.img) and wrap it with a metadata.json ({"provider":"libvirt","format":"qcow2"}) in a tar`,
            ]
    return new BoxError(
      `${file} is ${article}${what}, not a box: a .box is a tar archive holding metadata.json and the disk image (box does not take bare disk images)`,
      {exitCode: ExitCode.USAGE, suggestions},
    )
  }
  const inside = compressed
    ? `its ${compression} stream holds no tar archive`
    : 'expected a tar archive (plain or compressed with gzip, bzip2, xz or zstd)'
  return new BoxError(`${file} is not a box: ${inside}`, {exitCode: ExitCode.USAGE})
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
        await new Promise<void>((done, fail) =>
          pack.entry({...header, type: 'directory'}, (error) => (error ? fail(error) : done())),
        )
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
      await pipeline(createReadStream(join(sourceDir, file.name), {highWaterMark: READ_CHUNK}), counter, entry, {
        signal,
      })
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
 * links that lead outside, devices and fifos, hostile sparse maps, and entries that would
 * not fit in the free space. Each entry's whole header is read and checked before anything
 * is written for it. The caller owns `dest` and removes it when this throws.
 */
export async function extractBoxArchive(options: ExtractBoxArchiveOptions): Promise<ExtractedBoxArchive> {
  const {file, signal, onProgress} = options
  const dest = resolve(options.dest)
  const compression = await detectCompression(file)
  const fileSize = (await stat(file)).size
  await mkdir(dest, {recursive: true})
  const space = await statfs(dest)
  let freeBytes = space.bavail * space.bsize

  onProgress?.(0, fileSize)
  const input = openDecompressed(file, compression, (bytesRead) => onProgress?.(bytesRead, fileSize))
  const written: string[] = []
  try {
    const reader = new TarReader(input.chunks)
    for (let entry = await reader.next(); entry !== undefined; entry = await reader.next()) {
      signal?.throwIfAborted()
      const name = await writeEntry(dest, entry, reader, {
        signal,
        reserve: (bytes) => {
          if (bytes > freeBytes) {
            throw refuseEntry(
              entry!.name,
              `it would write ${formatBytes(bytes)} (${bytes} bytes), more than the ${formatBytes(freeBytes)} left free in ${dest} (a tar bomb, or a box too big for this disk)`,
              'free some space, or check where the box came from',
            )
          }
          freeBytes -= bytes
        },
      })
      if (name !== undefined) written.push(name)
    }
    // Read to the end: the decompressor checks its stream's checksum there.
    await reader.drain()
    await input.finished
    onProgress?.(fileSize, fileSize)
  } catch (error) {
    await stopAfterFailure(input, error)
    throw archiveError(error, signal, `extracting ${file}`, input, {file, compression})
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
  options: {
    maxBytes?: number
    signal?: AbortSignal
    /** Give up (undefined) after this many entries: a cheap peek. */ maxEntries?: number
  } = {},
): Promise<Buffer | undefined> {
  const maxBytes = options.maxBytes ?? 16 * 1024 * 1024
  const maxEntries = options.maxEntries ?? Number.POSITIVE_INFINITY
  const wanted = normaliseEntryName(name)
  const compression = await detectCompression(file)
  const input = openDecompressed(file, compression)
  const abort = () => input.destroy()
  options.signal?.addEventListener('abort', abort)
  let found: Buffer | undefined
  try {
    const reader = new TarReader(input.chunks)
    let entriesSeen = 0
    for (let entry = await reader.next(); entry !== undefined; entry = await reader.next()) {
      options.signal?.throwIfAborted()
      if (normaliseEntryName(entry.name) === wanted && entry.type === 'file') {
        if (entry.size > maxBytes)
          throw new BoxError(`${name} in ${file} is larger than ${maxBytes} bytes`, {exitCode: ExitCode.USAGE})
        // A sparse entry's holes read as zeros.
        const content = Buffer.alloc(entry.size)
        for await (const {position, chunk} of reader.data()) chunk.copy(content, position)
        found = content
        break
      }
      if (++entriesSeen >= maxEntries) break
    }
  } catch (error) {
    await stopAfterFailure(input, error)
    throw archiveError(error, options.signal, `reading ${file}`, input, {file, compression})
  } finally {
    options.signal?.removeEventListener('abort', abort)
  }
  // Stopped early on purpose: what the decompressor says about the rest is not asked.
  input.destroy()
  await input.finished.catch(() => undefined)
  return found
}

/**
 * When the data ended early, the decompressor has ended (or is ending) by itself, and its
 * exit status says whether the file is cut short or corrupt: wait for it. Otherwise stop it.
 */
async function stopAfterFailure(input: DecompressedInput, error: unknown): Promise<void> {
  if (!(error instanceof TruncatedArchiveError)) input.destroy()
  await input.finished.catch(() => undefined)
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
  const errors = (await Promise.allSettled(watched)).flatMap((result) =>
    result.status === 'rejected' ? [result.reason as unknown] : [],
  )
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
    if (!isSafeRelativeName(normalised))
      throw new BoxError(
        `cannot add ${JSON.stringify(name)} to a box: entries must be relative paths inside ${sourceDir}`,
      )
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

/** A .box's decompressed bytes, read as chunks. */
interface DecompressedInput {
  chunks: AsyncIterable<Buffer>
  /** Settles when reading and decompression are over (for a program: it has exited). */
  finished: Promise<void>
  destroy: () => void
  /** The decompressing program's own error, to name it in messages. */
  processError?: () => unknown
}

const DECOMPRESSORS: Record<'zstd' | 'xz' | 'bzip2', {command: string; args: string[]}> = {
  zstd: {command: 'zstd', args: ['-q', '-d', '-c']},
  xz: {command: 'xz', args: ['-q', '-d', '-c', '-T0']},
  bzip2: {command: 'bzip2', args: ['-q', '-d', '-c']},
}

/**
 * The file → (decompressor) → chunks. gzip runs in zlib (on libuv's threads); bzip2, xz and
 * zstd run as programs reading the file themselves (its descriptor is their stdin: no copy
 * through us); either way decompression runs beside the extraction, not in turn.
 * `onRead` counts the file's (compressed) bytes, for progress.
 */
function openDecompressed(
  file: string,
  compression: ArchiveCompression,
  onRead?: (bytes: number) => void,
): DecompressedInput {
  if (compression === 'none' || compression === 'gzip') {
    const input = createReadStream(file, {highWaterMark: READ_CHUNK})
    let bytesRead = 0
    if (onRead) {
      input.on('data', (chunk: string | Buffer) => {
        bytesRead += chunk.length
        onRead(bytesRead)
      })
    }
    if (compression === 'none') {
      const finished = new Promise<void>((done, fail) => input.once('close', done).once('error', fail))
      finished.catch(() => undefined)
      return {chunks: input, finished, destroy: () => input.destroy()}
    }
    const gunzip = createGunzip({chunkSize: READ_CHUNK})
    const finished = pipeline(input, gunzip)
    finished.catch(() => undefined)
    return {chunks: gunzip, finished, destroy: () => gunzip.destroy()}
  }
  const {command, args} = DECOMPRESSORS[compression]
  let descriptor: number
  try {
    descriptor = openSync(file, 'r')
  } catch (error) {
    throw fileError(file, error)
  }
  // execa's types list only small descriptor numbers; any open descriptor is passed on as it is.
  const subprocess = spawn(command, args, {
    stdin: descriptor as 3,
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: {stdout: false, stderr: true},
  })
  // The program shares our descriptor's offset: how far it has read is our progress.
  const poll =
    onRead &&
    setInterval(
      () => void readOffset(descriptor).then((offset) => offset !== undefined && onRead(offset)),
      PROGRESS_POLL_MS,
    )
  const {finished, failure} = watchExit(subprocess)
  const closeDescriptor = () => {
    if (poll) clearInterval(poll)
    closeSync(descriptor)
  }
  finished.then(closeDescriptor, closeDescriptor)
  finished.catch(() => undefined)
  const stdout = subprocess.stdout!
  return {
    chunks: stdout,
    finished,
    destroy: () => {
      stdout.destroy()
      subprocess.kill()
    },
    processError: () =>
      failure() === undefined ? undefined : toBoxError(command, args, failure(), `decompressing (${command})`),
  }
}

/** A program's end as a promise, and the error it failed with (read once the stream it feeds has failed). */
function watchExit(subprocess: Promise<unknown>): {finished: Promise<undefined>; failure: () => unknown} {
  let failure: unknown
  const finished = subprocess.then(
    () => undefined,
    (error: unknown) => {
      failure = error
      throw error
    },
  )
  return {finished, failure: () => failure}
}

const PROGRESS_POLL_MS = 200

/** A descriptor's file offset (Linux: /proc/self/fdinfo); undefined where there is none. */
async function readOffset(descriptor: number): Promise<number | undefined> {
  const text = await readFile(`/proc/self/fdinfo/${descriptor}`, 'latin1').catch(() => '')
  const match = /^pos:\s*(\d+)/m.exec(text)
  return match ? Number(match[1]) : undefined
}

function zlibStage(stream: Duplex): StreamStage {
  return {stream, finished: Promise.resolve()}
}

function zstdStage(args: string[]): StreamStage {
  const subprocess = spawn('zstd', args, {
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: {stdout: false, stderr: true},
  })
  const {finished, failure} = watchExit(subprocess)
  finished.catch(() => undefined) // observed through processError / the stream
  const stream = subprocess.duplex()
  return {
    stream,
    finished,
    processError: () => (failure() === undefined ? undefined : toBoxError('zstd', args, failure(), 'zstd')),
  }
}

// ---------------------------------------------------------------------------------
// Extraction: every check happens before the entry touches the disk.

/** Refusing an entry: an honest tar program never writes such a thing. */
function refuseEntry(
  rawName: string,
  why: string,
  suggestion = 'no tar program writes such an entry: get the box from a source you trust',
): BoxError {
  return new BoxError(`refusing to extract entry ${JSON.stringify(rawName)}: ${why}`, {
    exitCode: ExitCode.FAILURE,
    suggestions: [suggestion],
  })
}

interface WriteEntryContext {
  signal?: AbortSignal
  /** Count `bytes` of data against the free space; throws (naming the entry) when they do not fit. */
  reserve: (bytes: number) => void
}

async function writeEntry(
  dest: string,
  entry: TarEntry,
  reader: TarReader,
  context: WriteEntryContext,
): Promise<string | undefined> {
  const rawName = entry.name
  const name = normaliseEntryName(rawName)
  const refuse = (why: string): never => {
    throw refuseEntry(rawName, why)
  }

  if (rawName.includes('\0')) refuse('its name contains a NUL byte')
  if (isAbsolute(rawName) || rawName.startsWith('/')) refuse('absolute paths are not allowed')
  if (rawName.split(/[/\\]/).includes('..')) refuse('paths with ".." are not allowed')
  if (name === '') return undefined // the archive's root ("./")
  const target = join(dest, ...name.split('/'))
  if (!isInside(dest, target)) refuse('it points outside the destination')

  switch (entry.type) {
    case 'file': {
      if (entry.size > MAX_FILE_SIZE)
        refuse(
          `it declares a size of ${formatBytes(entry.size)}, more than any disk image box takes (${formatBytes(MAX_FILE_SIZE)}): a tar bomb`,
        )
      context.reserve(entry.dataSize)
      await assertNoLinkInParents(dest, target, refuse)
      await prepareParent(dest, target)
      await removeExisting(target)
      const writer = await SparseFileWriter.create(target, entry.mode & 0o777 || 0o644)
      try {
        for await (const {position, chunk} of reader.data()) await writer.write(position, chunk)
        context.signal?.throwIfAborted()
        await writer.finish(entry.size)
      } catch (error) {
        await writer.abandon()
        throw error
      }
      return name
    }
    case 'directory': {
      await assertNoLinkInParents(dest, target, refuse)
      const existing = await lstat(target).catch(() => undefined)
      if (existing && !existing.isDirectory()) await removeExisting(target)
      await mkdir(target, {recursive: true, mode: ((entry.mode || 0o755) & 0o777) | 0o700})
      return name
    }
    case 'symlink': {
      const linkname = entry.linkname
      if (linkname === '') refuse('symlink without a target')
      if (isAbsolute(linkname)) refuse(`symlink to an absolute path (${linkname})`)
      const parts = linkname.split('/').filter((part) => part !== '' && part !== '.')
      // ".." only at the start: then it climbs real directories (no links in our own path), never through another link.
      const firstDown = parts.findIndex((part) => part !== '..')
      if (firstDown !== -1 && parts.slice(firstDown).includes('..'))
        refuse(`symlink target ${linkname} has ".." after a path component`)
      if (!isInside(dest, resolve(dirname(target), linkname), true))
        refuse(`symlink to ${linkname} leads outside the destination`)
      await assertNoLinkInParents(dest, target, refuse)
      await prepareParent(dest, target)
      await removeExisting(target)
      await symlink(linkname, target)
      return name
    }
    case 'link': {
      // A hard link's target is relative to the archive root, like entry names.
      const linkname = entry.linkname
      if (linkname === '' || isAbsolute(linkname) || linkname.split('/').includes('..'))
        refuse(`hard link to ${JSON.stringify(linkname)} leads outside the destination`)
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
      return name
    }
    case 'character-device':
    case 'block-device':
      return refuse(`${entry.type} entries are not allowed`)
    case 'fifo':
      return refuse('fifo entries are not allowed')
  }
}

/** No disk image is larger (qcow2's own limit is 64 TiB); a bigger real size is a bomb for whatever reads the file next. */
const MAX_FILE_SIZE = 64 * 2 ** 40
const SPARSE_BLOCK = 4096
const ZERO_BLOCK = Buffer.alloc(SPARSE_BLOCK)
/** Data is gathered into pieces this big: few write calls for multi-gigabyte images. */
const WRITE_PIECE = 1024 * 1024

/**
 * Writes a file from pieces placed at their offsets, leaving all-zero 4 KiB blocks (and
 * whatever a sparse map skips) as holes: a raw or preallocated disk image takes only the
 * space its data needs, as `tar -xS`/`cp --sparse` would. Pieces are gathered into 1 MiB
 * buffers and written while the next one fills (two buffers, one write in flight).
 * Opened with 'wx': never follows (or overwrites) anything at the target.
 */
class SparseFileWriter {
  private buffer = Buffer.allocUnsafe(WRITE_PIECE)
  private spare = Buffer.allocUnsafe(WRITE_PIECE)
  private start = 0
  private filled = 0
  private inFlight: Promise<void> = Promise.resolve()

  private constructor(private readonly handle: FileHandle) {}

  static async create(path: string, mode: number): Promise<SparseFileWriter> {
    return new SparseFileWriter(await open(path, 'wx', mode))
  }

  async write(position: number, chunk: Buffer): Promise<void> {
    let at = 0
    while (at < chunk.length) {
      if (this.filled > 0 && position + at !== this.start + this.filled) await this.flush()
      if (this.filled === 0) this.start = position + at
      const length = Math.min(chunk.length - at, WRITE_PIECE - this.filled)
      chunk.copy(this.buffer, this.filled, at, at + length)
      this.filled += length
      at += length
      if (this.filled === WRITE_PIECE) await this.flush()
    }
  }

  /** Write what is gathered, set the size (a trailing hole still counts) and close. */
  async finish(size: number): Promise<void> {
    await this.flush()
    await this.inFlight
    await this.handle.truncate(size)
    await this.handle.close()
  }

  async abandon(): Promise<void> {
    await this.inFlight.catch(() => undefined)
    await this.handle.close().catch(() => undefined)
  }

  private async flush(): Promise<void> {
    if (this.filled === 0) return
    const {buffer, start, filled} = this
    await this.inFlight // the spare buffer is free again once its write is done
    this.buffer = this.spare
    this.spare = buffer
    this.filled = 0
    const writing = this.writeData(buffer, start, filled)
    writing.catch(() => undefined) // awaited at the next flush or finish
    this.inFlight = writing
  }

  /** Write `buffer[0, length)` at `position`, skipping all-zero blocks aligned to the file. */
  private async writeData(buffer: Buffer, position: number, length: number): Promise<void> {
    let offset = 0
    while (offset < length) {
      const end = Math.min(length, offset + SPARSE_BLOCK - ((position + offset) % SPARSE_BLOCK))
      const zero = isZero(buffer, offset, end)
      let runEnd = end
      // Extend the run while blocks stay of the same kind, so data is written in large pieces.
      while (runEnd < length) {
        const next = Math.min(length, runEnd + SPARSE_BLOCK)
        if (isZero(buffer, runEnd, next) !== zero) break
        runEnd = next
      }
      if (!zero) await this.handle.write(buffer, offset, runEnd - offset, position + offset)
      offset = runEnd
    }
  }
}

/** memcmp against zeros, without allocating views (this runs for every 4 KiB of every image). */
function isZero(buffer: Buffer, start: number, end: number): boolean {
  return buffer.compare(ZERO_BLOCK, 0, end - start, start, end) === 0
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

function archiveError(
  error: unknown,
  signal: AbortSignal | undefined,
  doing: string,
  stage: {processError?: () => unknown},
  source?: {file: string; compression: ArchiveCompression},
): unknown {
  if (signal?.aborted)
    return signal.reason instanceof BoxError
      ? signal.reason
      : new BoxError(`${doing} was interrupted`, {exitCode: ExitCode.INTERRUPTED, cause: error})
  const processError = stage.processError?.()
  // The decompressor missing: the exec wrapper's error names the package to install.
  if (processError instanceof BoxError && (processError.cause as {code?: string} | undefined)?.code === 'ENOENT')
    return processError
  // The data ended early or was no tar because the decompressor failed: it says why.
  if (processError instanceof BoxError && (error instanceof NotATarError || error instanceof TruncatedArchiveError)) {
    return new BoxError(`${doing} failed: its ${source?.compression ?? 'compressed'} data is damaged or cut short`, {
      cause: error,
      detail: processError.detail,
      suggestions: ['the file is incomplete or corrupt: download or copy it again'],
    })
  }
  if (error instanceof NotATarError && source) return notABox(source.file, error.head, source.compression)
  if (error instanceof TruncatedArchiveError)
    return new TruncatedArchiveError(`${doing} failed: ${error.message}`, {
      cause: error,
      suggestions: error.suggestions,
    })
  if (error instanceof BoxError) return error
  const code = (error as {code?: string}).code
  if (code === 'ENOSPC') return new BoxError(`${doing} failed: no space left on the device`, {cause: error})
  const message = (error as Error).message ?? String(error)
  return new BoxError(`${doing} failed: ${message}`, {
    cause: error,
    detail: processError instanceof BoxError ? processError.detail : undefined,
    suggestions: /unexpected end|premature|truncated|incorrect header|invalid tar|unknown format|invalid|check/i.test(
      message,
    )
      ? ['the archive looks truncated or damaged: get it again']
      : [],
  })
}
