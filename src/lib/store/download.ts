import {createHash, type Hash} from 'node:crypto'
import {createReadStream, writeSync, writevSync} from 'node:fs'
import {mkdir, open, readFile, rename, rm, stat, type FileHandle} from 'node:fs/promises'
import {STATUS_CODES} from 'node:http'
import {dirname} from 'node:path'
import {pipeline} from 'node:stream/promises'
import {setTimeout as sleep} from 'node:timers/promises'

import type {Request as GotRequest, Response as GotResponse} from 'got'

import {acquireLock} from '../core/lock.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {writeFileAtomic} from '../core/fs.js'
import {loadGot, permanentHttpFailure, requestOptions, type HttpOptions} from './http.js'

/**
 * HTTP(S) downloads for boxes: streamed to `<dest>.part`, checksummed while streaming,
 * resumed with a Range request after Ctrl-C, a cut connection or a crash, and renamed to
 * `dest` only once complete and verified. file:// URLs and plain paths are the caller's.
 * Redirects, timeouts and trusted CAs are http.ts's, shared with catalog fetches.
 */

export const CHECKSUM_TYPES = ['md5', 'sha1', 'sha256', 'sha384', 'sha512'] as const
export type ChecksumType = (typeof CHECKSUM_TYPES)[number]

export interface Checksum {
  type: ChecksumType
  /** Hex digest (case-insensitive). */
  value: string
}

export interface DownloadProgress {
  /** Bytes in the part file so far (resumed bytes included). */
  received: number
  /** Size of the whole file when the server said it, else undefined. */
  total?: number
  /** Bytes per second over the last few seconds of this run. */
  rate: number
  /** Seconds left at that rate, when the total is known and the rate is not zero. */
  eta?: number
}

export interface DownloadOptions extends HttpOptions {
  url: string
  dest: string
  checksum?: Checksum
  signal?: AbortSignal
  onProgress?: (progress: DownloadProgress) => void
  /** Further attempts after a transient failure (each one resumes). Default 5. */
  retries?: number
  /** First backoff delay; doubled per attempt without progress, capped at 30 s. Default 1 s. */
  retryDelayMs?: number
  /** Told before each retry (for a "retrying in 2 s" line). */
  onRetry?: (info: {error: Error; attempt: number; delayMs: number}) => void
}

export interface DownloadResult {
  dest: string
  /** Size of the downloaded file. */
  bytes: number
  /** Bytes that were already in the part file when this call started (0: fresh download). */
  resumedFrom: number
  /** Bytes fetched over the network by this call. */
  fetched: number
}

/** What `<dest>.part.json` records so a later run knows whether the part can be resumed. */
interface PartInfo {
  url: string
  /** The checksum the part was fetched to meet ("sha256:…"): another one means another file is wanted. */
  checksum?: string
  etag?: string
  lastModified?: string
  total?: number
}

const DEFAULT_RETRIES = 5
const DEFAULT_RETRY_DELAY_MS = 1000
const MAX_RETRY_DELAY_MS = 30_000
const PROGRESS_INTERVAL_MS = 200
const WRITE_BATCH_BYTES = 1 << 20
const RATE_WINDOW_MS = 5000
/** Statuses worth another attempt: the server or a proxy is busy or broken for now. */
const TRANSIENT_STATUSES = new Set([408, 425, 429, 500, 502, 503, 504])
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'ERR_STREAM_PREMATURE_CLOSE',
  'ERR_GOT_REQUEST_ERROR',
])
/** Errors of the local disk: retrying cannot help. */
const DISK_CODES = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM', 'EIO', 'EFBIG'])

export function partPath(dest: string): string {
  return `${dest}.part`
}

function partInfoPath(dest: string): string {
  return `${dest}.part.json`
}

export function isChecksumType(value: string): value is ChecksumType {
  return (CHECKSUM_TYPES as readonly string[]).includes(value)
}

/** Download `url` to `dest`, resuming a previous partial download of the same URL. */
export async function download(options: DownloadOptions): Promise<DownloadResult> {
  const {url, dest, checksum, signal} = options
  const expectedDigest = checksum ? normalizeDigest(checksum) : undefined
  throwIfAborted(signal, url)
  await mkdir(dirname(dest), {recursive: true})
  const unlock = await lockPart(dest, url)
  try {
    return await downloadLocked(options, expectedDigest)
  } finally {
    await unlock()
  }
}

async function downloadLocked(options: DownloadOptions, expectedDigest: string | undefined): Promise<DownloadResult> {
  const {url, dest, checksum, signal} = options
  const retries = options.retries ?? DEFAULT_RETRIES
  const retryDelayMs = options.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS
  // A part is resumed for the same URL and the same expected checksum only (checksumKey).
  const checksumKey = checksum && expectedDigest ? `${checksum.type}:${expectedDigest}` : undefined
  const part = await openPart(dest, url, checksumKey, checksum?.type)
  const resumedFrom = part.size
  const meter = createMeter(options.onProgress)
  let failures = 0

  try {
    for (;;) {
      const before = part.size
      try {
        const outcome = await fetchInto(part, {
          url,
          dest,
          signal,
          http: {timeoutMs: options.timeoutMs, caCertFile: options.caCertFile},
          checksumKey,
          meter,
        })
        if (outcome === 'complete') {
          // An empty file never opened the part: create it so the rename below has something.
          part.handle ??= await open(partPath(dest), 'a')
          break
        }
        // 'restart': the part could not be continued; it is empty now, go again at once.
        continue
      } catch (error) {
        if (signal?.aborted) throw interruptedError(url, dest)
        const failure = classifyFailure(error, url)
        // A full disk: the partial file only takes space the user needs back.
        if (failure.diskFull) await removePart(dest)
        if (!failure.retry) throw failure.error
        // A connection that keeps making progress is not failing: only count attempts that got nothing.
        if (part.size > before) failures = 0
        if (failures >= retries) throw failure.error
        const backoff = retryDelayMs * 2 ** failures * (0.8 + Math.random() * 0.4)
        // A server that says when to come back (429/503 Retry-After) is believed, within reason.
        const delay = Math.min(
          Math.max(backoff, error instanceof HttpStatusError ? (error.retryAfterMs ?? 0) : 0),
          MAX_RETRY_DELAY_MS,
        )
        failures++
        options.onRetry?.({error: failure.error, attempt: failures, delayMs: delay})
        await sleep(delay, undefined, {signal}).catch(() => {
          throw interruptedError(url, dest)
        })
      }
    }
  } finally {
    await part.handle?.close()
  }

  meter.finish(part.size, part.total)
  if (expectedDigest && part.hash) {
    const actual = part.hash.digest('hex')
    if (actual !== expectedDigest) {
      await removePart(dest)
      throw new BoxError(`checksum mismatch for ${url}`, {
        detail: `expected ${checksum!.type} ${expectedDigest}\nactual   ${checksum!.type} ${actual}`,
        suggestions: [
          'the partial download was removed; run the command again to download afresh',
          'check the checksum given with the box',
        ],
      })
    }
  }
  await rename(partPath(dest), dest)
  await rm(partInfoPath(dest), {force: true})
  return {dest, bytes: part.size, resumedFrom, fetched: part.size - resumedFrom}
}

/** The part file being written, its running hash (over exactly the bytes on disk) and what the server said. */
interface Part {
  dest: string
  /** Opened at the first byte, so an error before any data leaves no file behind. */
  handle?: FileHandle
  size: number
  hash?: Hash
  hashType?: ChecksumType
  info?: PartInfo
  total?: number
}

/**
 * Open `<dest>.part`, keeping earlier bytes only if they came from the same URL, with a
 * validator, and were fetched for the checksum expected now: a part recorded for one
 * digest is another file than the one a catalog naming another digest (or none) wants.
 * A part fetched with no checksum may be resumed for one: the digest, computed over
 * every byte at the end, still proves the whole file.
 */
async function openPart(
  dest: string,
  url: string,
  checksumKey: string | undefined,
  hashType?: ChecksumType,
): Promise<Part> {
  const info = await readPartInfo(dest)
  const existing = await stat(partPath(dest)).catch(() => undefined)
  // Resume only what If-Range can vouch for: same URL and checksum, and a strong ETag or a Last-Modified date.
  const resumable =
    existing?.isFile() &&
    existing.size > 0 &&
    info?.url === url &&
    (info.checksum === undefined || info.checksum === checksumKey) &&
    rangeValidator(info) !== undefined
  if (!resumable) {
    await removePart(dest)
    return {dest, size: 0, hash: hashType ? createHash(hashType) : undefined, hashType}
  }
  if (!hashType) return {dest, size: existing!.size, info, total: info!.total}
  // Hash what is already there once, then the same hash continues with the new bytes.
  const hash = createHash(hashType)
  let size = 0
  await pipeline(
    createReadStream(partPath(dest), {highWaterMark: 1 << 20}),
    async function (source: AsyncIterable<Buffer>) {
      for await (const chunk of source) {
        hash.update(chunk)
        size += chunk.length
      }
    },
  )
  return {dest, size, hash, hashType, info, total: info!.total}
}

/**
 * One writer per part file: two `box add` of the same URL would interleave their bytes.
 * The lock holds the owner's pid; a lock whose process is gone (a crash) is taken over.
 */
async function lockPart(dest: string, url: string): Promise<() => Promise<void>> {
  return acquireLock(`${partPath(dest)}.lock`, {
    busy: (pid) =>
      new BoxError(`${url} is already being downloaded${pid === process.pid ? '' : ` by process ${pid}`}`, {
        suggestions: ['wait for that download to finish (this command can then be run again)'],
      }),
  })
}

/** If-Range takes a strong ETag or a date; weak ETags ("W/…") may not be used for ranges. */
function rangeValidator(info: PartInfo): string | undefined {
  return info.etag && !info.etag.startsWith('W/') ? info.etag : info.lastModified
}

async function readPartInfo(dest: string): Promise<PartInfo | undefined> {
  try {
    const parsed = JSON.parse(await readFile(partInfoPath(dest), 'utf8')) as PartInfo
    return typeof parsed?.url === 'string' ? parsed : undefined
  } catch {
    return undefined
  }
}

async function writePartInfo(dest: string, info: PartInfo): Promise<void> {
  await writeFileAtomic(partInfoPath(dest), JSON.stringify(info))
}

async function removePart(dest: string): Promise<void> {
  await rm(partPath(dest), {force: true})
  await rm(partInfoPath(dest), {force: true})
}

/** Empty the part file and its hash: the server is sending the whole file again. */
async function truncatePart(part: Part): Promise<void> {
  if (part.handle) await part.handle.truncate(0)
  else await rm(partPath(part.dest), {force: true})
  part.size = 0
  part.hash = part.hashType ? createHash(part.hashType) : undefined
}

interface FetchContext {
  url: string
  dest: string
  signal?: AbortSignal
  http: HttpOptions
  checksumKey?: string
  meter: Meter
}

/** One HTTP request: append to the part until the body ends. 'restart' when the part had to be emptied first. */
async function fetchInto(part: Part, context: FetchContext): Promise<'complete' | 'restart'> {
  const {url, dest, signal, meter} = context
  const offset = part.size
  const headers: Record<string, string> = {}
  if (offset > 0) {
    headers.range = `bytes=${offset}-`
    // If-Range: the server sends the rest only if the file is still the one we started; else all of it (200).
    const validator = part.info && rangeValidator(part.info)
    if (validator) headers['if-range'] = validator
  }

  const got = await loadGot()
  // Redirects are got's (the Range and If-Range headers go along to the next hop); the
  // part stays keyed by the URL asked for. Content-Disposition is never read: the box's
  // name comes from the user or the catalog, and the file's from downloadPath.
  const request = got.stream(url, {
    ...(await requestOptions(context.http)),
    headers,
    // Ranges and checksums are about the bytes of the file: never let a transfer encoding change them.
    decompress: false,
  })
  const onAbort = () => request.destroy(signal!.reason instanceof Error ? signal!.reason : new Error('aborted'))
  signal?.addEventListener('abort', onAbort, {once: true})
  try {
    const response = await waitForResponse(request)
    const status = response.statusCode
    const responseHeaders = response.headers

    if (status === 416 && offset > 0) {
      request.destroy()
      const total = parseUnsatisfiedRange(responseHeaders['content-range'])
      // The part already holds the whole file (a crash between the last byte and the rename).
      if (total !== undefined && total === offset) {
        part.total = total
        return 'complete'
      }
      await truncatePart(part)
      await rm(partInfoPath(dest), {force: true})
      part.info = undefined
      return 'restart'
    }
    if (status < 200 || status >= 300) {
      request.destroy()
      throw httpError(url, status, response.statusMessage, responseHeaders['retry-after'])
    }

    let total: number | undefined
    if (status === 206) {
      const range = parseContentRange(responseHeaders['content-range'])
      if (range && offset === 0 && range.start !== 0) {
        request.destroy()
        throw new BoxError(`the server answered bytes ${range.start}- of ${url} when asked for the whole file`)
      }
      if (!range || range.start !== offset) {
        // Not the bytes we asked for: start over rather than guess.
        request.destroy()
        await truncatePart(part)
        return 'restart'
      }
      total = range.total
    } else {
      // 200: a fresh download, or a server that ignores Range / a file that changed (If-Range failed).
      if (offset > 0) await truncatePart(part)
      const length = Number(responseHeaders['content-length'])
      total = Number.isFinite(length) && responseHeaders['content-length'] !== undefined ? length : undefined
    }

    const info: PartInfo = {
      url,
      checksum: context.checksumKey,
      etag: stringHeader(responseHeaders.etag),
      lastModified: stringHeader(responseHeaders['last-modified']),
      total,
    }
    await writePartInfo(dest, info)
    part.info = info
    part.total = total

    await writeBody(request, part, meter)
    if (total !== undefined && part.size < total) {
      throw Object.assign(new Error(`connection closed after ${part.size} of ${total} bytes`), {
        code: 'ERR_STREAM_PREMATURE_CLOSE',
      })
    }
    if (total !== undefined && part.size > total) {
      await truncatePart(part)
      throw new BoxError(`the server sent more bytes than announced for ${url}`, {
        suggestions: ['run the command again'],
      })
    }
    return 'complete'
  } finally {
    signal?.removeEventListener('abort', onAbort)
  }
}

function waitForResponse(request: GotRequest): Promise<GotResponse> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => reject(error)
    request.once('error', onError)
    request.once('response', (response) => {
      request.off('error', onError)
      resolve(response)
    })
  })
}

/**
 * Drain the body into the part file, with blocking writes as curl does: no queue of
 * pending promises, chunks die young (cheap GC), and while a write blocks the socket is
 * not read, which is the backpressure. Chunks are gathered into ~1 MB writev calls (16×
 * fewer syscalls than one per socket read). Only bytes on disk are counted and hashed, so
 * a retry continues the same hash; and a cut connection or Ctrl-C flushes what was
 * received first, so nothing received is fetched again.
 */
async function writeBody(request: GotRequest, part: Part, meter: Meter): Promise<void> {
  const fd = (part.handle ??= await open(partPath(part.dest), part.size > 0 ? 'r+' : 'w')).fd
  let batch: Buffer[] = []
  let batchBytes = 0
  // A disk error is ours: pass it on as it is, not as got's wrapper of the destroyed request.
  let writeError: Error | undefined
  const flush = (): boolean => {
    if (batchBytes === 0 || writeError) return !writeError
    try {
      writeChunks(fd, batch, batchBytes, part.size)
    } catch (error) {
      writeError = error as Error
      // fd errors carry no path; the user needs to know which disk filled up.
      ;(writeError as NodeJS.ErrnoException).path ??= partPath(part.dest)
      return false
    }
    for (const chunk of batch) part.hash?.update(chunk)
    part.size += batchBytes
    batch = []
    batchBytes = 0
    meter.update(part.size, part.total)
    return true
  }
  await new Promise<void>((resolve, reject) => {
    request.on('data', (chunk: Buffer) => {
      if (writeError) return
      batch.push(chunk)
      batchBytes += chunk.length
      if (batchBytes >= WRITE_BATCH_BYTES && !flush()) {
        request.destroy()
        reject(writeError)
      }
    })
    request.once('end', () => (flush() ? resolve() : reject(writeError)))
    request.once('error', (error: Error) => {
      flush()
      reject(writeError ?? error)
    })
  })
}

/** Write `chunks` (`bytes` in all) at `position`, finishing a short writev with plain writes. */
function writeChunks(fd: number, chunks: Buffer[], bytes: number, position: number): void {
  // Explicit positions: a truncate (restart) must not leave the file offset behind.
  let written = writevSync(fd, chunks, position)
  if (written === bytes) return
  const all = Buffer.concat(chunks, bytes)
  while (written < bytes) written += writeSync(fd, all, written, bytes - written, position + written)
}

function stringHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value || undefined
}

/** `bytes START-END/TOTAL` (TOTAL may be `*`). */
function parseContentRange(header: string | undefined): {start: number; end: number; total?: number} | undefined {
  const match = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header?.trim() ?? '')
  if (!match) return undefined
  return {start: Number(match[1]), end: Number(match[2]), total: match[3] === '*' ? undefined : Number(match[3])}
}

/** `bytes *\/TOTAL`, sent with 416. */
function parseUnsatisfiedRange(header: string | string[] | undefined): number | undefined {
  const match = /^bytes \*\/(\d+)$/.exec(stringHeader(header)?.trim() ?? '')
  return match ? Number(match[1]) : undefined
}

class HttpStatusError extends BoxError {
  constructor(
    message: string,
    readonly status: number,
    readonly retryAfterMs?: number,
  ) {
    super(message)
  }
}

function httpError(
  url: string,
  status: number,
  statusMessage: string | undefined,
  retryAfter: string | undefined,
): HttpStatusError {
  const reason = statusMessage || STATUS_CODES[status] || ''
  const seconds = Number(retryAfter)
  return new HttpStatusError(
    `HTTP ${status}${reason ? ` ${reason}` : ''} for ${url}`,
    status,
    Number.isFinite(seconds) ? seconds * 1000 : undefined,
  )
}

/** Sort a failed attempt into "try again" or "give up", and give the error the user should see. */
function classifyFailure(error: unknown, requestedUrl: string): {retry: boolean; error: Error; diskFull?: boolean} {
  if (error instanceof HttpStatusError) return {retry: TRANSIENT_STATUSES.has(error.status), error}
  const e = error as NodeJS.ErrnoException & {event?: string; timings?: unknown; options?: {url?: URL}}
  const code = e?.code ?? ''
  if (DISK_CODES.has(code)) {
    const diskFull = code === 'ENOSPC' || code === 'EDQUOT'
    const path = e.path ?? 'the download'
    return {
      retry: false,
      diskFull,
      error: new BoxError(diskFull ? `no space left on the disk for ${path}` : `cannot write ${path}: ${e.message}`, {
        cause: error,
        suggestions: diskFull
          ? ['the partial download was removed; free some disk space and run the command again']
          : [],
      }),
    }
  }
  if (error instanceof BoxError) return {retry: false, error}
  const permanent = permanentHttpFailure(error, requestedUrl)
  if (permanent) return {retry: false, error: permanent}
  const url = e?.options?.url?.toString()
  const where = url ? ` (${url})` : ''
  if (e?.name === 'TimeoutError') {
    const what = e.event === 'socket' ? 'no data received' : `no answer (${e.event})`
    return {
      retry: true,
      error: new BoxError(`download timed out: ${what} for ${timeoutSeconds(e.message)}${where}`, {
        cause: error,
        suggestions: ['run the command again to resume'],
      }),
    }
  }
  if (TRANSIENT_CODES.has(code) || e?.name === 'ReadError' || e?.name === 'RequestError') {
    return {
      retry: true,
      error: new BoxError(`download failed${where}: ${e.message}`, {
        cause: error,
        suggestions: ['run the command again to resume'],
      }),
    }
  }
  return {retry: false, error: e instanceof Error ? e : new Error(String(e))}
}

function timeoutSeconds(message: string): string {
  const ms = /(\d+)ms/.exec(message)?.[1]
  return ms ? `${Number(ms) / 1000} s` : 'too long'
}

function interruptedError(url: string, dest: string): BoxError {
  return new BoxError(`download of ${url} interrupted`, {
    exitCode: ExitCode.INTERRUPTED,
    detail: `the partial download is kept in ${partPath(dest)}`,
    suggestions: ['run the command again to resume'],
  })
}

function throwIfAborted(signal: AbortSignal | undefined, url: string): void {
  if (signal?.aborted)
    throw signal.reason instanceof BoxError
      ? signal.reason
      : new BoxError(`download of ${url} interrupted`, {exitCode: ExitCode.INTERRUPTED})
}

function normalizeDigest(checksum: Checksum): string {
  const value = checksum.value.trim().toLowerCase()
  const lengths: Record<ChecksumType, number> = {md5: 32, sha1: 40, sha256: 64, sha384: 96, sha512: 128}
  if (!/^[0-9a-f]+$/.test(value) || value.length !== lengths[checksum.type]) {
    throw new BoxError(
      `'${checksum.value}' is not a ${checksum.type} checksum (expected ${lengths[checksum.type]} hex digits)`,
      {exitCode: ExitCode.USAGE},
    )
  }
  return value
}

interface Meter {
  update(received: number, total?: number): void
  finish(received: number, total?: number): void
}

/** Throttled progress with a rate over a sliding window of recent samples. */
function createMeter(onProgress?: (progress: DownloadProgress) => void): Meter {
  const samples: Array<{time: number; bytes: number}> = []
  let last = 0
  const report = (received: number, total: number | undefined, now: number) => {
    samples.push({time: now, bytes: received})
    while (samples.length > 2 && now - samples[0].time > RATE_WINDOW_MS) samples.shift()
    const first = samples[0]
    const elapsed = (now - first.time) / 1000
    // A restart (truncate) makes bytes go down: no rate until the window refills.
    const rate = elapsed > 0 && received >= first.bytes ? (received - first.bytes) / elapsed : 0
    const eta = total !== undefined && rate > 0 ? Math.max(0, (total - received) / rate) : undefined
    onProgress!({received, total, rate, eta})
  }
  return {
    update(received, total) {
      if (!onProgress) return
      const now = performance.now()
      if (samples.length === 0) samples.push({time: now, bytes: received})
      if (now - last < PROGRESS_INTERVAL_MS) return
      last = now
      report(received, total, now)
    },
    finish(received, total) {
      if (onProgress) report(received, total ?? received, performance.now())
    },
  }
}
