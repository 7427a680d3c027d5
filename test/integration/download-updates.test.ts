import {createHash} from 'node:crypto'
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {loadBoxfileIfFound} from '../../src/lib/boxfile/load.js'
import {addBoxFromSource} from '../../src/lib/store/add.js'
import {
  checkOutdated,
  ensureBoxInstalled,
  findInstalledBox,
  updateBoxes,
  updateTargets,
} from '../../src/lib/store/updates.js'
import {registerMachine} from '../../src/lib/store/machine-index.js'
import {planPrune, pruneBoxes} from '../../src/lib/store/prune.js'
import {addBoxFromFile} from '../../src/lib/store/import.js'
import {listBoxes, setCatalogUrl} from '../../src/lib/store/query.js'
import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'
import {startTestServer, type TestServer} from './download-server.js'

/** outdated / update / prune / ensureBoxInstalled against a catalog on a real local HTTP server. */

let server: TestServer
let dir: string
let dataDir: string
let cacheDir: string
let cleanup: () => Promise<void>
let catalog: {name: string; versions: Array<{version: string; providers: Array<Record<string, string>>}>}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex')
const versionsOf = async (name: string) =>
  (await listBoxes(dataDir, {name})).map((box) => `${box.version}/${box.provider}`)

async function publish(version: string, provider = 'qemu'): Promise<void> {
  const data = await readFile(await makeBoxFile(dir, {metadata: {provider}, imageBytes: 32 * 1024}))
  const path = `/worker-${version}-${provider}.box`
  server.files.set(path, {data, etag: `"${version}"`})
  let entry = catalog.versions.find((candidate) => candidate.version === version)
  if (!entry) catalog.versions.push((entry = {version, providers: []}))
  entry.providers.push({name: provider, url: server.url(path), checksum_type: 'sha256', checksum: sha256(data)})
  server.files.set('/catalog.json', {data: Buffer.from(JSON.stringify(catalog)), contentType: 'application/json'})
}

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-updates-'))
  dataDir = join(dir, 'data')
  cacheDir = join(dir, 'cache')
  server = await startTestServer()
  catalog = {name: 'org/worker', versions: []}
  await publish('1.0.0')
  await publish('1.1.0', 'libvirt')
})

afterEach(async () => {
  await server.close()
  await cleanup()
})

describe('outdated and update', () => {
  it('reports a newer catalog version, updates to it, then reports up to date', async () => {
    await addBoxFromSource({dataDir, cacheDir, source: server.url('/catalog.json'), version: '1.0.0'})
    expect(await checkOutdated({dataDir})).toEqual([
      {
        name: 'org/worker',
        provider: 'qemu',
        installed: '1.0.0',
        latest: '1.1.0',
        catalogUrl: server.url('/catalog.json'),
        status: 'outdated',
      },
    ])

    const results = await updateBoxes({dataDir, cacheDir, targets: [{name: 'org/worker'}]})
    // The qemu box is updated by a libvirt box: the same host provider runs both.
    expect(results).toMatchObject([
      {name: 'org/worker', provider: 'libvirt', from: '1.0.0', to: '1.1.0', status: 'updated'},
    ])
    expect(await versionsOf('org/worker')).toEqual(['1.1.0/libvirt', '1.0.0/qemu'])
    expect(await checkOutdated({dataDir})).toMatchObject([{installed: '1.1.0', latest: '1.1.0', status: 'up-to-date'}])
    expect(await updateBoxes({dataDir, cacheDir, targets: [{name: 'org/worker'}]})).toMatchObject([
      {status: 'up-to-date', to: '1.1.0'},
    ])
  })

  it('honours a constraint: an installed version outside it does not count', async () => {
    await publish('2.0.0')
    await addBoxFromSource({dataDir, cacheDir, source: server.url('/catalog.json')})
    expect(await versionsOf('org/worker')).toEqual(['2.0.0/qemu'])
    const results = await updateBoxes({dataDir, cacheDir, targets: [{name: 'org/worker', constraint: '< 2'}]})
    expect(results).toMatchObject([{status: 'updated', to: '1.1.0'}])
  })

  it('marks boxes added from a file as having no catalog, and says when a catalog cannot be read', async () => {
    await addBoxFromFile({dataDir, name: 'local', file: await makeBoxFile(dir), version: '1.0'})
    await addBoxFromFile({dataDir, name: 'gone', file: await makeBoxFile(dir), version: '1.0'})
    await setCatalogUrl(dataDir, 'gone', server.url('/gone.json'))
    const entries = await checkOutdated({dataDir})
    expect(entries).toContainEqual({name: 'local', provider: 'qemu', installed: '1.0', status: 'no-catalog'})
    expect(entries).toContainEqual(
      expect.objectContaining({
        name: 'gone',
        status: 'error',
        error: `HTTP 404 Not Found for ${server.url('/gone.json')}`,
      }),
    )
    expect(await updateBoxes({dataDir, cacheDir, targets: [{name: 'local'}]})).toEqual([
      {name: 'local', status: 'no-catalog'},
    ])
  })

  it('takes the targets from the Boxfile when there is one', async () => {
    const project = join(dir, 'project')
    await mkdir(project)
    await writeFile(
      join(project, 'Boxfile'),
      `box: org/worker\nbox_url: ${server.url('/catalog.json')}\nbox_version: "~> 1.0.0"\n`,
    )
    const targets = await updateTargets({dataDir, machines: (await loadBoxfileIfFound({cwd: project}))?.machines})
    expect(targets).toEqual([
      {name: 'org/worker', constraint: '~> 1.0.0', url: server.url('/catalog.json'), providers: ['qemu', 'libvirt']},
    ])
    const results = await updateBoxes({dataDir, cacheDir, targets})
    expect(results).toMatchObject([{status: 'updated', to: '1.0.0'}])
  })
})

describe('ensureBoxInstalled (what up does for a missing box)', () => {
  it('fetches a missing box from box_url within box_version, then finds it installed', async () => {
    const box = await ensureBoxInstalled({
      dataDir,
      cacheDir,
      name: 'org/worker',
      url: server.url('/catalog.json'),
      constraint: '< 1.1',
      hostProvider: 'qemu',
    })
    expect(box).toMatchObject({version: '1.0.0', provider: 'qemu'})
    const requests = server.requests.length
    expect(
      (
        await ensureBoxInstalled({
          dataDir,
          cacheDir,
          name: 'org/worker',
          url: server.url('/catalog.json'),
          constraint: '< 1.1',
          hostProvider: 'qemu',
        })
      ).version,
    ).toBe('1.0.0')
    expect(server.requests.length).toBe(requests)
    expect(
      await findInstalledBox(dataDir, {name: 'org/worker', constraint: '>= 1.1', providers: ['qemu', 'libvirt']}),
    ).toBeUndefined()
  })

  it('says how to get a missing box without box_url', async () => {
    await expect(ensureBoxInstalled({dataDir, cacheDir, name: 'nope', hostProvider: 'qemu'})).rejects.toThrow(
      'box nope is not installed',
    )
  })
})

describe('prune', () => {
  it('keeps the newest version per provider and every version a machine uses', async () => {
    for (const version of ['0.8', '0.9', '1.0'])
      await addBoxFromFile({dataDir, name: 'worker', file: await makeBoxFile(dir), version})
    await addBoxFromFile({
      dataDir,
      name: 'worker',
      file: await makeBoxFile(dir, {metadata: {provider: 'virtualbox'}}),
      version: '0.5',
    })
    const stateDir = join(dir, 'project', '.box', 'default')
    await mkdir(stateDir, {recursive: true})
    await registerMachine(dataDir, {
      id: 'm1',
      name: 'default',
      projectDir: join(dir, 'project'),
      stateDir,
      provider: 'qemu',
      box: {name: 'worker', version: '0.8', provider: 'qemu'},
    })

    const plan = await planPrune(dataDir)
    expect(plan.remove.map((box) => box.version)).toEqual(['0.9'])
    expect(
      plan.keep.map((kept) => [
        kept.box.version,
        kept.box.provider,
        kept.newest,
        kept.usedBy.map((machine) => machine.id),
      ]),
    ).toEqual([
      ['1.0', 'qemu', true, []],
      ['0.8', 'qemu', false, ['m1']],
      ['0.5', 'virtualbox', true, []],
    ])

    const dry = await pruneBoxes({dataDir, dryRun: true})
    expect(dry.removed).toEqual([])
    expect(await versionsOf('worker')).toHaveLength(4)

    const done = await pruneBoxes({dataDir})
    expect(done.removed.map((box) => box.version)).toEqual(['0.9'])
    expect(await versionsOf('worker')).toEqual(['1.0/qemu', '0.8/qemu', '0.5/virtualbox'])
  })

  it('counts qemu and libvirt boxes as one provider (QEMU runs both)', async () => {
    await addBoxFromFile({dataDir, name: 'worker', file: await makeBoxFile(dir), version: '1.0'})
    await addBoxFromFile({
      dataDir,
      name: 'worker',
      file: await makeBoxFile(dir, {metadata: {provider: 'libvirt'}}),
      version: '1.1',
    })
    expect((await planPrune(dataDir)).remove.map((box) => `${box.version}/${box.provider}`)).toEqual(['1.0/qemu'])
  })

  it('lets a version go once the machine using it is gone', async () => {
    for (const version of ['1', '2'])
      await addBoxFromFile({dataDir, name: 'worker', file: await makeBoxFile(dir), version})
    // A machine whose state directory no longer exists does not hold its box.
    await registerMachine(dataDir, {
      id: 'm2',
      name: 'default',
      projectDir: dir,
      stateDir: join(dir, 'destroyed'),
      provider: 'qemu',
      box: {name: 'worker', version: '1', provider: 'qemu'},
    })
    expect((await pruneBoxes({dataDir})).removed.map((box) => box.version)).toEqual(['1'])
  })
})
