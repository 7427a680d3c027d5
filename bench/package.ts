/**
 * `box package` on the reference box (target ≤ 60 s here; `vagrant package` took 215 s):
 * wall time, MB of virtual disk per second, and the output's size next to the reference
 * box's own build output and to `qemu-img convert -c` (qcow2's internal zlib) of the same
 * chain. The machine is a linked clone of the stored box, made as `up` makes it but not
 * booted (a boot costs a minute under TCG and changes nothing packaging measures); set
 * BOX_BENCH_PROJECT to a project directory to package its halted machine instead.
 * Usage: node --import tsx/esm bench/package.ts
 */
import {mkdir, mkdtemp, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {randomUUID} from 'node:crypto'

import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {parseBoxfile} from '../src/lib/boxfile/load.js'
import {imageRangeSpec, lvRangesOnPv, readLvmOnDisk} from '../src/lib/box/disk-image.js'
import {machineDir, type MachineRecord} from '../src/lib/machine/context.js'
import {packageMachine} from '../src/lib/machine/package.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {createProgress, formatBytes} from '../src/lib/core/progress.js'
import {addBoxFromFile} from '../src/lib/store/import.js'
import {testCacheDir} from '../test/support/cache.js'

const MB = 1e6

/**
 * Make the overlay hold a cluster of the origin (the same bytes the box has, so the
 * filesystem stays intact): package then takes the changed-origin path, which resets the
 * login keys in the origin's filesystem — what a `--base` machine costs.
 */
async function touchOrigin(disk: string): Promise<void> {
  const backing = JSON.parse((await execa('qemu-img', ['info', '--output=json', disk])).stdout)[
    'full-backing-filename'
  ] as string
  const lvm = (await readLvmOnDisk(backing, 'qcow2'))!
  const [root] = lvRangesOnPv(lvm.metadata, 'box', 'root', lvm.pvUuid)!
  const offset = lvm.pvOffset + root!.offset + 1024 * 1024
  await execa('qemu-img', [
    'convert',
    '-n',
    imageRangeSpec(backing, 'qcow2', offset, 65536),
    imageRangeSpec(disk, 'qcow2', offset, 65536),
  ])
}
const dir = await mkdtemp(join(tmpdir(), 'box-bench-package-'))
try {
  const {path: referenceBox} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {
    cacheDir: testCacheDir(),
  })
  const referenceSize = (await stat(referenceBox)).size
  const dataDir = join(dir, 'data')
  const projectDir = process.env.BOX_BENCH_PROJECT ?? join(dir, 'project')
  const boxfileText = 'box: reference\n'
  if (!process.env.BOX_BENCH_PROJECT) {
    await mkdir(projectDir, {recursive: true})
    await writeFile(join(projectDir, 'Boxfile'), boxfileText)
    const stored = await addBoxFromFile({dataDir, name: 'reference', file: referenceBox})
    // What `up` creates before booting: machine.json and an overlay backed by the stored image.
    const stateDir = machineDir(projectDir, 'default')
    await mkdir(stateDir, {recursive: true})
    const record: MachineRecord = {
      id: randomUUID(),
      name: 'default',
      provider: 'qemu',
      box: {name: stored.name, version: stored.version, provider: stored.provider, path: stored.path},
      user: stored.metadata.box?.user ?? 'vagrant',
      provisioned: true,
      createdAt: new Date().toISOString(),
    }
    await writeFile(join(stateDir, 'machine.json'), JSON.stringify(record))
    await execa('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'qcow2',
      '-b',
      join(stored.path, 'box.img'),
      join(stateDir, 'disk.qcow2'),
    ])
  }
  const boxfile = await parseBoxfile(join(projectDir, 'Boxfile'), boxfileText)
  const machine = boxfile.machines[0]!
  const context = {projectDir, dataDir, cacheDir: join(dir, 'cache'), progress: createProgress({silent: true})}

  const results: string[] = []
  const disk = join(machineDir(projectDir, 'default'), 'disk.qcow2')
  const runs: Array<{compression: 'zstd' | 'gzip'; changeOrigin?: boolean}> = [
    {compression: 'zstd'},
    {compression: 'zstd', changeOrigin: true},
    {compression: 'gzip'},
  ]
  for (const [index, {compression, changeOrigin}] of runs.entries()) {
    if (changeOrigin && !process.env.BOX_BENCH_PROJECT) await touchOrigin(disk)
    const output = join(dir, `packaged-${index}-${compression}.box`)
    const result = await packageMachine({context, machine, output, compression})
    const seconds = result.ms / 1000
    results.push(
      `box package (${compression}): ${seconds.toFixed(1)} s, ${(result.virtualSize / MB / seconds).toFixed(0)} MB/s of virtual disk (${formatBytes(result.virtualSize)}), ` +
        `${(result.imageSize / MB / seconds).toFixed(0)} MB/s of allocated data, origin ${result.originChanged ? 'changed (login keys reset)' : 'unchanged'}, ` +
        `output ${formatBytes(result.size)} (qcow2 inside ${formatBytes(result.imageSize)}; snapshot and swap left out: ${formatBytes(result.droppedBytes)})`,
    )
  }

  // The same chain through qemu-img's own compression, for comparison.
  const started = Date.now()
  await execa('qemu-img', ['convert', '-c', '-O', 'qcow2', disk, join(dir, 'convert-c.qcow2')])
  const convertSeconds = (Date.now() - started) / 1000
  const convertSize = (await stat(join(dir, 'convert-c.qcow2'))).size

  console.log(results.join('\n'))
  console.log(`reference box (box build output): ${formatBytes(referenceSize)}`)
  console.log(`qemu-img convert -c of the same chain: ${formatBytes(convertSize)} in ${convertSeconds.toFixed(1)} s`)
} finally {
  await rm(dir, {recursive: true, force: true})
}
