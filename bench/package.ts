/**
 * `box package` of machines that were booted and used, all through the CLI as a user runs it,
 * on the reference box:
 *   - a maintainer's machine: `box up --base`, files written into the origin (FILES_MIB of
 *     random data, default 32, and a copy of /usr/bin: programs, as an install adds), `fstrim`, `box halt`; packaged
 *     with zstd and with gzip (the origin changed: its login keys are reset);
 *   - a worker's machine: `box up` (a resnap boot), the same files written to / (the root
 *     snapshot) and /persistent, `box halt`; packaged with zstd (the origin is the box's).
 * For each package: its wall time, MB/s of virtual disk and of allocated data, the output's
 * size and what was left out; beside the reference box's size and `qemu-img convert -c`
 * (qcow2's internal zlib) of the maintainer's chain. bench/vs-vagrant.sh times `vagrant
 * package` beside `box package`.
 * BOX_BENCH_PROJECT=DIR packages that project's halted default machine instead (no boots).
 * Run (boots QEMU twice): npm run build && flock /tmp/box-qemu.lock node --import tsx/esm bench/package.ts
 */
import {mkdir, mkdtemp, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import type {PackageResult} from '../src/lib/machine/package.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {formatBytes} from '../src/lib/core/progress.js'
import {testCacheDir} from '../test/support/cache.js'

const BIN = join(PROJECT_ROOT, 'bin', 'box')
const MB = 1e6
const filesMiB = Number(process.env.FILES_MIB ?? 32)

const work = await mkdtemp(join(tmpdir(), 'box-bench-package-'))
const env = {BOX_DATA_DIR: join(work, 'data'), BOX_CACHE_DIR: testCacheDir()}
const cli = (project: string, args: string[]) => execa(BIN, args, {cwd: project, env, stdin: 'ignore'})
const projects: string[] = []

/** A project with one machine on the reference box. */
async function project(name: string): Promise<string> {
  const dir = join(work, name)
  await mkdir(dir)
  await writeFile(join(dir, 'Boxfile'), 'box: reference\n')
  projects.push(dir)
  return dir
}

/** Files a user leaves behind in `dir` of the guest: incompressible data and programs (the box has no /usr/share/doc). */
const writeFiles = (dir: string) =>
  `sudo mkdir -p ${dir} && sudo dd if=/dev/urandom of=${dir}/random.bin bs=1M count=${filesMiB} status=none && ` +
  `sudo cp -a /usr/bin ${dir}/bin && sync && sudo du -sh ${dir}`

async function packageOnce(dir: string, label: string, compression: 'zstd' | 'gzip'): Promise<string> {
  const output = join(work, `${label}-${compression}.box`)
  const started = performance.now()
  const {stdout} = await cli(dir, ['package', '--json', '--output', output, '--compression', compression])
  const seconds = (performance.now() - started) / 1000
  const result = JSON.parse(stdout) as PackageResult
  await rm(output, {force: true})
  return (
    `box package, ${label} (${compression}): ${seconds.toFixed(1)} s wall (${(result.ms / 1000).toFixed(1)} s inside), ` +
    `${(result.virtualSize / MB / seconds).toFixed(0)} MB/s of virtual disk (${formatBytes(result.virtualSize)}), ` +
    `${(result.imageSize / MB / seconds).toFixed(0)} MB/s of allocated data, origin ${result.originChanged ? 'changed (login keys reset)' : 'unchanged'}, ` +
    `output ${formatBytes(result.size)} (qcow2 inside ${formatBytes(result.imageSize)}; snapshot and swap left out: ${formatBytes(result.droppedBytes)})`
  )
}

try {
  const {path: referenceBox} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {
    cacheDir: testCacheDir(),
  })
  const results: string[] = []
  let maintainer: string
  if (process.env.BOX_BENCH_PROJECT) {
    maintainer = process.env.BOX_BENCH_PROJECT
    for (const compression of ['zstd', 'gzip'] as const)
      results.push(await packageOnce(maintainer, 'given project', compression))
  } else {
    await execa(BIN, ['add', 'reference', referenceBox], {env})
    maintainer = await project('maintainer')
    await cli(maintainer, ['up', '--base'])
    const written = await cli(maintainer, ['ssh', '-c', writeFiles('/opt/bench')])
    await cli(maintainer, ['ssh', '-c', 'sudo fstrim -a'])
    await cli(maintainer, ['halt'])
    for (const compression of ['zstd', 'gzip'] as const)
      results.push(await packageOnce(maintainer, 'maintainer', compression))

    const worker = await project('worker')
    await cli(worker, ['up'])
    await cli(worker, ['ssh', '-c', `${writeFiles('/opt/bench')} && ${writeFiles('/persistent/bench')}`])
    await cli(worker, ['halt'])
    results.push(await packageOnce(worker, 'worker', 'zstd'))
    console.log(`written in each machine: ${written.stdout.trim().split(/\s+/)[0]} (du -sh of /opt/bench)`)
  }

  // The first packaged machine's chain through qemu-img's own compression, for comparison.
  const disk = join(maintainer, '.box', 'machines', 'default', 'disk.qcow2')
  const started = performance.now()
  await execa('qemu-img', ['convert', '-c', '-O', 'qcow2', disk, join(work, 'convert-c.qcow2')])
  const convertSeconds = (performance.now() - started) / 1000
  const convertSize = (await stat(join(work, 'convert-c.qcow2'))).size

  console.log(results.join('\n'))
  console.log(`reference box (box build output): ${formatBytes((await stat(referenceBox)).size)}`)
  console.log(`qemu-img convert -c of the same chain: ${formatBytes(convertSize)} in ${convertSeconds.toFixed(1)} s`)
} finally {
  for (const dir of projects) await execa(BIN, ['destroy', '-f'], {cwd: dir, env, reject: false})
  await rm(work, {recursive: true, force: true})
}
