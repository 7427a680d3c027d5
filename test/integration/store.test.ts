import {existsSync} from 'node:fs'
import {mkdir, readFile, readdir, rm, utimes, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {listMachines, machinesUsingBox, registerMachine, unregisterMachine} from '../../src/lib/store/machine-index.js'
import {addBoxFromFile} from '../../src/lib/store/import.js'
import {boxesDir, escapeBoxName, unescapeBoxName, validateBoxName} from '../../src/lib/store/layout.js'
import {findBox, getCatalogUrl, listBoxes, setCatalogUrl} from '../../src/lib/store/query.js'
import {removeBox} from '../../src/lib/store/remove.js'
import {makeBoxFile, makeTempDir, sha256File, writeRawTar} from '../fixtures/boxes.js'
import {rejection} from '../support/rejection.js'

let dir: string
let dataDir: string
let cleanup: () => Promise<void>

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-store-'))
  dataDir = join(dir, 'data')
})
afterEach(async () => {
  await cleanup()
})

/** The store's top level: only box directories, never scratch left behind. */
async function storeTopLevel(): Promise<string[]> {
  return (await readdir(boxesDir(dataDir)).catch(() => [])).sort()
}

describe('addBoxFromFile', () => {
  it('imports a box as NAME/VERSION/PROVIDER with the version from metadata.json', async () => {
    const file = await makeBoxFile(dir, {
      metadata: {provider: 'qemu', format: 'qcow2', box: {version: '1.2.3', user: 'box'}},
      compression: 'zstd',
    })
    const box = await addBoxFromFile({dataDir, name: 'org/worker', file})
    expect(box).toMatchObject({name: 'org/worker', version: '1.2.3', provider: 'qemu'})
    expect(box.path).toBe(join(dataDir, 'boxes', 'org-VAGRANTSLASH-worker', '1.2.3', 'qemu'))
    expect((await readdir(box.path)).sort()).toEqual(['.box-store.json', 'Vagrantfile', 'box.img', 'metadata.json'])
    expect(box.metadata.box?.user).toBe('box')
    expect(box.size).toBeGreaterThan(256 * 1024)
    expect(Date.parse(box.addedAt)).toBeGreaterThan(Date.now() - 60_000)
    expect(await storeTopLevel()).toEqual(['org-VAGRANTSLASH-worker'])
  })

  it('--box-version overrides metadata; no version anywhere means "0"', async () => {
    const file = await makeBoxFile(dir)
    expect((await addBoxFromFile({dataDir, name: 'a', file, version: '2.0'})).version).toBe('2.0')
    expect((await addBoxFromFile({dataDir, name: 'a', file})).version).toBe('0')
  })

  it('accepts a vagrant-libvirt box (provider libvirt)', async () => {
    const file = await makeBoxFile(dir, {metadata: {provider: 'libvirt', format: 'qcow2', virtual_size: 40}})
    const box = await addBoxFromFile({dataDir, name: 'generic/debian12', file})
    expect(box.provider).toBe('libvirt')
    expect(await findBox(dataDir, {name: 'generic/debian12', providers: ['qemu', 'libvirt']})).toMatchObject({
      provider: 'libvirt',
    })
  })

  it('missing metadata.json: clear error, nothing left in the store', async () => {
    const file = await makeBoxFile(dir, {metadata: null})
    const error = await rejection(addBoxFromFile({dataDir, name: 'broken', file}))
    expect(error.message).toMatch(/is not a box: it has no metadata\.json/)
    expect(await storeTopLevel()).toEqual([])
  })

  it('invalid metadata.json: names the problem, nothing left', async () => {
    const file = await makeBoxFile(dir, {metadata: {format: 'qcow2'}})
    const error = await rejection(addBoxFromFile({dataDir, name: 'broken', file}))
    expect(error.message).toMatch(/metadata\.json in .* is invalid/)
    expect(error.detail).toMatch(/provider/)
    expect(await storeTopLevel()).toEqual([])

    const notJson = await makeBoxFile(dir, {metadata: '{"provider": '})
    expect((await rejection(addBoxFromFile({dataDir, name: 'broken', file: notJson}))).message).toMatch(
      /not valid JSON/,
    )
    expect(await storeTopLevel()).toEqual([])
  })

  it('a hostile archive is refused and nothing is left', async () => {
    const file = await writeRawTar(join(dir, 'evil.box'), [
      {header: {name: 'metadata.json'}, content: '{"provider":"qemu"}'},
      {header: {name: 'box.img'}, content: 'disk'},
      {header: {name: 'escape', type: 'symlink', linkname: '../../../../outside'}},
    ])
    const error = await rejection(addBoxFromFile({dataDir, name: 'evil', file}))
    expect(error.message).toContain('refusing to extract entry "escape"')
    expect(await storeTopLevel()).toEqual([])
  })

  it('a qemu box without box.img is refused', async () => {
    const file = await writeRawTar(
      join(dir, 'nodisk.box'),
      [{header: {name: 'metadata.json'}, content: '{"provider":"qemu"}'}],
      'gzip',
    )
    expect((await rejection(addBoxFromFile({dataDir, name: 'nodisk', file}))).message).toMatch(/missing box\.img/)
    expect(await storeTopLevel()).toEqual([])
  })

  it('refuses a duplicate; --force replaces it', async () => {
    const first = await makeBoxFile(dir, {metadata: {provider: 'qemu', box: {version: '1.0.0', user: 'box'}}})
    const second = await makeBoxFile(dir, {metadata: {provider: 'qemu', box: {version: '1.0.0', user: 'box'}}})
    const box = await addBoxFromFile({dataDir, name: 'dup', file: first})
    const firstImage = await sha256File(join(box.path, 'box.img'))

    const stages: string[] = []
    const progress = {
      stage: (stageName: string) => (stages.push(stageName), {update() {}, done() {}, fail() {}}),
      info() {},
      warn() {},
      print() {},
    }
    const error = await rejection(addBoxFromFile({dataDir, name: 'dup', file: second, progress}))
    expect(error.message).toBe('box dup 1.0.0 (qemu) is already installed')
    expect(stages).toEqual([]) // refused from metadata.json alone, before extracting anything
    expect(error.suggestions.join(' ')).toMatch(/--force/)
    expect(await sha256File(join(box.path, 'box.img'))).toBe(firstImage)

    const replaced = await addBoxFromFile({dataDir, name: 'dup', file: second, force: true})
    expect(replaced.path).toBe(box.path)
    expect(await sha256File(join(box.path, 'box.img'))).not.toBe(firstImage)
    expect(await listBoxes(dataDir)).toHaveLength(1)
    expect(await storeTopLevel()).toEqual(['dup'])
  })

  it('a duplicate whose metadata.json is not first is still refused, after extraction', async () => {
    const file = await makeBoxFile(dir)
    await addBoxFromFile({dataDir, name: 'late', file})
    const metadataLast = await writeRawTar(
      join(dir, 'late.box'),
      [
        {header: {name: 'box.img'}, content: 'disk'},
        {header: {name: 'metadata.json'}, content: '{"provider":"qemu"}'},
      ],
      'zstd',
    )
    expect((await rejection(addBoxFromFile({dataDir, name: 'late', file: metadataLast}))).message).toBe(
      'box late 0 (qemu) is already installed',
    )
    expect(await storeTopLevel()).toEqual(['late'])
  })

  it('refuses a provider that does not match the metadata', async () => {
    const file = await makeBoxFile(dir)
    const error = await rejection(addBoxFromFile({dataDir, name: 'p', file, provider: 'virtualbox'}))
    expect(error.message).toMatch(/is a box for the qemu provider, not virtualbox/)
    expect(await storeTopLevel()).toEqual([])
  })

  it('an abort leaves nothing behind', async () => {
    const file = await makeBoxFile(dir, {imageBytes: 16 * 1024 * 1024, compression: 'zstd'})
    const controller = new AbortController()
    controller.abort()
    await expect(addBoxFromFile({dataDir, name: 'aborted', file, signal: controller.signal})).rejects.toThrow(
      /interrupted/,
    )
    expect(await storeTopLevel()).toEqual([])
  })

  it('sweeps scratch left by a crashed import (older than a day), not a running one', async () => {
    const stale = join(boxesDir(dataDir), '.tmp-crashed')
    const running = join(boxesDir(dataDir), '.tmp-running')
    await mkdir(join(stale, 'box'), {recursive: true})
    await mkdir(join(running, 'box'), {recursive: true})
    const twoDaysAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000)
    await utimes(stale, twoDaysAgo, twoDaysAgo)
    await addBoxFromFile({dataDir, name: 'fresh', file: await makeBoxFile(dir)})
    expect(await storeTopLevel()).toEqual(['.tmp-running', 'fresh'])
  })

  it('validates names, versions and sources', async () => {
    const file = await makeBoxFile(dir)
    for (const name of ['../evil', '/abs', 'a//b', 'a/../b', 'sp ace', '.hidden', '', 'x/']) {
      expect((await rejection(addBoxFromFile({dataDir, name, file}))).message).toMatch(/invalid box name/)
    }
    expect((await rejection(addBoxFromFile({dataDir, name: 'ok', file, version: '../1'}))).message).toMatch(
      /invalid box version/,
    )
    expect((await rejection(addBoxFromFile({dataDir, name: 'ok', file: join(dir, 'nope.box')}))).message).toMatch(
      /box file not found/,
    )
    expect(await storeTopLevel()).toEqual([])
    expect(() => validateBoxName('hashicorp/bionic64')).not.toThrow()
    expect(escapeBoxName('a/b')).toBe('a-VAGRANTSLASH-b')
    expect(unescapeBoxName('a-VAGRANTSLASH-b')).toBe('a/b')
  })
})

describe('listBoxes and findBox', () => {
  it('sorts by name, then newest version first (numeric-aware), then provider', async () => {
    const file = await makeBoxFile(dir)
    const libvirt = await makeBoxFile(dir, {metadata: {provider: 'libvirt'}})
    for (const [name, version] of [
      ['beta', '1.2.0'],
      ['alpha', '1.10.0'],
      ['alpha', '1.9.0'],
      ['alpha', '1.10.0-rc1'],
      ['beta', '10'],
      ['alpha', '2'],
    ]) {
      await addBoxFromFile({dataDir, name, file, version})
    }
    await addBoxFromFile({dataDir, name: 'alpha', file: libvirt, version: '1.9.0'})
    const listed = (await listBoxes(dataDir)).map((box) => `${box.name} ${box.version} ${box.provider}`)
    expect(listed).toEqual([
      'alpha 2 qemu',
      'alpha 1.10.0 qemu',
      'alpha 1.10.0-rc1 qemu',
      'alpha 1.9.0 libvirt',
      'alpha 1.9.0 qemu',
      'beta 10 qemu',
      'beta 1.2.0 qemu',
    ])

    expect(await findBox(dataDir, {name: 'alpha', providers: ['qemu']})).toMatchObject({version: '2'})
    expect(await findBox(dataDir, {name: 'alpha', version: '1.9.0', providers: ['qemu', 'libvirt']})).toMatchObject({
      provider: 'qemu',
    })
    expect(await findBox(dataDir, {name: 'alpha', version: '1.9.0', providers: ['libvirt', 'qemu']})).toMatchObject({
      provider: 'libvirt',
    })
    expect(await findBox(dataDir, {name: 'alpha', providers: ['virtualbox']})).toBeUndefined()
    expect(await findBox(dataDir, {name: 'gamma', providers: ['qemu']})).toBeUndefined()
  })

  it('findBox gives the metadata parsed, defaults included', async () => {
    const file = await makeBoxFile(dir, {
      metadata: {provider: 'qemu', box: {version: '1.0.0', user: 'box', kernel: 'box.img'}},
    })
    await addBoxFromFile({dataDir, name: 'k', file})
    const found = await findBox(dataDir, {name: 'k', providers: ['qemu']})
    expect(found?.metadata.box).toEqual({version: '1.0.0', user: 'box', kernel: 'box.img', kernel_args: ''})
  })

  it('an empty or missing store lists nothing; scratch directories are ignored', async () => {
    expect(await listBoxes(dataDir)).toEqual([])
    await mkdir(join(boxesDir(dataDir), '.tmp-leftover', 'box'), {recursive: true})
    expect(await listBoxes(dataDir)).toEqual([])
  })

  it('remembers a catalog URL per box', async () => {
    expect(await getCatalogUrl(dataDir, 'org/w')).toBeUndefined()
    await setCatalogUrl(dataDir, 'org/w', 'https://boxes.example.org/org/w.json')
    expect(await getCatalogUrl(dataDir, 'org/w')).toBe('https://boxes.example.org/org/w.json')
    expect(await readFile(join(dataDir, 'boxes', 'org-VAGRANTSLASH-w', 'catalog_url'), 'utf8')).toBe(
      'https://boxes.example.org/org/w.json\n',
    )
    expect(await listBoxes(dataDir)).toEqual([])
  })
})

describe('removeBox', () => {
  async function machineDir(name: string): Promise<string> {
    const stateDir = join(dir, 'project', '.box', name)
    await mkdir(stateDir, {recursive: true})
    return stateDir
  }

  it('refuses while a machine uses the box, naming the machine; allowed once it is gone', async () => {
    const file = await makeBoxFile(dir)
    await addBoxFromFile({dataDir, name: 'worker', file, version: '1.0.0'})
    const stateDir = await machineDir('default')
    await registerMachine(dataDir, {
      id: 'm-1',
      name: 'default',
      projectDir: join(dir, 'project'),
      stateDir,
      provider: 'qemu',
      box: {name: 'worker', version: '1.0.0', provider: 'qemu'},
    })

    const error = await rejection(removeBox({dataDir, name: 'worker'}))
    expect(error.message).toBe('cannot remove worker: a machine uses it')
    expect(error.detail).toContain(`default in ${join(dir, 'project')} (id m-1) uses worker 1.0.0 (qemu)`)
    expect(await listBoxes(dataDir)).toHaveLength(1)

    // The machine's folder was deleted by hand: it no longer holds the box.
    await rm(stateDir, {recursive: true})
    expect(await machinesUsingBox(dataDir, {name: 'worker'})).toEqual([])
    const removed = await removeBox({dataDir, name: 'worker'})
    expect(removed.map((box) => box.version)).toEqual(['1.0.0'])
    expect(await storeTopLevel()).toEqual([])
  })

  it('--force removes a box in use', async () => {
    const file = await makeBoxFile(dir)
    await addBoxFromFile({dataDir, name: 'worker', file})
    await registerMachine(dataDir, {
      id: 'm-2',
      name: 'default',
      projectDir: dir,
      stateDir: await machineDir('default'),
      provider: 'qemu',
      box: {name: 'worker', version: '0', provider: 'qemu'},
    })
    await removeBox({dataDir, name: 'worker', force: true})
    expect(await listBoxes(dataDir)).toEqual([])
  })

  it('a machine on another version does not block removing this one', async () => {
    const file = await makeBoxFile(dir)
    await addBoxFromFile({dataDir, name: 'worker', file, version: '1'})
    await addBoxFromFile({dataDir, name: 'worker', file, version: '2'})
    await registerMachine(dataDir, {
      id: 'm-3',
      name: 'default',
      projectDir: dir,
      stateDir: await machineDir('default'),
      provider: 'qemu',
      box: {name: 'worker', version: '2', provider: 'qemu'},
    })
    await removeBox({dataDir, name: 'worker', version: '1'})
    expect((await listBoxes(dataDir)).map((box) => box.version)).toEqual(['2'])
    await expect(removeBox({dataDir, name: 'worker', version: '2'})).rejects.toThrow(/a machine uses it/)
  })

  it('asks which one when several match; --all removes them all and the name directory', async () => {
    const file = await makeBoxFile(dir)
    await addBoxFromFile({dataDir, name: 'org/multi', file, version: '1.0'})
    await addBoxFromFile({dataDir, name: 'org/multi', file, version: '1.1'})
    await setCatalogUrl(dataDir, 'org/multi', 'https://example.org/multi.json')

    const error = await rejection(removeBox({dataDir, name: 'org/multi'}))
    expect(error.message).toMatch(/has 2 matching versions\/providers installed/)
    expect(error.detail).toBe('org/multi 1.1 (qemu)\norg/multi 1.0 (qemu)')

    await removeBox({dataDir, name: 'org/multi', version: '1.0'})
    expect(await getCatalogUrl(dataDir, 'org/multi')).toBe('https://example.org/multi.json')
    expect(existsSync(join(dataDir, 'boxes', 'org-VAGRANTSLASH-multi', '1.0'))).toBe(false)

    await addBoxFromFile({dataDir, name: 'org/multi', file, version: '1.0'})
    const removed = await removeBox({dataDir, name: 'org/multi', all: true})
    expect(removed.map((box) => box.version)).toEqual(['1.1', '1.0'])
    expect(await storeTopLevel()).toEqual([])
  })

  it('names what is installed when nothing matches', async () => {
    const file = await makeBoxFile(dir)
    await addBoxFromFile({dataDir, name: 'w', file, version: '1'})
    expect((await rejection(removeBox({dataDir, name: 'nope'}))).message).toBe('box nope is not installed')
    const error = await rejection(removeBox({dataDir, name: 'w', version: '9'}))
    expect(error.message).toBe('no installed box matches w 9')
    expect(error.detail).toContain('w 1 (qemu)')
  })
})

describe('global index', () => {
  const entry = (id: string, stateDir: string) => ({
    id,
    name: id,
    projectDir: dir,
    stateDir,
    provider: 'qemu',
    box: {name: 'b', version: '1', provider: 'qemu'},
  })

  it('registers, replaces by id, unregisters and prunes machines whose folder is gone', async () => {
    const alive = join(dir, 'alive')
    await mkdir(alive)
    await registerMachine(dataDir, entry('a', alive))
    await registerMachine(dataDir, entry('b', join(dir, 'gone')))
    await registerMachine(dataDir, {...entry('a', alive), name: 'renamed'})
    expect((await listMachines(dataDir)).map((machine) => machine.name)).toEqual(['b', 'renamed'])

    expect((await listMachines(dataDir, {prune: true})).map((machine) => machine.id)).toEqual(['a'])
    expect(JSON.parse(await readFile(join(dataDir, 'machines.json'), 'utf8')).machines).toHaveLength(1)
    expect(await unregisterMachine(dataDir, 'a')).toBe(true)
    expect(await unregisterMachine(dataDir, 'a')).toBe(false)
    expect(await listMachines(dataDir)).toEqual([])
    expect((await readdir(dataDir)).sort()).toEqual(['machines.json'])
  })

  it('loses no update under concurrent writers', async () => {
    await Promise.all(Array.from({length: 40}, (_, index) => registerMachine(dataDir, entry(`m${index}`, dir))))
    expect(await listMachines(dataDir)).toHaveLength(40)
    expect((await readdir(dataDir)).sort()).toEqual(['machines.json'])
  })

  it('loses no update when several processes write at once', async () => {
    const module = join(PROJECT_ROOT, 'src', 'lib', 'store', 'machine-index.ts')
    const writer = (process_: number) =>
      `const {registerMachine} = await import(${JSON.stringify(module)});` +
      `await Promise.all(Array.from({length: 10}, (_, i) => registerMachine(${JSON.stringify(dataDir)}, {id: 'p${process_}-' + i, name: 'm', projectDir: '/p', stateDir: '/p', provider: 'qemu', box: {name: 'b', version: '1', provider: 'qemu'}})))`
    await Promise.all(
      [0, 1, 2, 3].map((process_) =>
        execa('node', ['--import', 'tsx', '--input-type=module', '-e', writer(process_)], {cwd: PROJECT_ROOT}),
      ),
    )
    const ids = (await listMachines(dataDir)).map((machine) => machine.id)
    expect(ids).toHaveLength(40)
    expect(new Set(ids).size).toBe(40)
    expect((await readdir(dataDir)).sort()).toEqual(['machines.json'])
  })

  it('breaks a lock left by a dead process', async () => {
    await mkdir(dataDir, {recursive: true})
    await writeFile(join(dataDir, 'machines.json.lock'), '999999999\n')
    await registerMachine(dataDir, entry('x', dir))
    expect(await listMachines(dataDir)).toHaveLength(1)
  })

  it('a damaged index says so and how to recover', async () => {
    await mkdir(dataDir, {recursive: true})
    await writeFile(join(dataDir, 'machines.json'), '{"version": 1, "machines": [')
    const error = await rejection(listMachines(dataDir))
    expect(error.message).toMatch(/machine index .* is damaged/)
    expect(error.suggestions[0]).toMatch(/mv /)
  })
})
