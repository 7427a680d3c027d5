import {execFile} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdtemp, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {download, partPath, type DownloadProgress} from '../../src/lib/store/download.js'
import {BoxError} from '../../src/lib/core/errors.js'
import {startTestServer, type TestServer} from './download-server.js'

const execFileAsync = promisify(execFile)
const SIZE = 4 * 1024 * 1024 + 123
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex')

let server: TestServer
let dir: string
let data: Buffer

beforeEach(async () => {
  server = await startTestServer()
  dir = await mkdtemp(join(tmpdir(), 'box-download-'))
  data = randomBytes(SIZE)
  server.files.set('/test.box', {data, etag: '"v1"', lastModified: new Date(0).toUTCString()})
})

afterEach(async () => {
  await server.close()
  await rm(dir, {recursive: true, force: true})
})

describe('download', () => {
  it('downloads a file, verifies its sha256 and reports progress', async () => {
    const dest = join(dir, 'test.box')
    const seen: DownloadProgress[] = []
    const result = await download({
      url: server.url('/test.box'),
      dest,
      checksum: {type: 'sha256', value: sha256(data)},
      onProgress: (p) => seen.push(p),
    })
    expect(result).toMatchObject({bytes: SIZE, resumedFrom: 0, fetched: SIZE})
    expect((await readFile(dest)).equals(data)).toBe(true)
    expect(existsSync(partPath(dest))).toBe(false)
    expect(existsSync(`${dest}.part.json`)).toBe(false)
    expect(seen.at(-1)).toMatchObject({received: SIZE, total: SIZE})
    expect(server.requests).toHaveLength(1)
  })

  it('accepts every checksum type, case-insensitively', async () => {
    for (const type of ['md5', 'sha1', 'sha384', 'sha512'] as const) {
      const dest = join(dir, `${type}.box`)
      const value = createHash(type).update(data).digest('hex').toUpperCase()
      await download({url: server.url('/test.box'), dest, checksum: {type, value}})
      expect((await stat(dest)).size).toBe(SIZE)
    }
  })

  it('resumes after the connection is cut half-way without fetching bytes again', async () => {
    const dest = join(dir, 'test.box')
    const half = 2 * 1024 * 1024
    server.plan.push({cutAfter: half})
    const result = await download({
      url: server.url('/test.box'),
      dest,
      checksum: {type: 'sha256', value: sha256(data)},
      retryDelayMs: 10,
    })
    expect((await readFile(dest)).equals(data)).toBe(true)
    expect(server.requests).toHaveLength(2)
    expect(server.requests[0].bytesSent).toBe(half)
    expect(server.requests[1].range).toBe(`bytes=${half}-`)
    expect(server.requests[1].ifRange).toBe('"v1"')
    expect(server.requests[1].status).toBe(206)
    // Nothing fetched twice: the server sent the file's size in all.
    expect(server.bytesSent()).toBe(SIZE)
    expect(result.fetched).toBe(SIZE)
  })

  it('keeps the part when retries run out, and a later call resumes it (hashing the part first)', async () => {
    const dest = join(dir, 'test.box')
    const cut = 1_500_000
    server.plan.push({cutAfter: cut})
    await expect(download({url: server.url('/test.box'), dest, retries: 0})).rejects.toThrow(/download failed/)
    expect((await stat(partPath(dest))).size).toBe(cut)
    expect(existsSync(dest)).toBe(false)

    const result = await download({url: server.url('/test.box'), dest, checksum: {type: 'sha256', value: sha256(data)}})
    expect(result).toMatchObject({resumedFrom: cut, fetched: SIZE - cut, bytes: SIZE})
    expect(server.requests[1].range).toBe(`bytes=${cut}-`)
    expect(server.bytesSent()).toBe(SIZE)
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('starts over cleanly when the server ignores Range and answers 200', async () => {
    const dest = join(dir, 'test.box')
    server.plan.push({cutAfter: 1_000_000}, {ignoreRange: true})
    await download({
      url: server.url('/test.box'),
      dest,
      checksum: {type: 'sha256', value: sha256(data)},
      retryDelayMs: 10,
    })
    expect(server.requests[1].range).toBe('bytes=1000000-')
    expect(server.requests[1].status).toBe(200)
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('starts over when the file changed on the server (If-Range no longer matches)', async () => {
    const dest = join(dir, 'test.box')
    server.plan.push({cutAfter: 1_000_000})
    await expect(download({url: server.url('/test.box'), dest, retries: 0})).rejects.toThrow()
    const newer = randomBytes(SIZE)
    server.files.set('/test.box', {data: newer, etag: '"v2"', lastModified: new Date().toUTCString()})
    await download({url: server.url('/test.box'), dest, checksum: {type: 'sha256', value: sha256(newer)}})
    expect(server.requests[1]).toMatchObject({range: 'bytes=1000000-', ifRange: '"v1"', status: 200})
    expect((await readFile(dest)).equals(newer)).toBe(true)
  })

  it('does not resume a part without a validator (no ETag, no Last-Modified)', async () => {
    server.files.set('/plain.box', {data})
    const dest = join(dir, 'plain.box')
    server.plan.push({cutAfter: 1_000_000})
    await expect(download({url: server.url('/plain.box'), dest, retries: 0})).rejects.toThrow()
    await download({url: server.url('/plain.box'), dest})
    expect(server.requests[1].range).toBeUndefined()
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('finishes a part that is already complete (416 with the same size)', async () => {
    const dest = join(dir, 'test.box')
    await writeFile(partPath(dest), data)
    await writeFile(`${dest}.part.json`, JSON.stringify({url: server.url('/test.box'), etag: '"v1"', total: SIZE}))
    const result = await download({url: server.url('/test.box'), dest, checksum: {type: 'sha256', value: sha256(data)}})
    expect(server.requests[0].status).toBe(416)
    expect(result).toMatchObject({resumedFrom: SIZE, fetched: 0})
    expect(server.bytesSent()).toBe(0)
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('starts over after 416 when the part is larger than the file', async () => {
    const dest = join(dir, 'test.box')
    await writeFile(partPath(dest), Buffer.concat([data, Buffer.from('junk')]))
    await writeFile(`${dest}.part.json`, JSON.stringify({url: server.url('/test.box'), etag: '"v1"'}))
    await download({url: server.url('/test.box'), dest, checksum: {type: 'sha256', value: sha256(data)}})
    expect(server.requests.map((r) => r.status)).toEqual([416, 200])
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('names the URL and status on 404 and leaves nothing at dest', async () => {
    const dest = join(dir, 'missing.box')
    const url = server.url('/missing.box')
    const error = await download({url, dest}).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(BoxError)
    expect((error as Error).message).toBe(`HTTP 404 Not Found for ${url}`)
    expect(existsSync(dest)).toBe(false)
    expect(existsSync(partPath(dest))).toBe(false)
    expect(server.requests).toHaveLength(1)
  })

  it('gives up after the retries, with the last error', async () => {
    const dest = join(dir, 'test.box')
    server.plan.push({status: 503}, {status: 503}, {status: 503})
    await expect(download({url: server.url('/test.box'), dest, retries: 2, retryDelayMs: 10})).rejects.toThrow(
      `HTTP 503 Service Unavailable for ${server.url('/test.box')}`,
    )
    expect(server.requests).toHaveLength(3)
    expect(existsSync(partPath(dest))).toBe(false)
  })

  it('retries a transient 503 and then succeeds', async () => {
    const dest = join(dir, 'test.box')
    server.plan.push({status: 503}, {status: 502})
    const retries: string[] = []
    await download({
      url: server.url('/test.box'),
      dest,
      retryDelayMs: 10,
      onRetry: ({error, attempt}) => retries.push(`${attempt}: ${error.message}`),
    })
    expect(server.requests.map((r) => r.status)).toEqual([503, 502, 200])
    expect(retries).toEqual([
      `1: HTTP 503 Service Unavailable for ${server.url('/test.box')}`,
      `2: HTTP 502 Bad Gateway for ${server.url('/test.box')}`,
    ])
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('gives up on a checksum mismatch: error with expected and actual, nothing at dest, part removed', async () => {
    const dest = join(dir, 'test.box')
    const wrong = 'ab'.repeat(32)
    const error = await download({url: server.url('/test.box'), dest, checksum: {type: 'sha256', value: wrong}}).catch(
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(BoxError)
    expect((error as BoxError).message).toMatch(/checksum mismatch/)
    expect((error as BoxError).detail).toContain(wrong)
    expect((error as BoxError).detail).toContain(sha256(data))
    expect(existsSync(dest)).toBe(false)
    expect(existsSync(partPath(dest))).toBe(false)
  })

  it('refuses a malformed checksum before downloading', async () => {
    const dest = join(dir, 'test.box')
    await expect(
      download({url: server.url('/test.box'), dest, checksum: {type: 'sha1', value: 'xyz'}}),
    ).rejects.toThrow(/not a sha1 checksum/)
    expect(server.requests).toHaveLength(0)
  })

  it('fails a stalled server within the idle timeout, naming the URL', async () => {
    const dest = join(dir, 'test.box')
    server.plan.push({stall: true})
    const started = Date.now()
    const error = await download({url: server.url('/test.box'), dest, timeoutMs: 500, retries: 0}).catch(
      (e: unknown) => e,
    )
    const elapsed = Date.now() - started
    expect(error).toBeInstanceOf(BoxError)
    expect((error as Error).message).toMatch(/timed out: no data received for 0.5 s/)
    expect((error as Error).message).toContain(server.url('/test.box'))
    expect(elapsed).toBeGreaterThanOrEqual(450)
    expect(elapsed).toBeLessThan(2500)
    expect(existsSync(dest)).toBe(false)
  })

  it('fails a stall in the middle of the body too, and resumes after it with retries', async () => {
    const dest = join(dir, 'test.box')
    // First request: 1 MB then silence; the retry resumes from there.
    server.plan.push({stallAfter: 1024 * 1024})
    await download({url: server.url('/test.box'), dest, timeoutMs: 300, retries: 2, retryDelayMs: 10})
    expect(server.requests.map((r) => r.status)).toEqual([200, 206])
    expect(server.requests[1].range).toBe(`bytes=${1024 * 1024}-`)
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('keeps the part when aborted (Ctrl-C) and a later call resumes it', async () => {
    const dest = join(dir, 'test.box')
    const sent = 1_500_000
    const controller = new AbortController()
    // The server sends 1.5 MB and then waits; Ctrl-C arrives while the client waits for more.
    server.plan.push({stallAfter: sent})
    const first = download({url: server.url('/test.box'), dest, signal: controller.signal, timeoutMs: 10_000})
    while (server.bytesSent() < sent) await new Promise((resolve) => setTimeout(resolve, 10))
    await new Promise((resolve) => setTimeout(resolve, 100))
    controller.abort()
    const error = await first.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(BoxError)
    expect((error as BoxError).exitCode).toBe(130)
    expect((error as Error).message).toMatch(/interrupted/)
    expect((error as BoxError).detail).toContain(partPath(dest))
    expect((await stat(partPath(dest))).size).toBe(sent)
    expect(existsSync(dest)).toBe(false)

    const result = await download({url: server.url('/test.box'), dest, checksum: {type: 'sha256', value: sha256(data)}})
    expect(result).toMatchObject({resumedFrom: sent, fetched: SIZE - sent})
    expect(server.requests[1].range).toBe(`bytes=${sent}-`)
    expect(server.bytesSent()).toBe(SIZE)
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('an already-aborted signal downloads nothing', async () => {
    const dest = join(dir, 'test.box')
    const controller = new AbortController()
    controller.abort()
    await expect(download({url: server.url('/test.box'), dest, signal: controller.signal})).rejects.toThrow(
      /interrupted/,
    )
    expect(server.requests).toHaveLength(0)
  })

  it('refuses to write a part another live process is downloading, and takes over a stale lock', async () => {
    const dest = join(dir, 'test.box')
    // pid 1 is always alive: another downloader holds the part.
    await writeFile(`${partPath(dest)}.lock`, '1\n')
    await expect(download({url: server.url('/test.box'), dest})).rejects.toThrow(
      /is already being downloaded by process 1/,
    )
    expect(server.requests).toHaveLength(0)
    // A pid that cannot exist: the owner crashed.
    await writeFile(`${partPath(dest)}.lock`, '2147483646\n')
    await download({url: server.url('/test.box'), dest})
    expect(existsSync(`${partPath(dest)}.lock`)).toBe(false)
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('downloads an empty file', async () => {
    server.files.set('/empty', {data: Buffer.alloc(0), etag: '"e"'})
    const dest = join(dir, 'empty.box')
    const result = await download({
      url: server.url('/empty'),
      dest,
      checksum: {type: 'sha256', value: sha256(Buffer.alloc(0))},
    })
    expect(result.bytes).toBe(0)
    expect((await stat(dest)).size).toBe(0)
  })

  it('fails fast with a clear error when nothing listens on the port', async () => {
    const url = server.url('/test.box')
    await server.close()
    const error = await download({url, dest: join(dir, 'x.box'), retries: 1, retryDelayMs: 10}).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(BoxError)
    expect((error as Error).message).toMatch(/ECONNREFUSED/)
    expect((error as Error).message).toContain(url)
    server = await startTestServer()
  })
})

describe('download to a full disk', () => {
  let mountPoint: string | undefined
  let skipReason: string | undefined

  beforeEach(async () => {
    mountPoint = await mkdtemp(join(tmpdir(), 'box-tmpfs-'))
    try {
      // A 1 MB tmpfs stands in for a full disk; needs root (CAP_SYS_ADMIN).
      await execFileAsync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mountPoint])
    } catch (error) {
      skipReason = `cannot mount a tmpfs here (${(error as Error).message.split('\n')[0]})`
      await rm(mountPoint, {recursive: true, force: true})
      mountPoint = undefined
    }
  })

  afterEach(async () => {
    if (!mountPoint) return
    await execFileAsync('umount', [mountPoint])
    await rm(mountPoint, {recursive: true, force: true})
  })

  it('fails with a clear error and removes the partial file', async (context) => {
    if (!mountPoint) {
      console.warn(`skipped: ${skipReason}`)
      context.skip()
      return
    }
    const dest = join(mountPoint, 'test.box')
    const error = await download({url: server.url('/test.box'), dest, retryDelayMs: 10}).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(BoxError)
    expect((error as Error).message).toBe(`no space left on the disk for ${partPath(dest)}`)
    expect((error as BoxError).suggestions.join(' ')).toMatch(/free some disk space/)
    expect(existsSync(dest)).toBe(false)
    expect(existsSync(partPath(dest))).toBe(false)
    expect(existsSync(`${dest}.part.json`)).toBe(false)
    // No retries for a disk error: one request only.
    expect(server.requests).toHaveLength(1)
  })
})
