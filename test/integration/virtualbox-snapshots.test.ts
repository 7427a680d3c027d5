/**
 * VirtualBox snapshots (providers/virtualbox/snapshots.ts) against the VBoxManage STAND-IN:
 * the command lines box sends and the states the stand-in models after VirtualBox's
 * documentation. Unverified against a real VirtualBox (none can be installed here).
 */
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {createServer, type Server} from 'node:net'
import {delimiter, join} from 'node:path'

import {afterEach, beforeEach, expect, it} from 'vitest'

import {freePort} from '../../src/lib/core/ports.js'
import type {MachineHandle} from '../../src/providers/provider.js'
import {readVirtualBoxRecord, VirtualBoxProvider} from '../../src/providers/virtualbox/index.js'
import {showVmInfo} from '../../src/providers/virtualbox/vboxmanage.js'
import {makeTempDir} from '../fixtures/boxes.js'

const STANDIN_DIR = new URL('../fixtures/vboxmanage-standin', import.meta.url).pathname

let dir: string
let cleanup: () => Promise<void>
let provider: VirtualBoxProvider
const savedEnv = {PATH: process.env.PATH, state: process.env.VBOXMANAGE_STANDIN_STATE}
const servers: Server[] = []

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-vbox-snap-'))
  process.env.VBOXMANAGE_STANDIN_STATE = join(dir, 'standin')
  process.env.PATH = `${STANDIN_DIR}${delimiter}${savedEnv.PATH}`
  provider = new VirtualBoxProvider({basesDir: join(dir, 'data', 'virtualbox'), pollMs: 20})
})
afterEach(async () => {
  for (const server of servers.splice(0)) await new Promise((done) => server.close(done))
  process.env.PATH = savedEnv.PATH
  if (savedEnv.state === undefined) delete process.env.VBOXMANAGE_STANDIN_STATE
  else process.env.VBOXMANAGE_STANDIN_STATE = savedEnv.state
  await cleanup()
})

async function machine(): Promise<MachineHandle> {
  const boxDir = join(dir, 'data', 'boxes', 'demo', '1.0.0', 'virtualbox')
  await mkdir(boxDir, {recursive: true})
  await writeFile(join(boxDir, 'box-disk001.vmdk'), 'not really a vmdk')
  await writeFile(
    join(boxDir, 'box.ovf'),
    '<Envelope><References><File ovf:id="file1" ovf:href="box-disk001.vmdk"/></References></Envelope>\n',
  )
  await writeFile(join(boxDir, 'metadata.json'), JSON.stringify({provider: 'virtualbox'}))
  const forwardedPorts = [{guest: 80, host: await freePort(), hostIp: '127.0.0.1', protocol: 'tcp' as const}]
  return {
    name: 'web',
    stateDir: join(dir, 'project', '.box', 'machines', 'web'),
    box: {dir: boxDir, metadata: {provider: 'virtualbox'}},
    cpus: 2,
    memoryMiB: 1024,
    forwardedPorts,
  }
}

async function callsSince(mark: number): Promise<string[][]> {
  const text = await readFile(join(dir, 'standin', 'argv.jsonl'), 'utf8')
  return text
    .split('\n')
    .filter(Boolean)
    .slice(mark)
    .map((line) => JSON.parse(line) as string[])
    .filter((argv) => argv[0] !== 'showvminfo' && argv[0] !== 'list')
}
const callCount = async () =>
  (await readFile(join(dir, 'standin', 'argv.jsonl'), 'utf8')).split('\n').filter(Boolean).length

it('a running VM is snapshotted live; restoring powers it off, restores, resumes it and moves a taken port', async () => {
  const web = await machine()
  await provider.create(web)
  const started = await provider.start(web, {choice: {resnap: true}})
  const vm = (await readVirtualBoxRecord(web.stateDir))!.vm
  const snapshots = provider.snapshots

  let mark = await callCount()
  const saved = await snapshots.save(web, 'live1', {})
  expect(saved).toMatchObject({name: 'live1', kind: 'running', current: true})
  expect(await callsSince(mark)).toEqual([['snapshot', vm, 'take', 'live1', '--live']])

  // The snapshot's ssh port is taken by something else by the time it is restored.
  await provider.halt(web, {force: true, timeoutMs: 0})
  const squatter = createServer()
  await new Promise<void>((done) => squatter.listen(started.sshPort, '127.0.0.1', done))
  servers.push(squatter)
  mark = await callCount()
  const restored = await snapshots.restore(web, 'live1', {sshPort: started.sshPort})
  expect(restored.kind).toBe('running')
  expect(restored.started!.sshPort).not.toBe(started.sshPort)
  const calls = await callsSince(mark)
  expect(calls.slice(0, 2)).toEqual([
    ['snapshot', vm, 'restore', 'live1'],
    ['startvm', vm, '--type', 'headless'],
  ])
  expect(calls.slice(2)).toEqual([
    ['controlvm', vm, 'natpf1', 'delete', 'ssh'],
    ['controlvm', vm, 'natpf1', `ssh,tcp,127.0.0.1,${restored.started!.sshPort},,22`],
  ])
  expect((await showVmInfo(vm)).get('VMState')).toBe('running')
  expect(restored.started!.forwardedPorts).toEqual(web.forwardedPorts)
  await provider.destroy(web)
})

it('a halted VM gets a disk snapshot; restore leaves it halted; list and delete go through VBoxManage', async () => {
  const web = await machine()
  await provider.create(web)
  const vm = (await readVirtualBoxRecord(web.stateDir))!.vm
  const snapshots = provider.snapshots
  expect(await snapshots.save(web, 'disk1', {})).toMatchObject({kind: 'disk'})
  await provider.start(web, {choice: {resnap: true}})
  expect(await snapshots.save(web, 'live2', {})).toMatchObject({kind: 'running', parent: 'disk1'})
  expect((await snapshots.list(web)).map((s) => [s.name, s.kind, s.current])).toEqual([
    ['disk1', 'disk', false],
    ['live2', 'running', true],
  ])
  await expect(snapshots.save(web, 'disk1', {})).rejects.toThrow('machine web already has a snapshot named "disk1"')

  const mark = await callCount()
  expect(await snapshots.restore(web, 'disk1', {})).toEqual({kind: 'disk'})
  expect(await callsSince(mark)).toEqual([
    ['controlvm', vm, 'poweroff'],
    ['snapshot', vm, 'restore', 'disk1'],
  ])
  expect(await provider.state(web)).toBe('poweroff')
  expect((await snapshots.list(web)).find((s) => s.current)?.name).toBe('disk1')

  expect(await snapshots.delete(web, 'disk1')).toEqual({layerKept: false})
  expect((await snapshots.list(web)).map((s) => s.name)).toEqual(['live2'])
  await expect(snapshots.restore(web, 'disk1', {})).rejects.toThrow('machine web has no snapshot named "disk1"')
  await provider.destroy(web)
})
