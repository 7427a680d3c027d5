/**
 * A cloud image as a box (issue 17), under whatever accelerator the probe picks, on the
 * generic Debian cloud image the tests build (test/support/debian-cloud-image.ts):
 *   - `box up` from nothing to ssh (create, seed, boot, cloud-init, ssh), and RUNS times
 *     (default 3) `box halt` + `box up` with host-side resnap (a fresh overlay each boot),
 *     with the host's load average (the machine is shared);
 *   - the host-side resnap step alone (the provider's resetDisk on the halted machine),
 *     median of 10.
 * Each up + halt pair holds the QEMU lock (bench/lock.ts; BENCH_LOCK, default /tmp/box-qemu.lock).
 * Run: npm run build && [RUNS=n] node --import tsx/esm bench/cloud-image.ts
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {loadavg, tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'

import {BoxMetadataSchema} from '../src/lib/box/metadata.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {QemuProvider} from '../src/providers/qemu/index.js'
import {testCacheDir} from '../test/support/cache.js'
import {ensureCloudImage} from '../test/support/debian-cloud-image.js'
import {withQemuLock} from './lock.js'
import {median} from './stats.js'

const BIN = join(PROJECT_ROOT, 'bin', 'box')
const RUNS = Number(process.env.RUNS ?? 3)
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`
const load = () => loadavg()[0]!.toFixed(2)

// A missing image is built first, with the lock held (debootstrap is heavy on a shared host).
const image = await withQemuLock(() => ensureCloudImage({log: (line) => console.log(line)}))
const work = await mkdtemp(join(tmpdir(), 'box-bench-cloud-'))
const env = {BOX_DATA_DIR: join(work, 'data'), BOX_CACHE_DIR: testCacheDir(), NO_COLOR: '1'}
const box = (args: string[]) => execa(BIN, args, {cwd: work, env, stdin: 'ignore', all: true})
/** `box up` timed, then `box halt`, with the QEMU lock held from before up until the guest is down. */
const upThenHalt = () =>
  withQemuLock(async () => {
    const started = performance.now()
    await box(['up'])
    const ms = performance.now() - started
    await box(['halt'])
    return ms
  })

try {
  await box(['add', 'bench-cloud', image])
  await writeFile(join(work, 'Boxfile'), 'box: bench-cloud\nmemory: 1024\nresnap: always\n')
  const first = await upThenHalt()
  console.log(`first up (create, seed, boot → ssh): ${seconds(first)}, load ${load()}`)
  const again: number[] = []
  for (let run = 0; run < RUNS; run++) {
    const ms = await upThenHalt()
    again.push(ms)
    console.log(`halt + up with host-side resnap #${run + 1}: up ${seconds(ms)}, load ${load()}`)
  }
  console.log(`up with host-side resnap: median ${seconds(median(again))} of ${RUNS}`)

  const stateDir = join(work, '.box', 'machines', 'default')
  const record = JSON.parse(await readFile(join(stateDir, 'machine.json'), 'utf8'))
  const metadata = BoxMetadataSchema.parse(JSON.parse(await readFile(join(record.box.path, 'metadata.json'), 'utf8')))
  const provider = new QemuProvider(testCacheDir())
  const handle = {
    name: 'default',
    stateDir,
    box: {dir: record.box.path, metadata},
    cpus: 2,
    memoryMiB: 1024,
    forwardedPorts: [],
  }
  const resets: number[] = []
  for (let run = 0; run < 10; run++) {
    const started = performance.now()
    await provider.resetDisk(handle)
    resets.push(performance.now() - started)
  }
  console.log(`host-side resnap step (new overlay): median ${(median(resets) / 1000).toFixed(3)} s of 10`)
} finally {
  await box(['destroy', '-f']).catch(() => undefined)
  await rm(work, {recursive: true, force: true})
}
