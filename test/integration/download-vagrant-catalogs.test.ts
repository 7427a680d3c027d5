/**
 * Downloads as Vagrant catalogs serve them, through the store's real download code
 * against real loopback servers: redirects (301/302/307/308, across hosts, a cap, a
 * loop), HTTPS against a CA made here with the openssl CLI (trusted with caCertFile; an
 * untrusted certificate, one for another host, an expired one), chunked bodies without
 * Content-Length, Content-Disposition ignored for naming, `org/name` boxes from a
 * catalog, and a partial download resumed only for the same URL and checksum.
 */
import {createHash, randomBytes} from 'node:crypto'
import {existsSync} from 'node:fs'
import {readdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {afterAll, afterEach, beforeAll, beforeEach, describe, expect, it} from 'vitest'

import {addBoxFromSource, downloadPath} from '../../src/lib/store/add.js'
import {download, partPath, type DownloadProgress} from '../../src/lib/store/download.js'
import {hostArchitecture, loadCatalog} from '../../src/lib/store/catalog.js'
import {MAX_REDIRECTS} from '../../src/lib/store/http.js'
import {listBoxes} from '../../src/lib/store/query.js'
import {checkOutdated, updateBoxes} from '../../src/lib/store/updates.js'
import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'
import {makeTestCa, type TestCa} from '../support/tls.js'
import {rejection} from '../support/rejection.js'
import {startTestServer, type TestServer} from './download-server.js'

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex')

let dir: string
let cleanup: () => Promise<void>
const servers: TestServer[] = []

async function server(options?: Parameters<typeof startTestServer>[0]): Promise<TestServer> {
  const started = await startTestServer(options)
  servers.push(started)
  return started
}

/** What a failed add must leave: no box, no import scratch (.tmp-*) in the store, nothing in the download folder. */
async function expectNothingLeft(dataDir: string, cacheDir: string): Promise<void> {
  expect(await listBoxes(dataDir)).toEqual([])
  const listing = async (path: string): Promise<string[]> => (existsSync(path) ? readdir(path) : [])
  expect(await listing(join(dataDir, 'boxes'))).toEqual([])
  expect(await listing(join(cacheDir, 'downloads'))).toEqual([])
}

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-vagrant-dl-'))
})

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()))
  await cleanup()
})

describe('redirects', () => {
  for (const status of [301, 302, 303, 307, 308] as const) {
    it(`follows ${status} to another host and port, and checks the bytes`, async () => {
      const origin = await server()
      const cdn = await server()
      const data = randomBytes(300_000)
      cdn.files.set('/blobs/w.box', {data, etag: '"w"'})
      origin.redirects.set('/w.box', {status, location: cdn.url('/blobs/w.box', 'localhost')})
      const dest = join(dir, 'w.box')
      const result = await download({url: origin.url('/w.box'), dest, checksum: {type: 'sha256', value: sha256(data)}})
      expect(result.bytes).toBe(data.length)
      expect((await readFile(dest)).equals(data)).toBe(true)
      expect(origin.requests.map((r) => [r.path, r.status])).toEqual([['/w.box', status]])
      expect(cdn.requests.map((r) => [r.path, r.status])).toEqual([['/blobs/w.box', 200]])
    })
  }

  it('resumes through the redirect: the Range goes to the host that has the file', async () => {
    const origin = await server()
    const cdn = await server()
    const data = randomBytes(3 * 1024 * 1024)
    cdn.files.set('/blobs/w.box', {data, etag: '"w"'})
    origin.redirects.set('/w.box', {status: 302, location: cdn.url('/blobs/w.box', 'localhost')})
    cdn.plan.push({cutAfter: 1024 * 1024})
    const dest = join(dir, 'w.box')
    await download({url: origin.url('/w.box'), dest, checksum: {type: 'sha256', value: sha256(data)}, retryDelayMs: 10})
    expect((await readFile(dest)).equals(data)).toBe(true)
    expect(cdn.requests.map((r) => r.range)).toEqual([undefined, `bytes=${1024 * 1024}-`])
    expect(cdn.bytesSent()).toBe(data.length)
  })

  it('stops a redirect loop at the cap, naming the last hop, without retrying or leaving a part', async () => {
    const a = await server()
    const b = await server()
    a.redirects.set('/loop.box', {status: 302, location: b.url('/back', 'localhost')})
    b.redirects.set('/back', {status: 307, location: a.url('/loop.box')})
    const dest = join(dir, 'loop.box')
    const error = await rejection(download({url: a.url('/loop.box'), dest, retryDelayMs: 10}))
    expect(error.message).toMatch(
      new RegExp(
        `^redirect loop for ${a.url('/loop.box')}: stopped at .+ after ${MAX_REDIRECTS} redirects \\(the cap\\)$`,
      ),
    )
    // The last hop: the 10th redirect's target, A's /loop.box again (hops alternate B, A, B, …).
    expect(error.message).toContain(`stopped at ${a.url('/loop.box')} after`)
    expect(error.detail).toContain(`${a.url('/loop.box')}\n→ ${b.url('/back', 'localhost')}`)
    // One attempt: 11 responses (the first request and 10 redirects), no retry.
    expect(a.requests.length + b.requests.length).toBe(MAX_REDIRECTS + 1)
    expect(existsSync(partPath(dest))).toBe(false)
    expect(existsSync(dest)).toBe(false)

    // A catalog URL that loops fails the same way, not as a retried network error.
    const catalogError = await rejection(loadCatalog(a.url('/loop.box')))
    expect(catalogError.message).toMatch(/^redirect loop for .* after 10 redirects \(the cap\)$/)
    expect(a.requests.length + b.requests.length).toBe(2 * (MAX_REDIRECTS + 1))
  })

  it('says "too many redirects" for a chain longer than the cap that never loops', async () => {
    const origin = await server()
    for (let hop = 0; hop <= MAX_REDIRECTS + 1; hop++)
      origin.redirects.set(`/hop${hop}`, {status: 301, location: `/hop${hop + 1}`})
    const error = await rejection(download({url: origin.url('/hop0'), dest: join(dir, 'x.box'), retryDelayMs: 10}))
    expect(error.message).toBe(
      `too many redirects for ${origin.url('/hop0')}: stopped at ${origin.url(`/hop${MAX_REDIRECTS}`)} after ${MAX_REDIRECTS} redirects (the cap)`,
    )
  })

  it('refuses a redirect to another scheme (file:, ftp:) at once, naming the hop', async () => {
    const origin = await server()
    origin.redirects.set('/f.box', {status: 302, location: 'file:///etc/passwd'})
    origin.redirects.set('/ftp.box', {status: 301, location: 'ftp://example.org/x.box'})
    for (const [path, scheme] of [
      ['/f.box', 'file:'],
      ['/ftp.box', 'ftp:'],
    ] as const) {
      const error = await rejection(download({url: origin.url(path), dest: join(dir, 'x.box'), retryDelayMs: 10}))
      expect(error.message).toBe(
        `${origin.url(path)} redirects to a ${scheme} URL: box follows redirects to http: and https: only`,
      )
    }
    // One request each: not retried.
    expect(origin.requests.map((r) => r.path)).toEqual(['/f.box', '/ftp.box'])
    expect(existsSync(join(dir, 'x.box'))).toBe(false)
  })

  it('follows a catalog that moved, and a provider URL that redirects, into a store named org/name', async () => {
    const origin = await server()
    const cdn = await server()
    const box = await readFile(await makeBoxFile(dir, {metadata: {provider: 'libvirt', format: 'qcow2'}}))
    cdn.files.set('/w-1.0.0.box', {
      data: box,
      etag: '"b"',
      // A CDN's name for the file: never the box's name, never a path.
      headers: {'content-disposition': 'attachment; filename="../../evil-name.box"'},
    })
    origin.redirects.set('/boxes/w-1.0.0.box', {status: 302, location: cdn.url('/w-1.0.0.box', 'localhost')})
    origin.files.set('/v2/acme/worker.json', {
      data: Buffer.from(
        JSON.stringify({
          name: 'acme/worker',
          versions: [
            {
              version: '1.0.0',
              providers: [{name: 'libvirt', url: '/boxes/w-1.0.0.box', checksum_type: 'sha256', checksum: sha256(box)}],
            },
          ],
        }),
      ),
      contentType: 'application/json',
    })
    origin.redirects.set('/acme/worker', {status: 301, location: '/v2/acme/worker.json'})
    const dataDir = join(dir, 'data')
    const cacheDir = join(dir, 'cache')
    const added = await addBoxFromSource({dataDir, cacheDir, source: origin.url('/acme/worker'), convertFor: []})
    expect(added.box).toMatchObject({name: 'acme/worker', version: '1.0.0', provider: 'libvirt'})
    // The slash is escaped in the store (Vagrant's layout), and nothing took the CDN's file name.
    expect(await readdir(join(dataDir, 'boxes'))).toEqual(['acme-VAGRANTSLASH-worker'])
    expect(await readdir(join(cacheDir, 'downloads'))).toEqual([])
    expect(existsSync(join(dir, 'evil-name.box'))).toBe(false)
    expect((await listBoxes(dataDir)).map((b) => b.name)).toEqual(['acme/worker'])
  })
})

describe('box names from catalogs', () => {
  it('refuses a catalog whose name would climb out of the store, before downloading the box', async () => {
    const origin = await server()
    origin.files.set('/evil.box', {data: randomBytes(1000), etag: '"e"'})
    for (const name of ['../../escape', 'org/../../escape', '/abs', 'a-VAGRANTSLASH-b']) {
      origin.files.set('/evil.json', {
        data: Buffer.from(
          JSON.stringify({name, versions: [{version: '1.0.0', providers: [{name: 'qemu', url: '/evil.box'}]}]}),
        ),
        contentType: 'application/json',
      })
      const error = await rejection(
        addBoxFromSource({
          dataDir: join(dir, 'data'),
          cacheDir: join(dir, 'cache'),
          source: origin.url('/evil.json'),
          force: true,
        }),
      )
      expect(error.message.startsWith(`invalid box name ${JSON.stringify(name)}: `), error.message).toBe(true)
    }
    expect(origin.requests.filter((r) => r.path === '/evil.box')).toEqual([])
    await expectNothingLeft(join(dir, 'data'), join(dir, 'cache'))
  })
})

describe('updates across architectures', () => {
  it('does not update a box for this host to a newer version offered only as architecture "unknown"', async () => {
    const origin = await server()
    const host = hostArchitecture()
    const dataDir = join(dir, 'data')
    const cacheDir = join(dir, 'cache')
    const versions: unknown[] = []
    const publish = async (version: string, architecture: string) => {
      const data = await readFile(await makeBoxFile(dir, {metadata: {provider: 'qemu'}, imageBytes: 64 * 1024}))
      origin.files.set(`/w-${version}-${architecture}.box`, {data, etag: `"${version}"`})
      const entry = {name: 'qemu', url: `/w-${version}-${architecture}.box`, architecture, default_architecture: true}
      const existing = versions.find((v) => (v as {version: string}).version === version) as
        {providers: unknown[]} | undefined
      if (existing) existing.providers.push({...entry, default_architecture: false})
      else versions.push({version, providers: [entry]})
      origin.files.set('/w.json', {
        data: Buffer.from(JSON.stringify({name: 'acme/w', versions})),
        contentType: 'application/json',
      })
    }
    await publish('1.0.0', host)
    await addBoxFromSource({dataDir, cacheDir, source: origin.url('/w.json'), convertFor: []})
    await publish('2.0.0', 'unknown')

    expect(await checkOutdated({dataDir})).toMatchObject([{installed: '1.0.0', latest: '1.0.0', status: 'up-to-date'}])
    expect(await updateBoxes({dataDir, cacheDir, targets: [{name: 'acme/w'}]})).toMatchObject([
      {status: 'up-to-date', from: '1.0.0', to: '1.0.0'},
    ])
    expect(origin.requests.filter((r) => r.path.startsWith('/w-2.0.0'))).toEqual([])

    // Once 2.0.0 is offered for this host too, it is an update.
    await publish('2.0.0', host)
    expect(await checkOutdated({dataDir})).toMatchObject([{latest: '2.0.0', status: 'outdated'}])
    expect(await updateBoxes({dataDir, cacheDir, targets: [{name: 'acme/w'}]})).toMatchObject([
      {status: 'updated', from: '1.0.0', to: '2.0.0'},
    ])
    expect(origin.requests.filter((r) => r.path.startsWith('/w-2.0.0')).map((r) => r.path)).toEqual([
      `/w-2.0.0-${host}.box`,
    ])
  })
})

describe('chunked responses', () => {
  it('downloads a body without Content-Length: progress counts bytes with no total, the checksum holds', async () => {
    const origin = await server()
    const data = randomBytes(2 * 1024 * 1024 + 7)
    origin.files.set('/c.box', {data, etag: '"c"', chunked: true})
    const seen: DownloadProgress[] = []
    const dest = join(dir, 'c.box')
    const result = await download({
      url: origin.url('/c.box'),
      dest,
      checksum: {type: 'sha256', value: sha256(data)},
      onProgress: (p) => seen.push(p),
    })
    expect(result.bytes).toBe(data.length)
    expect((await readFile(dest)).equals(data)).toBe(true)
    expect(seen.length).toBeGreaterThan(1)
    // While it runs nothing claims a total; at the end the size is known.
    expect(seen.slice(0, -1).every((p) => p.total === undefined && p.eta === undefined)).toBe(true)
    expect(seen.at(-1)).toMatchObject({received: data.length, total: data.length})
  })

  it('resumes a chunked body cut short (no Content-Length, but the chunked framing tells the end was missed)', async () => {
    const origin = await server()
    const data = randomBytes(2 * 1024 * 1024)
    origin.files.set('/c.box', {data, etag: '"c"', chunked: true})
    origin.plan.push({cutAfter: 512 * 1024})
    const dest = join(dir, 'c.box')
    await download({url: origin.url('/c.box'), dest, checksum: {type: 'sha256', value: sha256(data)}, retryDelayMs: 10})
    expect((await readFile(dest)).equals(data)).toBe(true)
    expect(origin.requests.map((r) => r.range)).toEqual([undefined, `bytes=${512 * 1024}-`])
  })
})

describe('resume keyed by URL and checksum', () => {
  const half = 1024 * 1024
  let origin: TestServer
  let data: Buffer
  let dest: string
  beforeEach(async () => {
    origin = await server()
    data = randomBytes(2 * half)
    origin.files.set('/r.box', {data, etag: '"r"'})
    dest = join(dir, 'r.box')
    // A first run is cut half-way and gives up, leaving a part of `half` bytes.
    origin.plan.push({cutAfter: half}, {status: 503}, {status: 503})
  })

  const leavePart = (checksum?: string) =>
    rejection(
      download({
        url: origin.url('/r.box'),
        dest,
        checksum: checksum ? {type: 'sha256', value: checksum} : undefined,
        retries: 1,
        retryDelayMs: 10,
      }),
    )

  it('resumes for the same URL and checksum', async () => {
    await leavePart(sha256(data))
    expect((await readFile(partPath(dest))).length).toBe(half)
    const result = await download({
      url: origin.url('/r.box'),
      dest,
      checksum: {type: 'sha256', value: sha256(data)},
      retryDelayMs: 10,
    })
    expect(result.resumedFrom).toBe(half)
    expect(origin.requests.at(-1)!.range).toBe(`bytes=${half}-`)
  })

  it('starts afresh when the expected checksum changed (the catalog now names another file)', async () => {
    const other = randomBytes(2 * half)
    await leavePart(sha256(other))
    const result = await download({
      url: origin.url('/r.box'),
      dest,
      checksum: {type: 'sha256', value: sha256(data)},
      retryDelayMs: 10,
    })
    expect(result.resumedFrom).toBe(0)
    expect(origin.requests.at(-1)!.range).toBeUndefined()
    expect((await readFile(dest)).equals(data)).toBe(true)
  })

  it('starts afresh when the part was fetched for a checksum and none is expected now', async () => {
    await leavePart(sha256(data))
    const unchecked = await download({url: origin.url('/r.box'), dest, retryDelayMs: 10})
    expect(unchecked.resumedFrom).toBe(0)
    expect(origin.requests.at(-1)!.range).toBeUndefined()
  })

  it('resumes a part fetched with no checksum for one given now: the digest still covers every byte', async () => {
    await leavePart()
    const checked = await download({
      url: origin.url('/r.box'),
      dest,
      checksum: {type: 'sha256', value: sha256(data)},
      retryDelayMs: 10,
    })
    expect(checked.resumedFrom).toBe(half)
    // And a part whose bytes do not make the file is caught at the end, not trusted: the
    // right checksum, the right length, other bytes on disk, resumed from there.
    origin.plan.push({cutAfter: half}, {status: 503}, {status: 503})
    await leavePart()
    await writeFile(partPath(dest), randomBytes(half))
    const wrong = await rejection(
      download({
        url: origin.url('/r.box'),
        dest,
        checksum: {type: 'sha256', value: sha256(data)},
        retryDelayMs: 10,
      }),
    )
    expect(origin.requests.at(-1)!.range).toBe(`bytes=${half}-`)
    expect(wrong.message).toBe(`checksum mismatch for ${origin.url('/r.box')}`)
  })

  it('starts afresh for another URL written to the same file', async () => {
    await leavePart(sha256(data))
    origin.files.set('/moved.box', {data, etag: '"r"'})
    const result = await download({
      url: origin.url('/moved.box'),
      dest,
      checksum: {type: 'sha256', value: sha256(data)},
      retryDelayMs: 10,
    })
    expect(result.resumedFrom).toBe(0)
  })
})

describe('HTTPS against a local CA', () => {
  let ca: TestCa
  let good: {key: string; cert: string}
  let wrongHost: {key: string; cert: string}
  let expired: {key: string; cert: string}
  let box: Buffer

  const cleanups: Array<() => Promise<void>> = []
  const tempDir = async (prefix: string) => {
    const made = await makeTempDir(prefix)
    cleanups.push(made.cleanup)
    return made.dir
  }
  afterAll(async () => {
    await Promise.all(cleanups.map((cleanup_) => cleanup_()))
  })

  beforeAll(async () => {
    ca = await makeTestCa(await tempDir('box-test-ca-'))
    ;[good, wrongHost, expired] = await Promise.all([
      ca.issue('localhost', {altNames: ['DNS:localhost', 'IP:127.0.0.1']}),
      ca.issue('other', {altNames: ['DNS:boxes.example.org']}),
      ca.issue('expired', {
        altNames: ['DNS:localhost', 'IP:127.0.0.1'],
        startDate: '20200101000000Z',
        endDate: '20200201000000Z',
      }),
    ])
    box = await readFile(
      await makeBoxFile(await tempDir('box-test-tls-box-'), {metadata: {provider: 'qemu', format: 'qcow2'}}),
    )
  })

  async function httpsCatalog(tls: {key: string; cert: string}): Promise<TestServer> {
    const origin = await server({tls})
    origin.files.set('/w.box', {data: box, etag: '"w"'})
    origin.files.set('/w.json', {
      data: Buffer.from(
        JSON.stringify({
          name: 'acme/w',
          versions: [
            {
              version: '2.0.0',
              providers: [{name: 'qemu', url: origin.url('/w.box'), checksum_type: 'sha256', checksum: sha256(box)}],
            },
          ],
        }),
      ),
      contentType: 'application/json',
    })
    return origin
  }

  const paths = () => ({dataDir: join(dir, 'data'), cacheDir: join(dir, 'cache')})

  it('adds from an HTTPS catalog when its CA is given (caCertFile), by IP and by name', async () => {
    const origin = await httpsCatalog(good)
    for (const host of ['127.0.0.1', 'localhost']) {
      const added = await addBoxFromSource({
        ...paths(),
        source: origin.url('/w.json', host),
        convertFor: [],
        force: true,
        downloadOptions: {caCertFile: ca.certFile},
      })
      expect(added.box).toMatchObject({name: 'acme/w', version: '2.0.0'})
    }
  })

  it('refuses a certificate no trusted CA signed, saying how to trust one, once, with nothing left', async () => {
    const origin = await httpsCatalog(good)
    const error = await rejection(
      addBoxFromSource({...paths(), name: 'w', source: origin.url('/w.box'), downloadOptions: {retryDelayMs: 10}}),
    )
    expect(error.message).toMatch(/^the TLS certificate of 127\.0\.0\.1:\d+ is not signed by a trusted CA \(\w+\)$/)
    expect(error.suggestions.join('\n')).toContain('--ca-cert FILE')
    expect(error.suggestions.join('\n')).toContain('NODE_EXTRA_CA_CERTS')
    // A certificate problem is not retried: one connection, no request.
    expect(origin.connections()).toBe(1)
    expect(origin.requests).toEqual([])
    await expectNothingLeft(paths().dataDir, paths().cacheDir)

    const catalogError = await rejection(loadCatalog(origin.url('/w.json')))
    expect(catalogError.message).toContain('is not signed by a trusted CA')
  })

  it('refuses a certificate for another host name', async () => {
    const origin = await httpsCatalog(wrongHost)
    const error = await rejection(
      addBoxFromSource({
        ...paths(),
        source: origin.url('/w.json', 'localhost'),
        downloadOptions: {caCertFile: ca.certFile},
      }),
    )
    expect(error.message).toBe(`the TLS certificate of localhost:${origin.port} is for another host name`)
    expect(error.detail).toContain('boxes.example.org')
    expect(origin.requests).toEqual([])
    await expectNothingLeft(paths().dataDir, paths().cacheDir)
  })

  it('refuses an expired certificate, naming it expired', async () => {
    const origin = await httpsCatalog(expired)
    const error = await rejection(
      addBoxFromSource({
        ...paths(),
        name: 'w',
        source: origin.url('/w.box'),
        downloadOptions: {caCertFile: ca.certFile, retryDelayMs: 10},
      }),
    )
    expect(error.message).toBe(`the TLS certificate of 127.0.0.1:${origin.port} has expired`)
    expect(error.suggestions.join('\n')).toContain("this host's clock")
    expect(origin.connections()).toBe(1)
    await expectNothingLeft(paths().dataDir, paths().cacheDir)
  })

  it('refuses a CA file that is missing or holds no certificate, before any request', async () => {
    const origin = await httpsCatalog(good)
    const missing = await rejection(
      download({url: origin.url('/w.box'), dest: join(dir, 'x.box'), caCertFile: join(dir, 'nope.pem')}),
    )
    expect(missing.message).toMatch(/^cannot read the CA certificate file .*nope\.pem: ENOENT/)
    const notPem = join(dir, 'ca.der')
    await writeFile(notPem, randomBytes(64))
    const garbage = await rejection(download({url: origin.url('/w.box'), dest: join(dir, 'x.box'), caCertFile: notPem}))
    expect(garbage.message).toBe(`${notPem} holds no PEM certificate (no "-----BEGIN CERTIFICATE-----" line)`)
    expect(origin.connections()).toBe(0)
    expect(existsSync(partPath(join(dir, 'x.box')))).toBe(false)
  })

  it("keeps trusting Node's CAs and NODE_EXTRA_CA_CERTS's next to the given one (the mirror may redirect elsewhere)", async () => {
    const {rootCertificates} = await import('node:tls')
    const {requestOptions} = await import('../../src/lib/store/http.js')
    const other = await makeTestCa(await tempDir('box-test-ca2-'), 'another test CA')
    const saved = process.env.NODE_EXTRA_CA_CERTS
    process.env.NODE_EXTRA_CA_CERTS = other.certFile
    try {
      const options = await requestOptions({caCertFile: ca.certFile})
      const trusted = options.https!.certificateAuthority as string[]
      expect(trusted.slice(0, rootCertificates.length)).toEqual([...rootCertificates])
      expect(trusted.slice(rootCertificates.length)).toEqual([
        await readFile(other.certFile, 'utf8'),
        await readFile(ca.certFile, 'utf8'),
      ])
    } finally {
      if (saved === undefined) delete process.env.NODE_EXTRA_CA_CERTS
      else process.env.NODE_EXTRA_CA_CERTS = saved
    }
  })
})

describe('downloadPath', () => {
  it('names the file by the URL alone: Content-Disposition or the URL path never choose it', () => {
    const path = downloadPath('/cache', 'https://example.org/../../etc/passwd.box')
    expect(path).toMatch(/^\/cache\/downloads\/[0-9a-f]{64}\.box$/)
  })
})
