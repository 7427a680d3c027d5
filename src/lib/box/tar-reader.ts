/**
 * A tar reader for .box files, written here because no library read the boxes people have.
 *
 * Tried on archives made by GNU tar 1.34 (`-S`, --format=gnu and posix with
 * --sparse-version 0.0/0.1/1.0) and bsdtar 3.7 (--format=pax): tar-stream yields GNU sparse
 * entries as type null and does not read maps; node-tar (`tar` 7.5) silently drops old-GNU
 * 'S' entries, writes the packed data (not the file) for PAX 0.0, and extracts PAX 0.1/1.0
 * under their placeholder names `GNUSparseFile.NNN/…` with the map as file content.
 * bsdtar (what Vagrant runs) reads them all, but extracts before we can look: names, link
 * targets and sizes could only be checked by a second listing pass (decompressing twice)
 * and a sparse map not at all. So this reader parses every dialect box meets, hands each
 * entry's complete header (resolved name, type, link target, real size, validated sparse
 * map) to the caller before one byte of its data, and streams the data as zero-copy slices
 * placed at their offsets in the real file, so holes stay holes.
 *
 * Read: ustar and v7 headers, base-256 sizes, PAX extended ('x') and global ('g') headers
 * (path, linkpath, size, mtime), GNU long names/links ('L'/'K'), old-GNU sparse ('S' with
 * extension blocks), PAX sparse 0.0 (GNU.sparse.offset/numbytes records), 0.1
 * (GNU.sparse.map) and 1.0 (map at the start of the data; GNU.sparse.name/realsize).
 * Refused by name: maps that are out of order, overlap, run past the real size, disagree
 * with the stored data or hold more segments than MAX_SPARSE_SEGMENTS; oversized
 * extension headers; truncation anywhere.
 */
import {BoxError, ExitCode} from '../core/errors.js'

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo'

export interface SparseMap {
  /** Data segments in the real file, in order: `offsets[i]` … `offsets[i] + lengths[i]`; the rest is holes. */
  offsets: number[]
  lengths: number[]
  /** Which dialect wrote it, for messages: "GNU", "PAX 0.0", "PAX 0.1", "PAX 1.0". */
  dialect: string
}

export interface TarEntry {
  /** The entry's real name (PAX path, GNU long name or GNU.sparse.name), as stored: not normalised. */
  name: string
  type: TarEntryType
  /** The raw type flag, for types this reader does not know ("unknown entry type 'M'"). */
  typeflag: string
  /** Link target for symlinks and hard links, '' otherwise. */
  linkname: string
  mode: number
  mtime: Date
  /** The file's real size: for a sparse entry, holes included. */
  size: number
  /** Bytes of file data the archive holds for it (== size unless sparse). */
  dataSize: number
  sparse?: SparseMap
}

/** The stream is not a tar at all (its first block is no tar header); `head` is that block, for identifying what it is. */
export class NotATarError extends Error {
  constructor(readonly head: Buffer) {
    super('not a tar archive')
  }
}

/** The archive ends before it should: the file is cut short (or its decompressor stopped). */
export class TruncatedArchiveError extends BoxError {}

/** A piece of an entry's data and where it goes in the real file. */
export interface DataPiece {
  position: number
  chunk: Buffer
}

const BLOCK = 512
/** More segments than this is no disk image's map (a 1 TiB image with a hole every 1 MiB has a million). */
export const MAX_SPARSE_SEGMENTS = 1 << 20
/** PAX extended headers hold names and numbers (and, for sparse 0.0/0.1, the whole map: ~50 bytes a segment); GNU long names a path. */
const MAX_PAX_HEADER = 64 << 20
const MAX_LONG_NAME = 64 * 1024
/** Slices handed to the caller are at most this long (the source's chunks are usually smaller). */
const MAX_PIECE = 1 << 20

const TYPES: Record<string, TarEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file', // contiguous file: a regular file everywhere but on one 1980s system
  S: 'file', // old-GNU sparse
  '1': 'link',
  '2': 'symlink',
  '3': 'character-device',
  '4': 'block-device',
  '5': 'directory',
  D: 'directory', // GNU dumpdir: a directory whose data lists its contents (skipped)
  '6': 'fifo',
}

/** Everything the reader refuses is a BoxError; `entry` is named when one is concerned. */
function refuse(
  entry: string | undefined,
  why: string,
  suggestion = 'the box is damaged: get it again (or from a source you trust)',
): BoxError {
  const subject = entry === undefined ? 'refusing the archive' : `refusing to extract entry ${JSON.stringify(entry)}`
  return new BoxError(`${subject}: ${why}`, {exitCode: ExitCode.FAILURE, suggestions: [suggestion]})
}

const EMPTY = Buffer.alloc(0)

/** Pulls exact byte counts, or zero-copy slices, out of a stream of chunks. */
class ByteSource {
  private chunk: Buffer = EMPTY
  private offset = 0
  private ended = false
  constructor(private readonly iterator: AsyncIterator<Buffer>) {}

  private async fill(): Promise<boolean> {
    while (this.offset >= this.chunk.length) {
      if (this.ended) return false
      const next = await this.iterator.next()
      if (next.done) {
        this.ended = true
        return false
      }
      this.chunk = next.value
      this.offset = 0
    }
    return true
  }

  /** Up to `max` bytes (at least one unless the stream ended): a slice of the current chunk. */
  async readSome(max: number): Promise<Buffer> {
    if (!(await this.fill())) return EMPTY
    const end = Math.min(this.chunk.length, this.offset + max)
    const slice = this.chunk.subarray(this.offset, end)
    this.offset = end
    return slice
  }

  /** Exactly `length` bytes, fewer only at the end of the stream; copied only when it spans chunks. */
  async readExact(length: number): Promise<Buffer> {
    const first = await this.readSome(length)
    if (first.length === length || first.length === 0) return first
    const parts: Buffer[] = [first]
    let got = first.length
    while (got < length) {
      const part = await this.readSome(length - got)
      if (part.length === 0) break
      parts.push(part)
      got += part.length
    }
    return Buffer.concat(parts, got)
  }

  /** Skip `length` bytes; returns how many were there. */
  async skip(length: number): Promise<number> {
    let left = length
    while (left > 0) {
      const part = await this.readSome(Math.min(left, MAX_PIECE))
      if (part.length === 0) break
      left -= part.length
    }
    return length - left
  }
}

interface PaxRecords {
  /** Last value of each key. */
  values: Map<string, string>
  /** GNU.sparse.offset / GNU.sparse.numbytes in order (PAX sparse 0.0 repeats them). */
  sparsePairs: Array<['offset' | 'numbytes', string]>
}

export class TarReader {
  private readonly source: ByteSource
  /** Bytes of the current entry (data and padding) not yet consumed. */
  private unread = 0
  /** Data left in the current entry's pieces, and where the next piece goes. */
  private current?: {entry: TarEntry; segment: number; position: number; segmentLeft: number; padding: number}
  private global = new Map<string, string>()
  private sawHeader = false
  private finished = false

  constructor(chunks: AsyncIterable<Buffer> | AsyncIterator<Buffer>) {
    const iterator =
      Symbol.asyncIterator in chunks
        ? (chunks as AsyncIterable<Buffer>)[Symbol.asyncIterator]()
        : (chunks as AsyncIterator<Buffer>)
    this.source = new ByteSource(iterator)
  }

  /** The next entry, its header fully read and checked; undefined at the end of the archive. Unread data of the previous entry is skipped. */
  async next(): Promise<TarEntry | undefined> {
    if (this.finished) return undefined
    if (this.current) {
      const name = this.current.entry.name
      this.current = undefined
      if ((await this.source.skip(this.unread)) < this.unread) throw truncated(name)
      this.unread = 0
    }
    let longName: string | undefined
    let longLink: string | undefined
    let pax: PaxRecords | undefined
    for (;;) {
      const block = await this.source.readExact(BLOCK)
      if (block.length === 0 && this.sawHeader && !longName && !longLink && !pax) {
        // No end-of-archive blocks at all: GNU tar and bsdtar accept this too.
        this.finished = true
        return undefined
      }
      if (block.length < BLOCK) {
        if (!this.sawHeader) throw new NotATarError(block)
        throw truncated(longName ?? pax?.values.get('path'))
      }
      if (isZeroBlock(block)) {
        if (!this.sawHeader) throw new NotATarError(block)
        if (longName || longLink || pax)
          throw refuse(longName ?? pax?.values.get('path'), 'the archive ends right after its extended header')
        this.finished = true
        return undefined
      }
      if (!checksumMatches(block)) {
        if (!this.sawHeader) throw new NotATarError(block)
        throw refuse(undefined, 'a tar header has a wrong checksum (the archive is damaged, or not all of it is a tar)')
      }
      this.sawHeader = true
      const typeflag = String.fromCharCode(block[156]!)
      const headerName = readString(block, 0, 100)
      const size = readNumber(block, 124, 12, headerName, 'size')
      switch (typeflag) {
        case 'x':
        case 'X': // Solaris' extended header: the same records
          pax = parsePax(await this.readExtension(size, MAX_PAX_HEADER, headerName, 'PAX extended header'), headerName)
          continue
        case 'g':
          for (const [key, value] of parsePax(
            await this.readExtension(size, MAX_PAX_HEADER, headerName, 'PAX global header'),
            headerName,
          ).values)
            this.global.set(key, value)
          continue
        case 'L':
          longName = readString(await this.readExtension(size, MAX_LONG_NAME, headerName, 'GNU long name'), 0, size)
          continue
        case 'K':
          longLink = readString(
            await this.readExtension(size, MAX_LONG_NAME, headerName, 'GNU long link name'),
            0,
            size,
          )
          continue
        case 'V': // a volume label (tar --label): not a file
          await this.skipData(size, headerName)
          continue
      }
      return this.buildEntry(block, typeflag, size, longName, longLink, pax)
    }
  }

  /** Read (and discard) whatever follows the end of the archive: a decompressor checks its stream's checksum at the very end. */
  async drain(): Promise<void> {
    while ((await this.source.readSome(MAX_PIECE)).length > 0) {
      // discarded: tar's trailing padding
    }
  }

  /** The current entry's data as pieces placed in the real file (a sparse entry's holes are skipped). */
  async *data(): AsyncGenerator<DataPiece> {
    const state = this.current
    if (!state) return
    const {entry} = state
    const offsets = entry.sparse?.offsets ?? [0]
    const lengths = entry.sparse?.lengths ?? [entry.dataSize]
    while (state.segment < offsets.length) {
      if (state.segmentLeft === 0) {
        state.segment++
        if (state.segment < offsets.length) {
          state.position = offsets[state.segment]!
          state.segmentLeft = lengths[state.segment]!
        }
        continue
      }
      const chunk = await this.source.readSome(Math.min(state.segmentLeft, MAX_PIECE))
      if (chunk.length === 0) throw truncated(entry.name)
      const position = state.position
      state.position += chunk.length
      state.segmentLeft -= chunk.length
      this.unread -= chunk.length
      yield {position, chunk}
    }
    if ((await this.source.skip(state.padding)) < state.padding) throw truncated(entry.name)
    this.unread -= state.padding
    state.padding = 0
  }

  private async readExtension(size: number, max: number, name: string, what: string): Promise<Buffer> {
    if (size > max) throw refuse(name, `its ${what} is ${size} bytes, more than the ${max} any tar program writes`)
    const data = await this.source.readExact(size)
    if (data.length < size) throw truncated(name)
    await this.skipData(0, name, size)
    return data
  }

  /** Skip `size` bytes of data plus the padding to the next block (`alreadyRead` of them consumed). */
  private async skipData(size: number, name: string, alreadyRead = 0): Promise<void> {
    const total = padded(Math.max(size, alreadyRead)) - alreadyRead
    if ((await this.source.skip(total)) < total) throw truncated(name)
  }

  private async buildEntry(
    block: Buffer,
    typeflag: string,
    headerSize: number,
    longName: string | undefined,
    longLink: string | undefined,
    pax: PaxRecords | undefined,
  ): Promise<TarEntry> {
    const values = new Map(this.global)
    for (const [key, value] of pax?.values ?? []) values.set(key, value)
    const magic = block.toString('latin1', 257, 263)
    const isPosixUstar = magic === 'ustar\0'
    let name = readString(block, 0, 100)
    if (isPosixUstar && block[345] !== 0) name = `${readString(block, 345, 155)}/${name}`
    name = values.get('GNU.sparse.name') ?? values.get('path') ?? longName ?? name
    const linkname = values.get('linkpath') ?? longLink ?? readString(block, 157, 100)
    const storedSize = values.has('size') ? paxNumber(values.get('size')!, name, 'size') : headerSize
    const mode = readNumber(block, 100, 8, name, 'mode') & 0o7777
    const mtimeSeconds = values.has('mtime')
      ? Number.parseFloat(values.get('mtime')!)
      : readNumber(block, 136, 12, name, 'mtime')
    const type = TYPES[typeflag]
    if (type === undefined) {
      await this.skipData(storedSize, name)
      throw refuse(
        name,
        `it has tar entry type ${JSON.stringify(typeflag)}, which is not a file, directory or link (${describeTypeflag(typeflag)})`,
        'repack the box with GNU tar or bsdtar, keeping only files, directories and links',
      )
    }
    const entry: TarEntry = {
      name,
      type,
      typeflag,
      linkname: type === 'symlink' || type === 'link' ? linkname : '',
      mode,
      mtime: new Date(Number.isFinite(mtimeSeconds) ? mtimeSeconds * 1000 : 0),
      size: storedSize,
      dataSize: storedSize,
    }
    // What the archive stores for a sparse entry is its data (after the map, for PAX 1.0).
    let mapBytes = 0
    if (typeflag === 'S') {
      const sparse = await this.readOldGnuSparse(block, name)
      entry.sparse = sparse.map
      entry.size = sparse.realSize
    } else if (
      values.has('GNU.sparse.major') ||
      values.has('GNU.sparse.map') ||
      values.has('GNU.sparse.size') ||
      (pax?.sparsePairs.length ?? 0) > 0
    ) {
      const major = values.get('GNU.sparse.major')
      const minor = values.get('GNU.sparse.minor')
      if (major !== undefined && !(major === '1' && minor === '0')) {
        throw refuse(
          name,
          `it is a GNU sparse ${major}.${minor ?? '?'} entry, a format no GNU tar writes (known: 0.0, 0.1, 1.0)`,
        )
      }
      if (type !== 'file') throw refuse(name, `a ${type} entry cannot carry a sparse map`)
      if (major === '1') {
        const realSize = paxNumber(
          values.get('GNU.sparse.realsize') ?? missing(name, 'GNU.sparse.realsize'),
          name,
          'GNU.sparse.realsize',
        )
        const {map, bytes} = await this.readSparse10Map(storedSize, name)
        entry.sparse = map
        entry.size = realSize
        mapBytes = bytes
      } else {
        const realSize = paxNumber(
          values.get('GNU.sparse.size') ?? values.get('GNU.sparse.realsize') ?? missing(name, 'GNU.sparse.size'),
          name,
          'GNU.sparse.size',
        )
        const map = values.has('GNU.sparse.map')
          ? parseSparse01Map(values.get('GNU.sparse.map')!, name)
          : sparse00Map(pax?.sparsePairs ?? [], name)
        const declared = values.get('GNU.sparse.numblocks')
        if (declared !== undefined && paxNumber(declared, name, 'GNU.sparse.numblocks') !== map.offsets.length) {
          throw refuse(name, `its sparse map announces ${declared} segments but lists ${map.offsets.length}`)
        }
        entry.sparse = map
        entry.size = realSize
      }
    }
    // Directories (GNU dumpdir lists), links and devices: whatever data they carry is skipped.
    entry.dataSize = type === 'file' ? storedSize - mapBytes : 0
    if (type !== 'file') entry.size = 0
    if (entry.sparse) validateSparseMap(entry.sparse, entry.size, entry.dataSize, name)
    this.unread = padded(storedSize) - mapBytes
    this.current = {
      entry,
      segment: 0,
      position: entry.sparse?.offsets[0] ?? 0,
      segmentLeft: entry.sparse ? (entry.sparse.lengths[0] ?? 0) : entry.dataSize,
      padding: this.unread - entry.dataSize,
    }
    return entry
  }

  /** Old GNU 'S': four map entries in the header, 21 in each extension block that follows. */
  private async readOldGnuSparse(block: Buffer, name: string): Promise<{map: SparseMap; realSize: number}> {
    const map: SparseMap = {offsets: [], lengths: [], dialect: 'GNU'}
    const addEntries = (from: Buffer, start: number, count: number) => {
      for (let i = 0; i < count; i++) {
        const at = start + i * 24
        if (from[at] === 0 && from[at + 12] === 0) return
        if (map.offsets.length >= MAX_SPARSE_SEGMENTS) throw tooManySegments(name, `more than ${MAX_SPARSE_SEGMENTS}`)
        map.offsets.push(readNumber(from, at, 12, name, 'sparse offset'))
        map.lengths.push(readNumber(from, at + 12, 12, name, 'sparse length'))
      }
    }
    addEntries(block, 386, 4)
    const realSize = readNumber(block, 483, 12, name, 'real size')
    let extended = block[482] !== 0
    while (extended) {
      const extension = await this.source.readExact(BLOCK)
      if (extension.length < BLOCK) throw truncated(name)
      addEntries(extension, 0, 21)
      extended = extension[504] !== 0
    }
    return {map, realSize}
  }

  /** PAX 1.0: decimal lines (count, then offset/length pairs) at the start of the data, padded to a block. */
  private async readSparse10Map(storedSize: number, name: string): Promise<{map: SparseMap; bytes: number}> {
    const map: SparseMap = {offsets: [], lengths: [], dialect: 'PAX 1.0'}
    let consumed = 0
    let text = ''
    const nextNumber = async (what: string): Promise<number> => {
      for (;;) {
        const newline = text.indexOf('\n')
        if (newline !== -1) {
          const line = text.slice(0, newline)
          text = text.slice(newline + 1)
          if (!/^\d{1,16}$/.test(line))
            throw refuse(
              name,
              `its sparse map has ${JSON.stringify(line.slice(0, 40))} where a number (${what}) belongs`,
            )
          return paxNumber(line, name, what)
        }
        if (text.length > 40) throw refuse(name, `its sparse map has a line longer than any number (${what})`)
        if (consumed >= storedSize) throw refuse(name, "its sparse map runs past the entry's data")
        const block = await this.source.readExact(BLOCK)
        if (block.length < BLOCK) throw truncated(name)
        consumed += BLOCK
        text += block.toString('latin1')
      }
    }
    const count = await nextNumber('the segment count')
    if (count > MAX_SPARSE_SEGMENTS) throw tooManySegments(name, String(count))
    // Every segment takes at least four bytes of map ("0\n0\n"), and the map lives in the stored data.
    if (count * 4 > storedSize)
      throw refuse(
        name,
        `its sparse map announces ${count} segments, more than its ${storedSize} stored bytes can hold`,
      )
    for (let i = 0; i < count; i++) {
      map.offsets.push(await nextNumber('a segment offset'))
      map.lengths.push(await nextNumber('a segment length'))
    }
    return {map, bytes: consumed}
  }
}

/** Refuse a map no honest tar writes; `dataBytes` is what the archive stores for the entry. */
function validateSparseMap(map: SparseMap, realSize: number, dataBytes: number, name: string): void {
  const {offsets, lengths} = map
  if (offsets.length > MAX_SPARSE_SEGMENTS) throw tooManySegments(name, String(offsets.length))
  let end = 0
  let total = 0
  for (let i = 0; i < offsets.length; i++) {
    const offset = offsets[i]!
    const length = lengths[i]!
    if (i > 0 && offset < offsets[i - 1]!)
      throw refuse(
        name,
        `its sparse map is out of order (segment ${i + 1} at ${offset} comes after one at ${offsets[i - 1]})`,
      )
    if (offset < end)
      throw refuse(
        name,
        `its sparse map overlaps itself (segment ${i + 1} at ${offset} starts before the previous one ends at ${end})`,
      )
    if (offset + length > realSize)
      throw refuse(
        name,
        `its sparse map runs past the entry's real size (segment ${i + 1} ends at ${offset + length}, the file is ${realSize} bytes)`,
      )
    end = offset + length
    total += length
  }
  if (total !== dataBytes)
    throw refuse(name, `its sparse map describes ${total} bytes of data but the entry stores ${dataBytes}`)
}

function tooManySegments(name: string, count: string): BoxError {
  return refuse(
    name,
    `its sparse map has ${count} segments, more than the ${MAX_SPARSE_SEGMENTS} box accepts (no disk image needs that many)`,
  )
}

function parseSparse01Map(text: string, name: string): SparseMap {
  const parts = text === '' ? [] : text.split(',')
  if (parts.length % 2 !== 0) throw refuse(name, 'its GNU.sparse.map has an odd number of values')
  if (parts.length / 2 > MAX_SPARSE_SEGMENTS) throw tooManySegments(name, String(parts.length / 2))
  const map: SparseMap = {offsets: [], lengths: [], dialect: 'PAX 0.1'}
  for (let i = 0; i < parts.length; i += 2) {
    map.offsets.push(paxNumber(parts[i]!, name, 'GNU.sparse.map offset'))
    map.lengths.push(paxNumber(parts[i + 1]!, name, 'GNU.sparse.map length'))
  }
  return map
}

function sparse00Map(pairs: Array<['offset' | 'numbytes', string]>, name: string): SparseMap {
  const map: SparseMap = {offsets: [], lengths: [], dialect: 'PAX 0.0'}
  for (let i = 0; i < pairs.length; i += 2) {
    const [offsetKey, offset] = pairs[i]!
    const [lengthKey, length] = pairs[i + 1] ?? ['offset', '']
    if (offsetKey !== 'offset' || lengthKey !== 'numbytes')
      throw refuse(name, 'its GNU.sparse.offset/GNU.sparse.numbytes records do not come in pairs')
    map.offsets.push(paxNumber(offset, name, 'GNU.sparse.offset'))
    map.lengths.push(paxNumber(length, name, 'GNU.sparse.numbytes'))
  }
  return map
}

/** "%d %s=%s\n" records, the length counting the whole record. */
function parsePax(data: Buffer, name: string): PaxRecords {
  const records: PaxRecords = {values: new Map(), sparsePairs: []}
  let at = 0
  while (at < data.length) {
    if (data[at] === 0) break // padding some writers leave
    const space = data.indexOf(0x20, at)
    const length = space === -1 ? Number.NaN : Number(data.toString('latin1', at, space))
    if (
      !Number.isSafeInteger(length) ||
      length <= space - at + 1 ||
      at + length > data.length ||
      data[at + length - 1] !== 0x0a
    ) {
      throw refuse(name, 'its PAX extended header is malformed')
    }
    const record = data.toString('utf8', space + 1, at + length - 1)
    const equals = record.indexOf('=')
    if (equals <= 0) throw refuse(name, 'its PAX extended header has a record without a key')
    const key = record.slice(0, equals)
    const value = record.slice(equals + 1)
    if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') {
      if (records.sparsePairs.length >= 2 * MAX_SPARSE_SEGMENTS)
        throw tooManySegments(name, `more than ${MAX_SPARSE_SEGMENTS}`)
      records.sparsePairs.push([key === 'GNU.sparse.offset' ? 'offset' : 'numbytes', value])
    } else records.values.set(key, value)
    at += length
  }
  return records
}

function paxNumber(text: string, name: string, what: string): number {
  if (!/^\d{1,16}$/.test(text))
    throw refuse(name, `its ${what} ${JSON.stringify(text.slice(0, 40))} is not a size tar writes`)
  const value = Number(text)
  if (!Number.isSafeInteger(value)) throw refuse(name, `its ${what} ${text} is too large`)
  return value
}

function missing(name: string, key: string): never {
  throw refuse(name, `it is a PAX sparse entry without ${key}`)
}

/** Octal (NUL/space terminated) or GNU base-256 (high bit set) numbers. */
function readNumber(block: Buffer, start: number, length: number, name: string, what: string): number {
  const first = block[start]!
  if (first & 0x80) {
    if (first === 0xff) throw refuse(name, `its ${what} is negative`)
    let value = first & 0x7f
    for (let i = start + 1; i < start + length; i++) {
      value = value * 256 + block[i]!
      if (value > Number.MAX_SAFE_INTEGER) throw refuse(name, `its ${what} is too large`)
    }
    return value
  }
  let value = 0
  let i = start
  const end = start + length
  while (i < end && block[i] === 0x20) i++
  for (; i < end; i++) {
    const byte = block[i]!
    if (byte === 0 || byte === 0x20) break
    if (byte < 0x30 || byte > 0x37) throw refuse(name, `its ${what} field is not an octal number`)
    value = value * 8 + (byte - 0x30)
  }
  return value
}

function readString(block: Buffer, start: number, length: number): string {
  const end = block.indexOf(0, start)
  return block.toString('utf8', start, end === -1 || end > start + length ? start + length : end)
}

/** The sum of the header's bytes with the checksum field as spaces; historic writers summed signed bytes. */
function checksumMatches(block: Buffer): boolean {
  const stored = block
    .toString('latin1', 148, 156)
    .replace(/[\0 ]+$/, '')
    .trim()
  if (!/^[0-7]{1,8}$/.test(stored)) return false
  const expected = Number.parseInt(stored, 8)
  let unsigned = 8 * 0x20
  let signed = 8 * 0x20
  for (let i = 0; i < BLOCK; i++) {
    if (i >= 148 && i < 156) continue
    const byte = block[i]!
    unsigned += byte
    signed += byte > 127 ? byte - 256 : byte
  }
  return expected === unsigned || expected === signed
}

function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < block.length; i += 8) {
    if (block.readBigUInt64LE(i) !== 0n) return false
  }
  return true
}

function padded(size: number): number {
  return Math.ceil(size / BLOCK) * BLOCK
}

function truncated(name: string | undefined): BoxError {
  return new TruncatedArchiveError(
    name === undefined
      ? 'the archive is truncated: it ends in the middle of a header'
      : `the archive is truncated: it ends in the middle of entry ${JSON.stringify(name)}`,
    {
      exitCode: ExitCode.FAILURE,
      suggestions: ['the file is incomplete: download or copy it again'],
    },
  )
}

function describeTypeflag(typeflag: string): string {
  const known: Record<string, string> = {
    M: 'a GNU multi-volume continuation',
    N: 'an old GNU long-name record',
    I: 'a Star inode metadata entry',
    E: 'a Star extended entry',
  }
  return known[typeflag] ?? 'a vendor-specific extension'
}
