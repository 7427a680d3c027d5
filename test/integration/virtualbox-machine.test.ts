/**
 * A VirtualBox machine through machine.ts (up, status, halt, destroy, the global index)
 * against the VBoxManage STAND-IN: the same lifecycle code as QEMU machines, no real VM.
 * The stand-in runs no sshd, so `up` gets as far as waiting for ssh.
 */
import {mkdir, readFile, readdir, writeFile} from 'node:fs/promises'
import {delimiter, join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {execa} from 'execa'
import {afterEach, beforeEach, expect, it} from 'vitest'

import {writeBoxArchive} from '../../src/lib/box/archive.js'
import type {ResolvedMachine} from '../../src/lib/boxfile/types.js'
import {listMachines} from '../../src/lib/store/machine-index.js'
import {machineDir, type MachineContext} from '../../src/lib/machine/context.js'
import {destroyMachine} from '../../src/lib/machine/destroy.js'
import {haltMachine} from '../../src/lib/machine/halt.js'
import {upMachine} from '../../src/lib/machine/up.js'
import {machineStatus} from '../../src/lib/machine/status.js'
import {createProgress} from '../../src/lib/core/progress.js'
import {addBoxFromFile} from '../../src/lib/store/import.js'
import {readVirtualBoxRecord} from '../../src/providers/virtualbox/index.js'
import {makeTempDir} from '../fixtures/boxes.js'

const STANDIN_DIR = new URL('../fixtures/vboxmanage-standin', import.meta.url).pathname
const STANDIN = join(STANDIN_DIR, 'VBoxManage')

let dir: string
let cleanup: () => Promise<void>
let context: MachineContext
const savedEnv = {PATH: process.env.PATH, state: process.env.VBOXMANAGE_STANDIN_STATE, data: process.env.BOX_DATA_DIR}

function restore(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name]
  else process.env[name] = value
}

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-vbox-machine-'))
  const dataDir = join(dir, 'data')
  process.env.VBOXMANAGE_STANDIN_STATE = join(dir, 'standin')
  process.env.PATH = `${STANDIN_DIR}${delimiter}${savedEnv.PATH}`
  // providerFor('virtualbox') keeps base VMs under the data dir.
  process.env.BOX_DATA_DIR = dataDir
  context = {
    projectDir: join(dir, 'project'),
    dataDir,
    cacheDir: join(dir, 'cache'),
    progress: createProgress({silent: true}),
  }
  await mkdir(context.projectDir, {recursive: true})

  const source = join(dir, 'box-src')
  await mkdir(source)
  await writeFile(join(source, 'metadata.json'), JSON.stringify({provider: 'virtualbox'}))
  await writeFile(
    join(source, 'box.ovf'),
    '<Envelope><References><File ovf:id="file1" ovf:href="box-disk001.vmdk"/></References></Envelope>\n',
  )
  await writeFile(join(source, 'box-disk001.vmdk'), 'disk')
  await writeFile(join(source, 'Vagrantfile'), 'Vagrant.configure("2") do |config|\nend\n')
  const file = join(dir, 'demo.box')
  await writeBoxArchive({
    sourceDir: source,
    entries: ['metadata.json', 'box.ovf', 'box-disk001.vmdk', 'Vagrantfile'],
    output: file,
    compression: 'gzip',
  })
  await addBoxFromFile({dataDir, name: 'demo', version: '1.0.0', file})
})
afterEach(async () => {
  restore('PATH', savedEnv.PATH)
  restore('VBOXMANAGE_STANDIN_STATE', savedEnv.state)
  restore('BOX_DATA_DIR', savedEnv.data)
  await cleanup()
})

const web: ResolvedMachine = {
  name: 'web',
  box: 'demo',
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

async function calls(): Promise<string[][]> {
  const text = await readFile(join(dir, 'standin', 'argv.jsonl'), 'utf8')
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as string[])
    .filter((argv) => argv[0] !== 'showvminfo' && argv[0] !== 'list')
}

it('up makes a linked clone of the stored box, registers it globally; a VM that dies during the ssh wait is reported; destroy clears all', async () => {
  const up = upMachine(context, web, {sshTimeoutMs: 60_000}).then(
    () => new Error('up should have failed'),
    (error: Error) => error,
  )
  // Kill the "VM" once it runs, as a crashing VirtualBox process would.
  const stateDir = machineDir(context.projectDir, 'web')
  for (let i = 0; i < 200; i++) {
    const record = await readVirtualBoxRecord(stateDir)
    if (record && (await execa(STANDIN, ['list', 'runningvms'])).stdout.includes(record.vm)) {
      await execa(STANDIN, ['__standin', 'crash', record.vm])
      break
    }
    await sleep(100)
  }
  const error = await up
  expect(error.message).toBe('the machine stopped while box waited for ssh')

  const record = await readVirtualBoxRecord(stateDir)
  const vm = record!.vm
  const boxDir = join(context.dataDir, 'boxes', 'demo', '1.0.0', 'virtualbox')
  expect((await calls()).map((argv) => argv.slice(0, 2))).toEqual([
    ['import', join(boxDir, 'box.ovf')],
    ['snapshot', record!.base],
    ['clonevm', record!.base],
    ['modifyvm', vm],
    ['startvm', vm],
  ])
  // It had died: nothing to power off.
  expect((await calls()).some((argv) => argv[0] === 'controlvm')).toBe(false)

  const [entry] = await listMachines(context.dataDir)
  expect(entry).toMatchObject({
    name: 'web',
    provider: 'virtualbox',
    stateDir,
    box: {name: 'demo', version: '1.0.0', provider: 'virtualbox'},
  })
  expect((await machineStatus(context, web)).state).toBe('aborted')
  expect(await haltMachine(context, web)).toBe('not-running')

  expect(await destroyMachine(context, web)).toBe(true)
  expect(await listMachines(context.dataDir)).toEqual([])
  expect(await readdir(join(context.projectDir, '.box', 'machines'))).toEqual([])
  expect((await execa(STANDIN, ['list', 'vms'])).stdout).not.toContain(vm)
  expect((await machineStatus(context, web)).state).toBe('not_created')
}, 120_000)

it('up stops the VM again when ssh never answers', async () => {
  const error = await upMachine(context, web, {sshTimeoutMs: 1000}).then(
    () => new Error('up should have failed'),
    (failure: Error) => failure,
  )
  expect(error.message).toMatch(/ssh did not answer within/)
  const vm = (await readVirtualBoxRecord(machineDir(context.projectDir, 'web')))!.vm
  expect((await calls()).slice(-1)).toEqual([['controlvm', vm, 'poweroff']])
  expect((await machineStatus(context, web)).state).toBe('poweroff')
  await destroyMachine(context, web)
}, 120_000)
