/**
 * The snapshot chain of a halted QEMU machine (providers/qemu/snapshot-chain.ts) with the real
 * qemu-img on small images: no guest runs, so these check the files and the index.
 */
import {mkdir, readFile, readdir, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterEach, beforeEach, expect, it} from 'vitest'

import type {MachineHandle} from '../../src/providers/provider.js'
import {QemuSnapshots, settleDisk} from '../../src/providers/qemu/snapshot-chain.js'
import {makeTempDir} from '../fixtures/boxes.js'

let dir: string
let cleanup: () => Promise<void>
let machine: MachineHandle
let snapshots: QemuSnapshots

const backing = async (file: string) =>
  JSON.parse((await execa('qemu-img', ['info', '--output=json', file])).stdout)['backing-filename'] as
    string | undefined
const chain = async (file: string) =>
  (
    JSON.parse((await execa('qemu-img', ['info', '--backing-chain', '--output=json', file])).stdout) as Array<{
      filename: string
    }>
  ).map((layer) => layer.filename)
/** Write 4 KiB of `byte` at `offset` into the machine's disk, as a guest would. */
const write = (byte: string, offset: number) =>
  execa('qemu-io', ['-f', 'qcow2', '-c', `write -P ${byte} ${offset} 4k`, join(machine.stateDir, 'disk.qcow2')])
const read = async (byte: string, offset: number) =>
  (
    await execa(
      'qemu-io',
      ['-f', 'qcow2', '-c', `read -P ${byte} ${offset} 4k`, join(machine.stateDir, 'disk.qcow2')],
      {reject: false},
    )
  ).stdout.includes('Pattern verification failed') === false

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-chain-'))
  const boxDir = join(dir, 'box')
  const stateDir = join(dir, 'machine')
  await mkdir(boxDir)
  await mkdir(stateDir)
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(boxDir, 'box.img'), '16M'])
  await execa('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-F',
    'qcow2',
    '-b',
    join(boxDir, 'box.img'),
    join(stateDir, 'disk.qcow2'),
  ])
  machine = {
    name: 'web',
    stateDir,
    box: {dir: boxDir, metadata: {provider: 'qemu'}},
    cpus: 1,
    memoryMiB: 256,
    forwardedPorts: [],
  }
  snapshots = new QemuSnapshots(join(dir, 'cache'))
})
afterEach(async () => cleanup())

it('halted saves freeze the disk into a chain; restore goes back; list names parents and the current one', async () => {
  await write('0x11', 0)
  expect(await snapshots.save(machine, 'one', {})).toMatchObject({
    name: 'one',
    kind: 'disk',
    current: true,
    parent: undefined,
  })
  await write('0x22', 0)
  expect(await snapshots.save(machine, 'two', {})).toMatchObject({name: 'two', current: true, parent: 'one'})
  await write('0x33', 0)
  expect(await chain(join(machine.stateDir, 'disk.qcow2'))).toHaveLength(4)

  await snapshots.restore(machine, 'one', {})
  expect(await read('0x11', 0)).toBe(true)
  expect((await snapshots.list(machine)).map((s) => [s.name, s.current])).toEqual([
    ['one', true],
    ['two', false],
  ])
  await snapshots.restore(machine, 'two', {})
  expect(await read('0x22', 0)).toBe(true)
  await expect(snapshots.save(machine, 'two', {})).rejects.toThrow('machine web already has a snapshot named "two"')
  await expect(snapshots.restore(machine, 'three', {})).rejects.toThrow('machine web has no snapshot named "three"')
})

it('delete refuses a snapshot another builds on, keeps a layer the disk builds on, drops one nothing needs', async () => {
  await snapshots.save(machine, 'one', {})
  await snapshots.save(machine, 'two', {})
  await expect(snapshots.delete(machine, 'one')).rejects.toThrow('snapshot "one" cannot be deleted: "two" builds on it')
  expect(await snapshots.delete(machine, 'two')).toEqual({layerKept: true})
  expect(await snapshots.delete(machine, 'one')).toEqual({layerKept: true})
  // Both layers are still under the disk, unnamed.
  expect(await chain(join(machine.stateDir, 'disk.qcow2'))).toHaveLength(4)
  await snapshots.save(machine, 'three', {})
  await snapshots.save(machine, 'four', {})
  await snapshots.restore(machine, 'three', {})
  // Nothing builds on four's layer: it goes with the snapshot.
  const before = (await readdir(join(machine.stateDir, 'snapshots'))).length
  expect(await snapshots.delete(machine, 'four')).toEqual({layerKept: false})
  expect((await readdir(join(machine.stateDir, 'snapshots'))).length).toBe(before - 1)
  expect(await stat(join(machine.box.dir, 'box.img'))).toBeTruthy()
})

it('settleDisk makes disk.qcow2 the disk again after a save while running, rewriting backing paths', async () => {
  // As a save while running leaves it: disk.qcow2 frozen where it was, QEMU on snapshots/x-next.qcow2.
  await mkdir(join(machine.stateDir, 'snapshots'))
  await write('0x44', 4096)
  const next = join(machine.stateDir, 'snapshots', 'x-next.qcow2')
  await execa('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-F',
    'qcow2',
    '-b',
    join(machine.stateDir, 'disk.qcow2'),
    next,
  ])
  await writeFile(
    join(machine.stateDir, 'snapshots', 'index.json'),
    JSON.stringify({
      format: 1,
      snapshots: [
        {
          name: 'live',
          id: 'x',
          kind: 'running',
          createdAt: '2026-01-01T00:00:00Z',
          layer: 'disk.qcow2',
          state: 'snapshots/x.state',
        },
      ],
      layers: {'disk.qcow2': null},
      diskParent: 'disk.qcow2',
      active: 'snapshots/x-next.qcow2',
    }),
  )
  await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 0 4k', next])

  await settleDisk(machine.stateDir)
  const index = JSON.parse(await readFile(join(machine.stateDir, 'snapshots', 'index.json'), 'utf8'))
  const layer = index.snapshots[0].layer as string
  expect(layer).toMatch(/^snapshots\/[0-9a-f]{12}\.qcow2$/)
  expect(index.active).toBeUndefined()
  expect(index.diskParent).toBe(layer)
  expect(await backing(join(machine.stateDir, 'disk.qcow2'))).toBe(join(machine.stateDir, layer))
  expect(await read('0x55', 0)).toBe(true)
  expect(await read('0x44', 4096)).toBe(true)
  // Settled once: a second call changes nothing.
  await settleDisk(machine.stateDir)
  expect(JSON.parse(await readFile(join(machine.stateDir, 'snapshots', 'index.json'), 'utf8'))).toEqual(index)
})
