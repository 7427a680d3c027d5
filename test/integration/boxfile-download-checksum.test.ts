/**
 * Boxfile box_download_checksum(_type) for a plain box URL, as `box up` uses it: the .box
 * from box_url is checked while it downloads from a real HTTP server on 127.0.0.1; a
 * mismatch fails `box up` naming both digests and leaves nothing in the store or the
 * download cache. (The failing up never gets as far as booting anything.)
 */
import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {readdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {parseBoxfile} from '../../src/lib/boxfile/load.js'
import {listBoxes} from '../../src/lib/store/query.js'
import {ensureBoxInstalled} from '../../src/lib/store/updates.js'
import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'
import {box, type CliEnv} from '../support/cli.js'
import {startTestServer, type TestServer} from './download-server.js'

let server: TestServer
let dir: string
let cleanup: () => Promise<void>
let env: CliEnv
let data: Buffer

const digest = (type: string, bytes: Buffer) => createHash(type).update(bytes).digest('hex')

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-boxfile-checksum-'))
  env = {cwd: dir, dataDir: join(dir, 'data'), cacheDir: join(dir, 'cache')}
  server = await startTestServer()
  data = await readFile(await makeBoxFile(dir, {metadata: {provider: 'qemu'}, imageBytes: 256 * 1024}))
  server.files.set('/worker.box', {data})
})

afterEach(async () => {
  await server.close()
  await cleanup()
})

const boxfile = (checksumLines: string[]) =>
  [`box: worker`, `box_url: ${server.url('/worker.box')}`, ...checksumLines, ''].join('\n')

describe('box_download_checksum', () => {
  it('installs the box when the download matches (sha1 named, sha256 told from its length)', async () => {
    for (const [name, lines] of [
      ['sha1', [`box_download_checksum: ${digest('sha1', data)}`, 'box_download_checksum_type: sha1']],
      ['sha256', [`box_download_checksum: ${digest('sha256', data).toUpperCase()}`]],
    ] as const) {
      const dataDir = join(dir, `data-${name}`)
      const [machine] = (await parseBoxfile(join(dir, 'Boxfile'), boxfile([...lines]))).machines
      expect(machine!.boxDownloadChecksum?.type).toBe(name)
      const installed = await ensureBoxInstalled({
        dataDir,
        cacheDir: env.cacheDir,
        name: machine!.box,
        url: machine!.boxUrl,
        checksum: machine!.boxDownloadChecksum,
        hostProvider: 'qemu',
      })
      expect(installed).toMatchObject({name: 'worker', provider: 'qemu'})
    }
    // Checked while streaming: each install fetched the file once, no second pass over the network.
    expect(
      server.requests.filter((request) => request.path === '/worker.box').map((request) => request.bytesSent),
    ).toEqual([data.length, data.length])
  })

  it('box up fails on a mismatch naming both digests, and stores nothing', async () => {
    const wrong = 'ab'.repeat(32)
    await writeFile(
      join(dir, 'Boxfile'),
      boxfile([`box_download_checksum: ${wrong}`, 'box_download_checksum_type: sha256']),
    )
    const up = await box(env, ['up'])
    expect(up.exitCode).not.toBe(0)
    expect(up.stderr).toContain(`checksum mismatch for ${server.url('/worker.box')}`)
    expect(up.stderr).toContain(`expected sha256 ${wrong}`)
    expect(up.stderr).toContain(`actual   sha256 ${digest('sha256', data)}`)
    expect(await listBoxes(env.dataDir)).toEqual([])
    const downloads = join(env.cacheDir, 'downloads')
    expect(existsSync(downloads) ? await readdir(downloads) : []).toEqual([])
    const status = await box(env, ['status', '--json'])
    expect(JSON.parse(status.stdout)).toEqual([expect.objectContaining({name: 'default', state: 'not_created'})])
  })

  it('box validate points at a checksum that cannot be checked', async () => {
    await writeFile(join(dir, 'Boxfile'), boxfile(['box_download_checksum: abcd']))
    const validate = await box(env, ['validate'])
    expect(validate.exitCode).toBe(2)
    expect(validate.stderr).toContain(
      `${join(dir, 'Boxfile')}:3:24: box_download_checksum: cannot tell the type of a 4-digit digest`,
    )
  })
})
