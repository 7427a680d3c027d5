/**
 * `box add` of a Vagrant VirtualBox box, made in the test from the reference box the way
 * Vagrant's VirtualBox boxes ship: a streamOptimized VMDK, an OVF as VirtualBox exports
 * it, metadata.json {"provider": "virtualbox"}, a Vagrantfile, tar + gzip. Real qemu-img,
 * real tar, a real loopback HTTP server, the built CLI. No VBoxManage on PATH here.
 */
import {mkdir, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {makeTempDir} from '../fixtures/boxes.js'
import {makeVirtualBoxBoxFromReference, packVirtualBoxBox, sha256} from '../fixtures/virtualbox-box.js'
import {startTestServer, type TestServer} from './download-server.js'

const CLI = process.env.BOX_TEST_CLI ?? join(PROJECT_ROOT, 'bin', 'run.js')

let dir: string
let cleanup: () => Promise<void>
let server: TestServer
/** The VirtualBox box made from the reference box, and its VMDK's virtual size. */
let vboxBox: string
let vmdkVirtualSize: number
let vmdkSha256: string
let dataDir: string

async function imageInfo(image: string): Promise<{format: string; 'virtual-size': number}> {
  return JSON.parse((await execa('qemu-img', ['info', '--output=json', image])).stdout)
}

async function box(...args: string[]) {
  const result = await execa('node', [CLI, ...args], {
    reject: false,
    env: {BOX_DATA_DIR: dataDir, BOX_CACHE_DIR: join(dir, 'cache'), NO_COLOR: '1'},
    stdin: 'ignore',
    timeout: 300_000,
  })
  return {exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr)}
}

/** The store holds nothing: no box, and no scratch left by an import. */
async function expectEmptyStore(): Promise<void> {
  expect(await readdir(join(dataDir, 'boxes')).catch(() => [])).toEqual([])
}

beforeAll(async () => {
  ;({dir, cleanup} = await makeTempDir('box-vbox-add-'))
  ;({box: vboxBox, vmdkVirtualSize, vmdkSha256} = await makeVirtualBoxBoxFromReference(dir))
  server = await startTestServer()
  server.files.set('/reference-virtualbox.box', {data: await readFile(vboxBox), etag: '"v1"'})
}, 600_000)
afterAll(async () => {
  await server?.close()
  await cleanup?.()
})
afterEach(async () => {
  if (dataDir) await rm(dataDir, {recursive: true, force: true})
})

describe('box add of a VirtualBox box', () => {
  it('over HTTP: stores it as it is for VirtualBox and a qcow2 copy for QEMU; list shows both; remove removes both', async () => {
    dataDir = join(dir, 'data-http')
    const added = await box('add', 'vagrant/ref', server.url('/reference-virtualbox.box'), '--box-version', '1.0.0')
    expect(added.exitCode, added.stderr).toBe(0)
    expect(added.stdout).toMatch(/^Added box vagrant\/ref 1\.0\.0 \(virtualbox\), \d/m)
    expect(added.stdout).toMatch(
      /^Converted it for QEMU \(provider: qemu, the default\): vagrant\/ref 1\.0\.0 \(libvirt\), \d/m,
    )
    expect(added.stderr).toMatch(
      /✔ Converting vagrant\/ref 1\.0\.0 for QEMU \(VMDK → qcow2\) \([\d.]+ s\): [\d.]+ [KMG]B as libvirt/,
    )

    const boxes = join(dataDir, 'boxes', 'vagrant-VAGRANTSLASH-ref', '1.0.0')
    expect((await readdir(boxes)).sort()).toEqual(['libvirt', 'virtualbox'])
    // The VirtualBox box exactly as it came; the copy has no OVF or VMDK, only the qcow2 disk.
    expect((await readdir(join(boxes, 'virtualbox'))).sort()).toEqual([
      '.box-store.json',
      'Vagrantfile',
      'box-disk001.vmdk',
      'box.ovf',
      'metadata.json',
    ])
    expect(await sha256(join(boxes, 'virtualbox', 'box-disk001.vmdk'))).toBe(vmdkSha256)
    expect((await readdir(join(boxes, 'libvirt'))).sort()).toEqual([
      '.box-store.json',
      'Vagrantfile',
      'box.img',
      'metadata.json',
    ])
    const converted = await imageInfo(join(boxes, 'libvirt', 'box.img'))
    expect(converted.format).toBe('qcow2')
    expect(converted['virtual-size']).toBe(vmdkVirtualSize)
    // The guest sees the same bytes, every sector of the disk.
    expect(
      (
        await execa('qemu-img', [
          'compare',
          '-f',
          'vmdk',
          '-F',
          'qcow2',
          join(boxes, 'virtualbox', 'box-disk001.vmdk'),
          join(boxes, 'libvirt', 'box.img'),
        ])
      ).stdout,
    ).toMatch(/Images are identical/)

    const list = await box('list', '--json')
    expect(list.exitCode, list.stderr).toBe(0)
    const listed = JSON.parse(list.stdout) as Array<{
      name: string
      version: string
      provider: string
      metadata: Record<string, unknown>
    }>
    expect(listed.map((entry) => [entry.name, entry.version, entry.provider])).toEqual([
      ['vagrant/ref', '1.0.0', 'libvirt'],
      ['vagrant/ref', '1.0.0', 'virtualbox'],
    ])
    expect(listed[0]!.metadata).toEqual({
      provider: 'libvirt',
      format: 'qcow2',
      virtual_size: Math.ceil(vmdkVirtualSize / 2 ** 30),
      converted_from: 'virtualbox',
    })

    const removed = await box('remove', 'vagrant/ref')
    expect(removed.exitCode, removed.stderr).toBe(0)
    expect(removed.stdout.trim().split('\n').sort()).toEqual([
      'Removed box vagrant/ref 1.0.0 (libvirt)',
      'Removed box vagrant/ref 1.0.0 (virtualbox)',
    ])
    await expectEmptyStore()
  }, 300_000)

  it('--no-convert keeps it for VirtualBox only', async () => {
    dataDir = join(dir, 'data-noconvert')
    const added = await box('add', 'ref', vboxBox, '--no-convert')
    expect(added.exitCode, added.stderr).toBe(0)
    expect(added.stdout).not.toContain('Converted')
    expect(await readdir(join(dataDir, 'boxes', 'ref', '0'))).toEqual(['virtualbox'])
  }, 300_000)

  it('Ctrl-C during the conversion exits 130 and leaves nothing in the store', async () => {
    dataDir = join(dir, 'data-interrupted')
    const child = execa('node', [CLI, 'add', 'ref', vboxBox], {
      reject: false,
      env: {BOX_DATA_DIR: dataDir, NO_COLOR: '1'},
      stdin: 'ignore',
    })
    let stderr = ''
    await new Promise<void>((started, failed) => {
      child.stderr?.on('data', (chunk: Buffer) => {
        stderr += String(chunk)
        if (stderr.includes('==> Converting ref 0 for QEMU')) started()
      })
      child.once('exit', () => failed(new Error(`box add ended before converting:\n${stderr}`)))
    })
    child.kill('SIGINT')
    const result = await child
    expect(result.exitCode, String(result.stderr)).toBe(130)
    expect(String(result.stderr)).toMatch(/interrupted/)
    await expectEmptyStore()
    const {stdout} = await execa('ps', ['-eo', 'args='])
    expect(stdout.split('\n').filter((line) => line.startsWith('qemu-img convert') && line.includes(dataDir))).toEqual(
      [],
    )
  }, 300_000)

  it('refuses a box with two disks (nothing stored) and says how to keep it for VirtualBox', async () => {
    dataDir = join(dir, 'data-twodisks')
    const source = join(dir, 'two-disks')
    await mkdir(source)
    for (const file of ['box-disk001.vmdk', 'box-disk002.vmdk'])
      await execa('qemu-img', [
        'create',
        '-q',
        '-f',
        'vmdk',
        '-o',
        'subformat=streamOptimized',
        join(source, file),
        '64M',
      ])
    const file = await packVirtualBoxBox(
      source,
      [
        {file: 'box-disk001.vmdk', capacity: 64 << 20},
        {file: 'box-disk002.vmdk', capacity: 64 << 20},
      ],
      join(dir, 'two-disks.box'),
    )
    const refused = await box('add', 'two', file)
    expect(refused.exitCode).toBe(2)
    expect(refused.stderr).toContain(
      'cannot convert the VirtualBox box for QEMU: box.ovf describes 2 disks (box-disk001.vmdk, box-disk002.vmdk), and a QEMU machine has one',
    )
    expect(refused.stderr).toContain('box add NAME FILE --no-convert')
    await expectEmptyStore()
    const kept = await box('add', 'two', file, '--no-convert')
    expect(kept.exitCode, kept.stderr).toBe(0)
  })

  it("a disk that is not a VMDK fails the import with qemu-img's reason, and nothing is stored", async () => {
    dataDir = join(dir, 'data-corrupt')
    const source = join(dir, 'corrupt')
    await mkdir(source)
    await writeFile(join(source, 'box-disk001.vmdk'), 'this is not a VMDK\n')
    const file = await packVirtualBoxBox(
      source,
      [{file: 'box-disk001.vmdk', capacity: 1 << 30}],
      join(dir, 'corrupt.box'),
    )
    const failed = await box('add', 'corrupt', file)
    expect(failed.exitCode).toBe(1)
    expect(failed.stderr).toMatch(/reading .*box-disk001\.vmdk failed: `qemu-img info --output=json -f vmdk/)
    await expectEmptyStore()
  })
})
