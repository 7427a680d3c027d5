/**
 * `box add URL|CATALOG`, `box outdated`, `box update`, `box prune` as users run them: the
 * built CLI (dist/, which `npm test` builds first) against a real HTTP server on 127.0.0.1,
 * including Ctrl-C in the middle of a download and the resume that follows.
 */
import {createHash} from 'node:crypto'
import {readdir, readFile, stat} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {downloadPath} from '../../src/lib/store/add.js'
import {partPath} from '../../src/lib/store/download.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'
import {startTestServer, type TestServer} from './download-server.js'

/** BOX_TEST_CLI may point at another build's bin/run.js (a private copy while others rebuild dist/). */
const CLI = process.env.BOX_TEST_CLI ?? join(PROJECT_ROOT, 'bin', 'run.js')

let server: TestServer
let dir: string
let cleanup: () => Promise<void>
const env = () => ({BOX_DATA_DIR: join(dir, 'data'), BOX_CACHE_DIR: join(dir, 'cache'), NO_COLOR: '1'})
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex')

async function box(...args: string[]) {
  const result = await execa('node', [CLI, ...args], {reject: false, env: env(), stdin: 'ignore', timeout: 60_000})
  return {exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr)}
}

async function publish(catalog: {versions: unknown[]}, version: string, imageBytes: number): Promise<Buffer> {
  const data = await readFile(await makeBoxFile(dir, {metadata: {provider: 'qemu'}, imageBytes}))
  server.files.set(`/w-${version}.box`, {data, etag: `"${version}"`})
  catalog.versions.push({
    version,
    providers: [{name: 'qemu', url: server.url(`/w-${version}.box`), checksum_type: 'sha256', checksum: sha256(data)}],
  })
  server.files.set('/catalog.json', {data: Buffer.from(JSON.stringify(catalog)), contentType: 'application/json'})
  return data
}

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-dlcli-'))
  server = await startTestServer()
})
afterEach(async () => {
  await server.close()
  await cleanup()
})

describe('box add from the network', () => {
  it('adds from a catalog, reports outdated, updates, prunes', async () => {
    const catalog = {name: 'org/worker', versions: [] as unknown[]}
    await publish(catalog, '1.0.0', 64 * 1024)
    await publish(catalog, '1.1.0', 64 * 1024)

    const added = await box('add', server.url('/catalog.json'), '--box-version', '< 1.1', '--json')
    expect(added.exitCode, added.stderr).toBe(0)
    expect(JSON.parse(added.stdout)).toMatchObject({
      name: 'org/worker',
      version: '1.0.0',
      provider: 'qemu',
      catalogUrl: server.url('/catalog.json'),
    })

    const outdated = await box('outdated', '--json')
    expect(outdated.exitCode, outdated.stderr).toBe(0)
    expect(JSON.parse(outdated.stdout)).toMatchObject([
      {name: 'org/worker', installed: '1.0.0', latest: '1.1.0', status: 'outdated'},
    ])

    const updated = await box('update', 'org/worker')
    expect(updated.exitCode, updated.stderr).toBe(0)
    expect(updated.stdout).toContain('Updated org/worker (qemu): 1.0.0 → 1.1.0')

    const dry = await box('prune', '--dry-run')
    expect(dry.exitCode, dry.stderr).toBe(0)
    expect(dry.stdout).toContain('would remove org/worker 1.0.0 (qemu)')
    const pruned = await box('prune', '--json')
    expect(JSON.parse(pruned.stdout)).toMatchObject({dryRun: false, remove: [{version: '1.0.0'}]})
    const list = await box('list', '--json')
    expect(JSON.parse(list.stdout).map((b: {version: string}) => b.version)).toEqual(['1.1.0'])
  })

  it('fails with the URL and status, exit code 1, nothing stored', async () => {
    const result = await box('add', 'worker', server.url('/missing.box'))
    expect(result.exitCode).toBe(1)
    expect(result.stderr).toContain(`Error: HTTP 404 Not Found for ${server.url('/missing.box')}`)
    expect(JSON.parse((await box('list', '--json')).stdout)).toEqual([])
  })

  it('keeps the partial download on Ctrl-C and resumes it on the next add', async () => {
    const catalog = {name: 'org/worker', versions: [] as unknown[]}
    const data = await publish(catalog, '1.0.0', 6 * 1024 * 1024)
    const url = server.url('/w-1.0.0.box')
    const sent = 2 * 1024 * 1024
    // The first request sends 2 MiB, then nothing: Ctrl-C comes while box waits.
    server.plan.push({stallAfter: sent})
    const child = execa('node', [CLI, 'add', 'worker', url, '--checksum', sha256(data)], {
      reject: false,
      env: env(),
      stdin: 'ignore',
    })
    while (server.bytesSent() < sent) await new Promise((resolve) => setTimeout(resolve, 20))
    const part = partPath(downloadPath(join(dir, 'cache'), url))
    // Wait until box has written what it got (the write is what Ctrl-C must not lose).
    for (let i = 0; i < 100 && (await stat(part).catch(() => undefined))?.size !== sent; i++)
      await new Promise((resolve) => setTimeout(resolve, 50))
    child.kill('SIGINT')
    const interrupted = await child
    expect(interrupted.exitCode, String(interrupted.stderr)).toBe(130)
    expect(String(interrupted.stderr)).toContain('run the command again to resume')
    expect((await stat(part)).size).toBe(sent)

    const resumed = await box('add', 'worker', url, '--checksum', sha256(data))
    expect(resumed.exitCode, resumed.stderr).toBe(0)
    expect(resumed.stderr).toContain('resuming after')
    expect(server.requests[1].range).toBe(`bytes=${sent}-`)
    expect(server.bytesSent()).toBe(data.length)
    expect(await readdir(join(dir, 'cache', 'downloads'))).toEqual([])
  })
})
