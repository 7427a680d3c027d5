/**
 * The built CLI against real loopback HTTPS and HTTP servers, as users run it: a catalog
 * and boxes behind a local CA (made here with the openssl CLI), trusted with --ca-cert
 * (box add, outdated, update), with NODE_EXTRA_CA_CERTS, or with the Boxfile's
 * box_download_ca_cert (box up); refused with a clear error otherwise, nothing stored.
 * And a chunked download (no Content-Length): progress shows bytes with no total, and
 * --json keeps stderr quiet and stdout JSON.
 */
import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {readdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterAll, afterEach, beforeAll, beforeEach, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'
import {makeTestCa, type TestCa} from '../support/tls.js'
import {startTestServer, type TestServer} from './download-server.js'

const BIN = join(PROJECT_ROOT, 'bin', 'box')
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex')

let ca: TestCa
let caCleanup: () => Promise<void>
let good: {key: string; cert: string}
let wrongHost: {key: string; cert: string}
let expired: {key: string; cert: string}
let dir: string
let cleanup: () => Promise<void>
const servers: TestServer[] = []

async function box(args: string[], extraEnv: Record<string, string> = {}) {
  const result = await execa(BIN, args, {
    cwd: dir,
    reject: false,
    stdin: 'ignore',
    timeout: 120_000,
    env: {BOX_DATA_DIR: join(dir, 'data'), BOX_CACHE_DIR: join(dir, 'cache'), NO_COLOR: '1', ...extraEnv},
  })
  return {exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr)}
}

async function serve(options?: Parameters<typeof startTestServer>[0]): Promise<TestServer> {
  const server = await startTestServer(options)
  servers.push(server)
  return server
}

/** Publish version `version` of acme/worker on `server`, with its catalog at /worker.json. */
async function publish(server: TestServer, catalog: {name: string; versions: unknown[]}, version: string) {
  const data = await readFile(await makeBoxFile(dir, {metadata: {provider: 'qemu'}, imageBytes: 64 * 1024}))
  server.files.set(`/w-${version}.box`, {data, etag: `"${version}"`})
  catalog.versions.push({
    version,
    providers: [{name: 'qemu', url: server.url(`/w-${version}.box`), checksum_type: 'sha256', checksum: sha256(data)}],
  })
  server.files.set('/worker.json', {data: Buffer.from(JSON.stringify(catalog)), contentType: 'application/json'})
  return data
}

async function expectNothingStored(): Promise<void> {
  expect(JSON.parse((await box(['list', '--json'])).stdout)).toEqual([])
  const downloads = join(dir, 'cache', 'downloads')
  expect(existsSync(downloads) ? await readdir(downloads) : []).toEqual([])
}

beforeAll(async () => {
  const made = await makeTempDir('box-cli-ca-')
  caCleanup = made.cleanup
  ca = await makeTestCa(made.dir)
  good = await ca.issue('localhost', {altNames: ['DNS:localhost', 'IP:127.0.0.1']})
  wrongHost = await ca.issue('other', {altNames: ['DNS:boxes.example.org']})
  expired = await ca.issue('expired', {
    altNames: ['DNS:localhost', 'IP:127.0.0.1'],
    startDate: '20200101000000Z',
    endDate: '20200201000000Z',
  })
})
afterAll(async () => {
  await caCleanup()
})
beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-cli-tls-'))
})
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()))
  await cleanup()
})

describe('HTTPS with a local CA', () => {
  it('box add refuses the untrusted certificate, then takes it with --ca-cert; outdated and update take it too', async () => {
    const server = await serve({tls: good})
    const catalog = {name: 'acme/worker', versions: [] as unknown[]}
    await publish(server, catalog, '1.0.0')
    const url = server.url('/worker.json')

    const refused = await box(['add', url])
    expect(refused.exitCode).toBe(1)
    expect(refused.stderr).toMatch(/Error: the TLS certificate of 127\.0\.0\.1:\d+ is not signed by a trusted CA/)
    expect(refused.stderr).toContain('--ca-cert FILE')
    expect(refused.stderr).toContain('NODE_EXTRA_CA_CERTS=FILE')
    await expectNothingStored()

    const added = await box(['add', url, '--ca-cert', ca.certFile, '--json'])
    expect(added.exitCode, added.stderr).toBe(0)
    expect(added.stderr).toBe('')
    expect(JSON.parse(added.stdout)).toMatchObject({name: 'acme/worker', version: '1.0.0', catalogUrl: url})

    await publish(server, catalog, '1.1.0')
    const unchecked = await box(['outdated', '--json'])
    expect(JSON.parse(unchecked.stdout)).toMatchObject([
      {name: 'acme/worker', status: 'error', error: expect.stringContaining('not signed by a trusted CA')},
    ])
    const outdated = await box(['outdated', '--ca-cert', ca.certFile, '--json'])
    expect(JSON.parse(outdated.stdout)).toMatchObject([{name: 'acme/worker', latest: '1.1.0', status: 'outdated'}])
    const updated = await box(['update', 'acme/worker', '--ca-cert', ca.certFile])
    expect(updated.exitCode, updated.stderr).toBe(0)
    expect(updated.stdout).toContain('Updated acme/worker (qemu): 1.0.0 → 1.1.0')
  })

  it('box add trusts the CA named by NODE_EXTRA_CA_CERTS', async () => {
    const server = await serve({tls: good})
    const data = await publish(server, {name: 'acme/worker', versions: []}, '1.0.0')
    const added = await box(['add', 'w', server.url('/w-1.0.0.box', 'localhost'), '--checksum', sha256(data)], {
      NODE_EXTRA_CA_CERTS: ca.certFile,
    })
    expect(added.exitCode, added.stderr).toBe(0)
    expect(added.stdout).toContain('Added box w 0 (qemu)')
  })

  it('box add refuses an expired certificate of a trusted CA, naming it expired, exit 1, nothing stored', async () => {
    const server = await serve({tls: expired})
    await publish(server, {name: 'acme/worker', versions: []}, '1.0.0')
    const result = await box(['add', server.url('/worker.json'), '--ca-cert', ca.certFile])
    expect(result.exitCode).toBe(1)
    expect(result.stderr).toContain(`Error: the TLS certificate of 127.0.0.1:${server.port} has expired`)
    await expectNothingStored()
  })

  it('box add names a missing --ca-cert file as a usage error', async () => {
    const server = await serve({tls: good})
    await publish(server, {name: 'acme/worker', versions: []}, '1.0.0')
    const result = await box(['add', server.url('/worker.json'), '--ca-cert', join(dir, 'missing.pem')])
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toContain(`Error: cannot read the CA certificate file ${join(dir, 'missing.pem')}`)
    expect(server.connections()).toBe(0)
  })

  it("box up fetches box_url with the Boxfile's box_download_ca_cert, and says what is wrong with the certificate", async () => {
    // A certificate for another name: with the CA trusted the error is the name, without it the trust.
    const server = await serve({tls: wrongHost})
    await publish(server, {name: 'acme/worker', versions: []}, '1.0.0')
    await writeFile(join(dir, 'local-ca.pem'), await readFile(ca.certFile))
    const boxfile = (extra: string[]) =>
      writeFile(
        join(dir, 'Boxfile'),
        [`box: acme/worker`, `box_url: ${server.url('/worker.json', 'localhost')}`, ...extra, ''].join('\n'),
      )

    await boxfile([])
    const untrusted = await box(['up'])
    expect(untrusted.exitCode).toBe(1)
    expect(untrusted.stderr).toContain('is not signed by a trusted CA')

    await boxfile(['box_download_ca_cert: local-ca.pem'])
    const wrongName = await box(['up'])
    expect(wrongName.exitCode).toBe(1)
    expect(wrongName.stderr).toContain(
      `Error: the TLS certificate of localhost:${server.port} is for another host name`,
    )
    expect(wrongName.stderr).toContain('boxes.example.org')
    await expectNothingStored()

    await boxfile(['box_download_ca_cert: nowhere.pem'])
    const validate = await box(['validate'])
    expect(validate.exitCode).toBe(2)
    expect(validate.stderr).toContain(`box_download_ca_cert: no such file: ${join(dir, 'nowhere.pem')}`)
  })
})

describe('box update in a project', () => {
  it("trusts the Boxfile's box_download_ca_cert for box_url's catalog and boxes", async () => {
    const server = await serve({tls: good})
    await publish(server, {name: 'acme/worker', versions: []}, '1.0.0')
    await writeFile(join(dir, 'local-ca.pem'), await readFile(ca.certFile))
    await writeFile(
      join(dir, 'Boxfile'),
      ['box: acme/worker', `box_url: ${server.url('/worker.json')}`, 'box_download_ca_cert: local-ca.pem', ''].join(
        '\n',
      ),
    )
    const updated = await box(['update'])
    expect(updated.exitCode, updated.stderr).toBe(0)
    expect(updated.stdout).toContain('Updated acme/worker (qemu): none → 1.0.0')
    expect(JSON.parse((await box(['list', '--json'])).stdout)).toMatchObject([{name: 'acme/worker', version: '1.0.0'}])
  })
})

describe('a chunked download (no Content-Length)', () => {
  it('shows bytes received with no total, and --json prints only the JSON', async () => {
    const server = await serve()
    const data = await readFile(await makeBoxFile(dir, {metadata: {provider: 'qemu'}, imageBytes: 3 * 1024 * 1024}))
    server.files.set('/c.box', {data, etag: '"c"', chunked: true})

    const plain = await box(['add', 'c', server.url('/c.box'), '--checksum', sha256(data)])
    expect(plain.exitCode, plain.stderr).toBe(0)
    const lines = plain.stderr.split('\n')
    const detail = lines.filter((line) => line.startsWith('    '))
    expect(detail.length, plain.stderr).toBeGreaterThan(0)
    // "1.0 MB, 35 MB/s": a count, never "of <total> (<n> %)" or an ETA.
    for (const line of detail) expect(line).toMatch(/^ {4}\d+(\.\d)? [KMG]?B(, \d+(\.\d)? [KMG]?B\/s)?$/)
    expect(plain.stderr).toContain(`Downloading ${server.url('/c.box')}`)
    expect(plain.stderr).toMatch(/✔ Downloading .*: \d+(\.\d)? MB, .*sha256 verified/)

    const json = await box(['add', 'c', server.url('/c.box'), '--checksum', sha256(data), '--force', '--json'])
    expect(json.exitCode, json.stderr).toBe(0)
    expect(json.stderr).toBe('')
    expect(JSON.parse(json.stdout)).toMatchObject({name: 'c', provider: 'qemu'})
  })
})
