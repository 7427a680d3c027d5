import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdir, readdir, readFile, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {addBoxFromSource, checksumFromFlags, downloadPath, identifySource} from '../../src/lib/store/add.js'
import {partPath} from '../../src/lib/store/download.js'
import {getCatalogUrl, listBoxes} from '../../src/lib/store/query.js'
import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'
import {rejection} from '../support/rejection.js'
import {startTestServer, type TestServer} from './download-server.js'

/**
 * `box add` from URLs and catalogs, end to end through the store: a real HTTP server on
 * 127.0.0.1, real .box files, a real store in a temp directory.
 */

let server: TestServer
let dir: string
let dataDir: string
let cacheDir: string
let cleanup: () => Promise<void>
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex')

async function serveBox(
  path: string,
  metadata: Record<string, unknown> = {provider: 'qemu', format: 'qcow2'},
  imageBytes = 2 * 1024 * 1024,
): Promise<Buffer> {
  const file = await makeBoxFile(dir, {metadata, imageBytes, compression: 'gzip'})
  const data = await readFile(file)
  server.files.set(path, {data, etag: `"${sha256(data).slice(0, 16)}"`})
  return data
}

function serveCatalog(path: string, catalog: unknown): void {
  server.files.set(path, {data: Buffer.from(JSON.stringify(catalog)), contentType: 'application/json', etag: '"c"'})
}

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-add-url-'))
  dataDir = join(dir, 'data')
  cacheDir = join(dir, 'cache')
  server = await startTestServer()
})

afterEach(async () => {
  await server.close()
  await cleanup()
})

describe('box add from a .box URL', () => {
  it('downloads, verifies, imports, and removes the download', async () => {
    const data = await serveBox('/worker.box')
    const url = server.url('/worker.box')
    const added = await addBoxFromSource({
      dataDir,
      cacheDir,
      name: 'worker',
      source: url,
      version: '1.0.0',
      checksum: {type: 'sha256', value: sha256(data)},
    })
    expect(added.box).toMatchObject({name: 'worker', version: '1.0.0', provider: 'qemu'})
    expect(added.fetched).toBe(data.length)
    expect(existsSync(downloadPath(cacheDir, url))).toBe(false)
    expect(await readdir(join(cacheDir, 'downloads'))).toEqual([])
    expect(await getCatalogUrl(dataDir, 'worker')).toBeUndefined()
  })

  it('resumes an interrupted download on the next add (Range), fetching nothing twice', async () => {
    const data = await serveBox('/worker.box')
    const url = server.url('/worker.box')
    const half = Math.floor(data.length / 2)
    server.plan.push({cutAfter: half})
    await rejection(addBoxFromSource({dataDir, cacheDir, name: 'worker', source: url, downloadOptions: {retries: 0}}))
    expect((await stat(partPath(downloadPath(cacheDir, url)))).size).toBe(half)
    expect(await listBoxes(dataDir)).toEqual([])

    const added = await addBoxFromSource({
      dataDir,
      cacheDir,
      name: 'worker',
      source: url,
      checksum: {type: 'sha256', value: sha256(data)},
    })
    expect(added.fetched).toBe(data.length - half)
    expect(server.requests[1].range).toBe(`bytes=${half}-`)
    expect(server.bytesSent()).toBe(data.length)
    expect(existsSync(partPath(downloadPath(cacheDir, url)))).toBe(false)
  })

  it('imports a finished download left by an interrupted import, and replaces one that fails the checksum', async () => {
    const data = await serveBox('/worker.box')
    const url = server.url('/worker.box')
    await mkdir(join(cacheDir, 'downloads'), {recursive: true})
    await writeFile(downloadPath(cacheDir, url), data)
    const reused = await addBoxFromSource({
      dataDir,
      cacheDir,
      name: 'worker',
      source: url,
      version: '1',
      checksum: {type: 'sha256', value: sha256(data)},
    })
    expect(reused.fetched).toBe(0)
    expect(server.requests).toHaveLength(0)

    await writeFile(downloadPath(cacheDir, url), Buffer.from('stale'))
    const fresh = await addBoxFromSource({
      dataDir,
      cacheDir,
      name: 'worker',
      source: url,
      version: '2',
      checksum: {type: 'sha256', value: sha256(data)},
    })
    expect(fresh.fetched).toBe(data.length)
    expect(existsSync(downloadPath(cacheDir, url))).toBe(false)
  })

  it('leaves nothing in the store or the cache on a checksum mismatch', async () => {
    await serveBox('/worker.box')
    const error = await rejection(
      addBoxFromSource({
        dataDir,
        cacheDir,
        name: 'worker',
        source: server.url('/worker.box'),
        checksum: {type: 'sha256', value: '0'.repeat(64)},
      }),
    )
    expect(error.message).toMatch(/checksum mismatch/)
    expect(await listBoxes(dataDir)).toEqual([])
    expect(await readdir(join(cacheDir, 'downloads'))).toEqual([])
  })

  it('names URL and status on 404', async () => {
    const url = server.url('/nope.box')
    const error = await rejection(addBoxFromSource({dataDir, cacheDir, name: 'worker', source: url}))
    expect(error.message).toBe(`HTTP 404 Not Found for ${url}`)
    expect(await listBoxes(dataDir)).toEqual([])
  })

  it('removes the download when the file is not a box', async () => {
    server.files.set('/junk.box', {data: Buffer.alloc(4096, 7), etag: '"j"'})
    const url = server.url('/junk.box')
    await rejection(addBoxFromSource({dataDir, cacheDir, name: 'junk', source: url}))
    expect(existsSync(downloadPath(cacheDir, url))).toBe(false)
    expect(await listBoxes(dataDir)).toEqual([])
  })

  it('needs a name for a .box', async () => {
    await serveBox('/worker.box')
    const error = await rejection(addBoxFromSource({dataDir, cacheDir, source: server.url('/worker.box')}))
    expect(error.message).toMatch(/is a box, not a catalog: give the name/)
  })
})

describe('box add from a catalog', () => {
  const catalogFor = (url: (path: string) => string, digests: Record<string, string>) => ({
    name: 'org/worker',
    versions: [
      {
        version: '1.0.0',
        providers: [{name: 'qemu', url: url('/worker-1.0.0.box'), checksum_type: 'sha256', checksum: digests['1.0.0']}],
      },
      {
        version: '1.1.0',
        providers: [
          {name: 'virtualbox', url: url('/worker-1.1.0-vb.box')},
          {name: 'libvirt', url: 'worker-1.1.0-libvirt.box', checksum_type: 'sha256', checksum: digests['1.1.0']},
        ],
      },
      {
        version: '2.0.0',
        providers: [{name: 'qemu', url: url('/worker-2.0.0.box'), checksum_type: 'sha256', checksum: digests['2.0.0']}],
      },
    ],
  })

  beforeEach(async () => {
    const digests = {
      '1.0.0': sha256(await serveBox('/worker-1.0.0.box', {provider: 'qemu'}, 64 * 1024)),
      '1.1.0': sha256(await serveBox('/worker-1.1.0-libvirt.box', {provider: 'libvirt'}, 64 * 1024)),
      '2.0.0': sha256(await serveBox('/worker-2.0.0.box', {provider: 'qemu'}, 64 * 1024)),
    }
    serveCatalog('/worker', catalogFor(server.url, digests))
  })

  it('identifies a catalog URL by its content, whatever its name', async () => {
    const source = await identifySource(server.url('/worker'))
    expect(source.kind).toBe('catalog')
    expect((await identifySource(server.url('/worker-1.0.0.box'))).kind).toBe('box-url')
  })

  it('adds the newest version allowed by the constraint, takes a libvirt box for qemu, and remembers the catalog', async () => {
    const catalogUrl = server.url('/worker')
    const added = await addBoxFromSource({dataDir, cacheDir, source: catalogUrl, version: '>= 1.0, < 2'})
    expect(added.box).toMatchObject({name: 'org/worker', version: '1.1.0', provider: 'libvirt'})
    expect(added.catalogUrl).toBe(catalogUrl)
    expect(await getCatalogUrl(dataDir, 'org/worker')).toBe(catalogUrl)
    // The relative provider URL was resolved against the catalog's.
    expect(server.requests.map((r) => r.path)).toContain('/worker-1.1.0-libvirt.box')
  })

  it('adds the newest version by default, with NAME given too', async () => {
    const added = await addBoxFromSource({dataDir, cacheDir, name: 'org/worker', source: server.url('/worker')})
    expect(added.box).toMatchObject({version: '2.0.0', provider: 'qemu'})
  })

  it('says a version is already installed before downloading it', async () => {
    await addBoxFromSource({dataDir, cacheDir, source: server.url('/worker'), version: '1.0.0'})
    const boxRequests = () => server.requests.filter((r) => r.path.endsWith('.box')).length
    const before = boxRequests()
    const error = await rejection(
      addBoxFromSource({dataDir, cacheDir, source: server.url('/worker'), version: '1.0.0'}),
    )
    expect(error.message).toBe('box org/worker 1.0.0 (qemu) is already installed')
    expect(boxRequests()).toBe(before)
    // --force replaces it.
    await addBoxFromSource({dataDir, cacheDir, source: server.url('/worker'), version: '1.0.0', force: true})
  })

  it('names URL and status when the catalog is missing, and URL when it is not a catalog', async () => {
    const missing = server.url('/missing')
    expect((await rejection(addBoxFromSource({dataDir, cacheDir, source: missing}))).message).toBe(
      `HTTP 404 Not Found for ${missing}`,
    )
    server.files.set('/broken.json', {
      data: Buffer.from('{"name": "x", "versions": [{"version": "one"}]}'),
      contentType: 'application/json',
    })
    const broken = await rejection(addBoxFromSource({dataDir, cacheDir, source: server.url('/broken.json')}))
    expect(broken.message).toBe(`${server.url('/broken.json')} is not a valid box catalog`)
    expect(broken.detail).toContain('versions[0].version: must be a version')
  })

  it('refuses a NAME that differs from the catalog name', async () => {
    const error = await rejection(addBoxFromSource({dataDir, cacheDir, name: 'other', source: server.url('/worker')}))
    expect(error.message).toMatch(/is for org\/worker, not other/)
  })

  it('lists what is available when nothing matches', async () => {
    const error = await rejection(addBoxFromSource({dataDir, cacheDir, source: server.url('/worker'), version: '>= 3'}))
    expect(error.message).toMatch(
      /^no version of org\/worker matches version >= 3, provider qemu or libvirt, architecture \w+ \(this host's\)$/,
    )
    expect(error.detail).toContain('1.1.0: virtualbox, libvirt')
  })

  it('reads a local catalog whose boxes are local files (no HTTP)', async () => {
    const box = await makeBoxFile(dir, {metadata: {provider: 'qemu'}, name: 'local.box'})
    const catalogPath = join(dir, 'catalog.json')
    await writeFile(
      catalogPath,
      JSON.stringify({
        name: 'local',
        versions: [
          {
            version: '3.1',
            providers: [
              {name: 'qemu', url: 'local.box', checksum_type: 'sha256', checksum: sha256(await readFile(box))},
            ],
          },
        ],
      }),
    )
    const added = await addBoxFromSource({dataDir, cacheDir, source: pathToFileURL(catalogPath).toString()})
    expect(added.box).toMatchObject({name: 'local', version: '3.1', provider: 'qemu'})
    expect(added.fetched).toBe(0)
  })

  it('checks a local box against a wrong catalog checksum', async () => {
    const box = await makeBoxFile(dir, {metadata: {provider: 'qemu'}, name: 'local.box'})
    const catalogPath = join(dir, 'catalog.json')
    await writeFile(
      catalogPath,
      JSON.stringify({
        name: 'local',
        versions: [
          {version: '3.1', providers: [{name: 'qemu', url: box, checksum_type: 'md5', checksum: 'f'.repeat(32)}]},
        ],
      }),
    )
    const error = await rejection(addBoxFromSource({dataDir, cacheDir, source: catalogPath}))
    expect(error.message).toBe(`checksum mismatch for ${box}`)
    expect(await listBoxes(dataDir)).toEqual([])
  })
})

describe('checksumFromFlags', () => {
  it('guesses the type from the length and validates the type', () => {
    expect(checksumFromFlags('a'.repeat(64), undefined)).toEqual({type: 'sha256', value: 'a'.repeat(64)})
    expect(checksumFromFlags('a'.repeat(32), undefined)?.type).toBe('md5')
    expect(checksumFromFlags('abc', 'SHA1')).toEqual({type: 'sha1', value: 'abc'})
    expect(() => checksumFromFlags('abc', undefined)).toThrow(/cannot tell the type/)
    expect(() => checksumFromFlags('abc', 'crc')).toThrow(/unknown checksum type/)
    expect(() => checksumFromFlags(undefined, 'sha1')).toThrow(/needs --checksum/)
  })
})
