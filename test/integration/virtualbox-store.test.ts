/**
 * Boxes built by box (libvirt format) for VirtualBox machines, through the store: converted
 * on `box add` when VBoxManage is on PATH, else on the first `up` of a VirtualBox machine;
 * `box remove` takes the box's base VM out of VirtualBox. VBoxManage is the STAND-IN
 * (test/fixtures/vboxmanage-standin); qemu-img, tar and the CLI are real.
 */
import {existsSync} from 'node:fs'
import {mkdir, readFile, readdir, writeFile} from 'node:fs/promises'
import {delimiter, join} from 'node:path'

import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {writeBoxArchive} from '../../src/lib/box/archive.js'
import type {ResolvedMachine} from '../../src/lib/boxfile/types.js'
import {machineDir, type MachineContext} from '../../src/lib/machine/context.js'
import {destroyMachine} from '../../src/lib/machine/destroy.js'
import {upMachine} from '../../src/lib/machine/up.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {createProgress} from '../../src/lib/core/progress.js'
import {addBoxFromFile, convertStoredBox} from '../../src/lib/store/import.js'
import {listBoxes} from '../../src/lib/store/query.js'
import {removeBox} from '../../src/lib/store/remove.js'
import {baseVmName, readVirtualBoxRecord} from '../../src/providers/virtualbox/index.js'
import {makeTempDir} from '../fixtures/boxes.js'

const STANDIN_DIR = new URL('../fixtures/vboxmanage-standin', import.meta.url).pathname
const CLI = process.env.BOX_TEST_CLI ?? join(PROJECT_ROOT, 'bin', 'run.js')
const PATH_WITHOUT_STANDIN = process.env.PATH ?? ''

let dir: string
let cleanup: () => Promise<void>
let dataDir: string
let libvirtBox: string
const savedEnv = {PATH: process.env.PATH, state: process.env.VBOXMANAGE_STANDIN_STATE, data: process.env.BOX_DATA_DIR}

function restore(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name]
  else process.env[name] = value
}

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-vbox-store-'))
  dataDir = join(dir, 'data')
  process.env.VBOXMANAGE_STANDIN_STATE = join(dir, 'standin')
  process.env.PATH = `${STANDIN_DIR}${delimiter}${PATH_WITHOUT_STANDIN}`
  // providerFor('virtualbox') keeps base VMs under the data dir.
  process.env.BOX_DATA_DIR = dataDir
  const source = join(dir, 'box-src')
  await mkdir(source)
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(source, 'box.img'), '64M'])
  await writeFile(
    join(source, 'metadata.json'),
    JSON.stringify({provider: 'libvirt', format: 'qcow2', virtual_size: 1}),
  )
  await writeFile(join(source, 'Vagrantfile'), 'Vagrant.configure("2") do |config|\nend\n')
  libvirtBox = join(dir, 'worker.box')
  await writeBoxArchive({
    sourceDir: source,
    entries: ['metadata.json', 'box.img', 'Vagrantfile'],
    output: libvirtBox,
    compression: 'gzip',
  })
})
afterEach(async () => {
  restore('PATH', savedEnv.PATH)
  restore('VBOXMANAGE_STANDIN_STATE', savedEnv.state)
  restore('BOX_DATA_DIR', savedEnv.data)
  await cleanup()
})

async function box(path: string, ...args: string[]) {
  const result = await execa('node', [CLI, ...args], {
    reject: false,
    env: {PATH: path, BOX_DATA_DIR: dataDir, BOX_CACHE_DIR: join(dir, 'cache'), NO_COLOR: '1'},
    stdin: 'ignore',
    timeout: 120_000,
  })
  return {exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr)}
}

/** VBoxManage calls that change something (state queries left out). */
async function changingCalls(): Promise<string[][]> {
  const text = await readFile(join(dir, 'standin', 'argv.jsonl'), 'utf8').catch(() => '')
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as string[])
    .filter((argv) => argv[0] !== 'showvminfo' && argv[0] !== 'list')
}

async function storedProviders(name: string, version: string): Promise<string[]> {
  return (await listBoxes(dataDir, {name}))
    .filter((stored) => stored.version === version)
    .map((stored) => stored.provider)
}

async function imageInfo(image: string): Promise<{format: string; 'virtual-size': number}> {
  return JSON.parse((await execa('qemu-img', ['info', '--output=json', image])).stdout)
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise
  } catch (error) {
    return error as Error
  }
  throw new Error('expected a rejection')
}

const web: ResolvedMachine = {
  name: 'web',
  box: 'worker',
  provider: 'virtualbox',
  cpus: 1,
  memoryMiB: 512,
  resnap: 'always',
  forwardedPorts: [],
  syncedFolders: [],
  provisioners: [],
  ssh: {forwardAgent: false},
  directorPort: 8443,
}

describe('box add of a libvirt box', () => {
  it('with VBoxManage on PATH: stores a VDI copy for VirtualBox too; without it: the libvirt box only', async () => {
    const added = await box(process.env.PATH!, 'add', 'worker', libvirtBox, '--box-version', '1.0.0')
    expect(added.exitCode, added.stderr).toBe(0)
    expect(added.stdout).toMatch(
      /^Converted it for VirtualBox \(provider: virtualbox\): worker 1\.0\.0 \(virtualbox\), /m,
    )
    expect(added.stderr).toMatch(/✔ Converting worker 1\.0\.0 for VirtualBox \(qcow2 → VDI\)/)
    expect(await storedProviders('worker', '1.0.0')).toEqual(['libvirt', 'virtualbox'])
    const copy = join(dataDir, 'boxes', 'worker', '1.0.0', 'virtualbox')
    expect((await readdir(copy)).sort()).toEqual(['.box-store.json', 'Vagrantfile', 'box.vdi', 'metadata.json'])
    expect(await imageInfo(join(copy, 'box.vdi'))).toMatchObject({format: 'vdi', 'virtual-size': 64 << 20})
    expect(JSON.parse(await readFile(join(copy, 'metadata.json'), 'utf8'))).toEqual({
      provider: 'virtualbox',
      format: 'vdi',
      virtual_size: 1,
      converted_from: 'libvirt',
    })

    const plain = await box(PATH_WITHOUT_STANDIN, 'add', 'worker', libvirtBox, '--box-version', '2.0.0')
    expect(plain.exitCode, plain.stderr).toBe(0)
    expect(plain.stdout).not.toContain('Converted')
    expect(await storedProviders('worker', '2.0.0')).toEqual(['libvirt'])
  })

  it('an installed copy is replaced with --force, and kept (said so) without it', async () => {
    await addBoxFromFile({dataDir, name: 'worker', file: libvirtBox, convertFor: ['virtualbox']})
    const copy = join(dataDir, 'boxes', 'worker', '0', 'virtualbox', 'box.vdi')
    const before = await readFile(join(copy, '..', '.box-store.json'), 'utf8')
    const infoLines: string[] = []
    const progress = {...createProgress({silent: true}), info: (line: string) => infoLines.push(line)}
    const again = await addBoxFromFile({
      dataDir,
      name: 'worker',
      file: libvirtBox,
      version: '0',
      force: true,
      convertFor: ['virtualbox'],
      progress,
    })
    expect(again.converted.map((stored) => stored.provider)).toEqual(['virtualbox'])
    expect(await readFile(join(copy, '..', '.box-store.json'), 'utf8')).not.toBe(before)
    await removeBox({dataDir, name: 'worker', version: '0', provider: 'libvirt'})
    const kept = await addBoxFromFile({dataDir, name: 'worker', file: libvirtBox, convertFor: ['virtualbox'], progress})
    expect(kept.converted).toEqual([])
    expect(infoLines).toEqual(['Keeping the installed worker 0 (virtualbox) for virtualbox'])
  })
})

describe('a VirtualBox machine of a libvirt box added without VirtualBox', () => {
  let context: MachineContext
  beforeEach(async () => {
    context = {
      projectDir: join(dir, 'project'),
      dataDir,
      cacheDir: join(dir, 'cache'),
      progress: createProgress({silent: true}),
    }
    await mkdir(context.projectDir, {recursive: true})
    await addBoxFromFile({dataDir, name: 'worker', version: '1.0.0', file: libvirtBox})
    expect(await storedProviders('worker', '1.0.0')).toEqual(['libvirt'])
  })

  it('first up converts the box once (locked: concurrent callers share it) and builds the base VM around the VDI', async () => {
    const [libvirt] = await listBoxes(dataDir, {name: 'worker'})
    const [one, two] = await Promise.all(
      [1, 2].map(() => convertStoredBox({dataDir, box: libvirt!, hostProvider: 'virtualbox'})),
    )
    expect(one!.path).toBe(two!.path)
    expect(one!.metadata).toMatchObject({provider: 'virtualbox', converted_from: 'libvirt'})

    const error = await rejection(upMachine(context, web, {sshTimeoutMs: 500}))
    expect(error.message).toMatch(/ssh did not answer/)
    const base = baseVmName(one!.path)
    expect((await changingCalls()).slice(0, 4)).toEqual([
      ['createvm', '--name', base, '--ostype', 'Linux_64', '--basefolder', join(dataDir, 'virtualbox'), '--register'],
      ['modifyvm', base, '--memory', '1024', '--nic1', 'nat', '--nictype1', 'virtio', '--rtcuseutc', 'on'],
      ['storagectl', base, '--name', 'IDE', '--add', 'ide', '--controller', 'PIIX4'],
      [
        'storageattach',
        base,
        '--storagectl',
        'IDE',
        '--port',
        '0',
        '--device',
        '0',
        '--type',
        'hdd',
        '--medium',
        join(one!.path, 'box.vdi'),
      ],
    ])
    await destroyMachine(context, web)
  })

  it('up converts on its own; remove is refused while the machine exists, by VirtualBox while its clone hangs from the base; after destroy it removes both and the base VM', async () => {
    const error = await rejection(upMachine(context, web, {sshTimeoutMs: 500}))
    expect(error.message).toMatch(/ssh did not answer/)
    expect(await storedProviders('worker', '1.0.0')).toEqual(['libvirt', 'virtualbox'])
    const record = await readVirtualBoxRecord(machineDir(context.projectDir, 'web'))
    const copy = join(dataDir, 'boxes', 'worker', '1.0.0', 'virtualbox')
    expect(record!.base).toBe(baseVmName(copy))

    expect((await rejection(removeBox({dataDir, name: 'worker'}))).message).toBe(
      'cannot remove worker: a machine uses it',
    )
    // --force skips box's own check; VirtualBox still refuses to delete a base with a linked clone.
    const refused = await rejection(removeBox({dataDir, name: 'worker', force: true}))
    expect(refused.message).toBe(`VirtualBox still uses the base VM ${record!.base} of this box`)
    expect((refused as {detail?: string}).detail).toMatch(/Cannot close medium .* because it has 1 child media/)
    expect(await storedProviders('worker', '1.0.0')).toEqual(['libvirt', 'virtualbox'])

    await destroyMachine(context, web)
    const removed = await removeBox({dataDir, name: 'worker'})
    expect(removed.map((stored) => stored.provider).sort()).toEqual(['libvirt', 'virtualbox'])
    expect((await changingCalls()).filter((argv) => argv[0] === 'unregistervm').at(-1)).toEqual([
      'unregistervm',
      record!.base,
      '--delete',
    ])
    expect((await execa('VBoxManage', ['list', 'vms'])).stdout).not.toContain(record!.base)
    expect(existsSync(join(dataDir, 'virtualbox', `${record!.base}.json`))).toBe(false)
    expect(await listBoxes(dataDir)).toEqual([])
  })
})
