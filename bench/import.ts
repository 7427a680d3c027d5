/**
 * Importing a local .box.
 *
 * 1. `box add` against `vagrant box add` (Debian's vagrant) of the same file, the reference
 *    box (~/.cache/box-test/boxes/*.box, or BOX_BENCH_BOX), each into an empty store of its
 *    own (BOX_DATA_DIR / VAGRANT_HOME in a temp folder), paired A B A B: times, medians and
 *    the ratio. Both are whole commands, start-up included.
 * 2. A 1 GiB sparse box (64 MiB of data in 16 pieces, archived by GNU tar -S as PAX sparse
 *    1.0, zstd): `box add` against `tar -xSf` of the same file, paired: time, and bytes
 *    allocated on disk (du) for what each wrote; and box's extraction alone (the library
 *    call, in this process), to tell it from the command's start-up and store work.
 *
 * Usage: node --import tsx/esm bench/import.ts     (BOX_BENCH_PAIRS=3 by default)
 * The machine is shared: the load average is printed before and after; run it when quiet.
 */
import {mkdir, mkdtemp, readFile, readdir, rm, stat} from 'node:fs/promises'
import {homedir, tmpdir} from 'node:os'
import {join} from 'node:path'

import {execa} from 'execa'

import {extractBoxArchive} from '../src/lib/box/archive.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {loadAverages, median} from './stats.js'

const pairs = Number(process.env.BOX_BENCH_PAIRS ?? 3)
const boxBin = join(PROJECT_ROOT, 'bin', 'box')
const dir = await mkdtemp(join(tmpdir(), 'box-bench-import-'))

/** CPU seconds (user + system, children included) of each timed run, by label: steadier than wall time on a shared machine. */
const cpuSeconds = new Map<string, number[]>()

/** Wall seconds of one run; its CPU time (GNU time, children included) goes to cpuSeconds[label]. */
async function timed(
  label: string,
  command: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<number> {
  const times = join(dir, 'time.txt')
  const start = performance.now()
  await execa('/usr/bin/time', ['-f', '%U %S', '-o', times, command, ...args], {
    env: {...process.env, ...env},
    stdout: 'ignore',
    stderr: 'pipe',
  })
  const wall = (performance.now() - start) / 1000
  const [user, system] = (await readFile(times, 'utf8')).trim().split('\n').at(-1)!.split(' ').map(Number)
  cpuSeconds.set(label, [...(cpuSeconds.get(label) ?? []), user! + system!])
  return wall
}

/** Bytes allocated on disk under `path` (du), and its apparent size. */
async function diskUsage(path: string): Promise<{allocated: number; apparent: number}> {
  const [allocated, apparent] = await Promise.all([
    execa('du', ['-s', '-B1', path]),
    execa('du', ['-s', '-B1', '--apparent-size', path]),
  ])
  return {allocated: Number(allocated.stdout.split('\t')[0]), apparent: Number(apparent.stdout.split('\t')[0])}
}

async function referenceBox(): Promise<string> {
  if (process.env.BOX_BENCH_BOX) return process.env.BOX_BENCH_BOX
  const cache = join(homedir(), '.cache', 'box-test', 'boxes')
  // <hash>.box: the reference boxes the tests build (other tests leave other boxes there).
  const boxes = (await readdir(cache).catch(() => [])).filter((name) => /^[0-9a-f]{16}\.box$/.test(name))
  if (boxes.length === 0)
    throw new Error(
      `no reference box in ${cache}: build it with \`flock /tmp/box-qemu.lock npx vitest run test/integration/build.test.ts\``,
    )
  const withTimes = await Promise.all(
    boxes.map(async (name) => ({path: join(cache, name), mtime: (await stat(join(cache, name))).mtimeMs})),
  )
  return withTimes.sort((a, b) => b.mtime - a.mtime)[0]!.path
}

/** Run `a` and `b` alternately `pairs` times, each in fresh folders `prepare` gives it. */
async function paired(
  label: string,
  a: {name: string; run: (run: number) => Promise<number>},
  b: {name: string; run: (run: number) => Promise<number>},
) {
  const times: {a: number[]; b: number[]} = {a: [], b: []}
  for (let i = 0; i < pairs; i++) {
    times.a.push(await a.run(i))
    times.b.push(await b.run(i))
    console.log(
      `  pair ${i + 1}: ${a.name} ${times.a[i]!.toFixed(2)} s, ${b.name} ${times.b[i]!.toFixed(2)} s (ratio ${(times.a[i]! / times.b[i]!).toFixed(2)}) load ${loadAverages()}`,
    )
  }
  const ratios = times.a.map((time, i) => time / times.b[i]!)
  console.log(
    `${label}: median ${a.name} ${median(times.a).toFixed(2)} s, ${b.name} ${median(times.b).toFixed(2)} s, ratio of medians ${(median(times.a) / median(times.b)).toFixed(2)}, median of pair ratios ${median(ratios).toFixed(2)}`,
  )
  return times
}

try {
  console.log(`load before: ${loadAverages()}`)
  const box = await referenceBox()
  console.log(
    `\n1. ${box} (${((await stat(box)).size / 1e6).toFixed(0)} MB): box add vs vagrant box add, ${pairs} pairs`,
  )
  await paired(
    'reference box',
    {
      name: 'box add',
      run: async (i) => {
        const dataDir = join(dir, `box-${i}`)
        const time = await timed('box add', boxBin, ['add', 'reference', box], {BOX_DATA_DIR: dataDir})
        await rm(dataDir, {recursive: true, force: true})
        return time
      },
    },
    {
      name: 'vagrant box add',
      run: async (i) => {
        const home = join(dir, `vagrant-${i}`)
        const time = await timed('vagrant box add', 'vagrant', ['box', 'add', '--name', 'reference', box], {
          VAGRANT_HOME: home,
        })
        await rm(home, {recursive: true, force: true})
        return time
      },
    },
  )

  console.log(`\n2. a 1 GiB sparse box (64 MiB of data): box add vs tar -xSf, ${pairs} pairs`)
  const source = join(dir, 'sparse-src')
  await mkdir(source)
  await execa(
    'sh',
    [
      '-c',
      'echo \'{"provider":"libvirt","format":"raw","virtual_size":1}\' > metadata.json && truncate -s 1G box.img',
      'sh',
    ],
    {cwd: source},
  )
  for (let piece = 0; piece < 16; piece++) {
    await execa('dd', [
      'if=/dev/urandom',
      `of=${join(source, 'box.img')}`,
      'bs=1M',
      'count=4',
      `seek=${piece * 64}`,
      'conv=notrunc',
      'status=none',
    ])
  }
  const sparseBox = join(dir, 'sparse.box')
  await execa('tar', [
    '-S',
    '--format=posix',
    '--sparse-version=1.0',
    '--zstd',
    '-cf',
    sparseBox,
    '-C',
    source,
    'metadata.json',
    'box.img',
  ])
  console.log(`  archive: ${((await stat(sparseBox)).size / 2 ** 20).toFixed(1)} MiB`)
  const usage: {box: number[]; tar: number[]; apparent: number[]} = {box: [], tar: [], apparent: []}
  await paired(
    'sparse box',
    {
      name: 'box add',
      run: async (i) => {
        const dataDir = join(dir, `sparse-box-${i}`)
        const time = await timed('box add (sparse)', boxBin, ['add', 'sparse', sparseBox, '--no-convert'], {
          BOX_DATA_DIR: dataDir,
        })
        const {allocated, apparent} = await diskUsage(join(dataDir, 'boxes'))
        usage.box.push(allocated)
        usage.apparent.push(apparent)
        await rm(dataDir, {recursive: true, force: true})
        return time
      },
    },
    {
      name: 'tar -xSf',
      run: async (i) => {
        const out = join(dir, `sparse-tar-${i}`)
        await mkdir(out)
        const time = await timed('tar -xSf (sparse)', 'tar', ['--zstd', '-xSf', sparseBox, '-C', out])
        usage.tar.push((await diskUsage(out)).allocated)
        await rm(out, {recursive: true, force: true})
        return time
      },
    },
  )
  const extractOnly: number[] = []
  for (let i = 0; i < pairs; i++) {
    const out = join(dir, `sparse-lib-${i}`)
    const start = performance.now()
    await extractBoxArchive({file: sparseBox, dest: out})
    extractOnly.push((performance.now() - start) / 1000)
    await rm(out, {recursive: true, force: true})
  }
  console.log(
    `  extractBoxArchive alone (in process): median ${median(extractOnly).toFixed(2)} s of ${extractOnly.map((time) => time.toFixed(2)).join(', ')}`,
  )
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`
  console.log(
    `  on disk: box add ${mib(median(usage.box))} (apparent ${mib(median(usage.apparent))}), tar -xSf ${mib(median(usage.tar))}`,
  )
  console.log('\nCPU seconds (user + system, children included), median:')
  for (const [label, values] of cpuSeconds) console.log(`  ${label}: ${median(values).toFixed(2)} s`)
  console.log(`\nload after: ${loadAverages()}`)
} finally {
  await rm(dir, {recursive: true, force: true})
}
