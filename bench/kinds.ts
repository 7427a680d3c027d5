/**
 * Boot → ssh for each kind of resnap box (issue 17), under whatever accelerator the probe
 * picks: the reference box (classic snapshot, resnap by initramfs-tools,
 * boxes/debian-bookworm), the dracut box (boxes/debian-bookworm-dracut) and the thin box
 * (boxes/debian-bookworm-thin). The cloud image with host-side resnap is bench/cloud-image.ts.
 * For each kind, through the CLI on a Boxfile `box: NAME\nmemory: 1024\n`: one first `box up`
 * (create, boot → ssh) and RUNS (default 3) resnap boots (`box halt` + `box up`); per boot the
 * wall time of `box up`, the guest's uptime when ssh.service became active, the resnap step
 * as the guest's console line says ("resnap: … in N s", serial.log), and the host's 1-minute
 * load when the boot began (the machine is shared). A box missing from the test cache is
 * built first (with the lock held: the builder boots QEMU).
 * Each up + halt pair holds the QEMU lock (bench/lock.ts), so other work can interleave.
 * Run: npm run build && [RUNS=n] [KINDS=recipe,…] node --import tsx/esm bench/kinds.ts
 */
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {loadavg, tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {createProgress} from '../src/lib/core/progress.js'
import {resolveAccel} from '../src/providers/qemu/accel.js'
import {testCacheDir} from '../test/support/cache.js'
import {withQemuLock} from './lock.js'
import {loadAverages, median} from './stats.js'

const ALL_KINDS = [
  {name: 'classic (initramfs-tools)', recipe: 'debian-bookworm'},
  {name: 'dracut', recipe: 'debian-bookworm-dracut'},
  {name: 'thin', recipe: 'debian-bookworm-thin'},
]
/** KINDS=recipe,… picks some (default all). */
const picked = process.env.KINDS?.split(',')
const KINDS = picked ? ALL_KINDS.filter((kind) => picked.includes(kind.recipe)) : ALL_KINDS
if (picked && KINDS.length !== picked.length)
  throw new Error(`KINDS: known are ${ALL_KINDS.map((kind) => kind.recipe).join(', ')}`)
const BIN = join(PROJECT_ROOT, 'bin', 'box')
const RUNS = Number(process.env.RUNS ?? 3)
/** The console line every kind's resnap prints when it is done (initramfs/scripts/local-top/resnap, initramfs/dracut/90resnap). */
const RESNAP_LINE = /resnap: (reset|recreated|created missing) \S+ \([^)]*\) from \S+ in (\d+\.\d+) s/

interface Boot {
  /** `box up`, wall time. */
  upS: number
  /** Guest uptime when ssh.service became active. */
  sshdS: number
  /** What the resnap step did and how long it took (the guest's console line). */
  resnap: {did: string; s: number}
  /** The host's 1-minute load average when the boot began. */
  load: number
}

const cacheDir = testCacheDir()
const {accel} = await resolveAccel({cacheDir})
const work = await mkdtemp(join(tmpdir(), 'box-bench-kinds-'))
const env = {BOX_DATA_DIR: join(work, 'data'), BOX_CACHE_DIR: cacheDir, NO_COLOR: '1'}
console.log(`accelerator: ${accel}; ${RUNS} resnap boots per kind; load ${loadAverages()}`)

const s = (value: number) => `${value.toFixed(1)} s`
const rows: string[] = []
try {
  for (const kind of KINDS) {
    const built = await withQemuLock(() =>
      ensureBox(join(PROJECT_ROOT, 'boxes', kind.recipe), {cacheDir, progress: createProgress({plain: true})}),
    )
    if (built.build)
      console.log(`${kind.recipe}: built in ${s(built.build.timings.reduce((sum, t) => sum + t.ms, 0) / 1000)}`)
    const project = join(work, kind.recipe)
    await mkdir(project)
    const cli = (args: string[]) => execa(BIN, args, {cwd: project, env, stdin: 'ignore', all: true})
    const serialLog = join(project, '.box', 'machines', 'default', 'serial.log')

    /** `box up` → ssh and its figures. */
    const measure = async (): Promise<Boot> => {
      const load = loadavg()[0]!
      const started = performance.now()
      await cli(['up'])
      const upS = (performance.now() - started) / 1000
      // As root: the box user has no bus to ask systemd through.
      const {stdout} = await cli(['ssh', '-c', 'sudo -n systemctl show -P ActiveEnterTimestampMonotonic ssh.service'])
      const sshdS = Number(stdout.trim()) / 1e6
      if (!(sshdS > 0)) throw new Error(`${kind.recipe}: no ssh.service start time in ${JSON.stringify(stdout)}`)
      const line = RESNAP_LINE.exec(await readFile(serialLog, 'utf8'))
      if (!line) throw new Error(`${kind.recipe}: no resnap line in ${serialLog}`)
      return {upS, sshdS, resnap: {did: line[1]!, s: Number(line[2])}, load}
    }
    /** One boot and `box halt`, with the lock held until the guest is down (also when the boot fails). */
    const boot = () =>
      withQemuLock(async () => {
        let figures: Boot
        try {
          figures = await measure()
        } catch (error) {
          await cli(['halt', '-f']).catch(() => undefined)
          throw error
        }
        await cli(['halt'])
        return figures
      })
    const report = (what: string, b: Boot) =>
      console.log(
        `${kind.recipe} ${what}: up → ssh ${s(b.upS)}, sshd at ${s(b.sshdS)} of guest uptime, resnap ${b.resnap.did} in ${b.resnap.s.toFixed(2)} s, load ${b.load.toFixed(2)}`,
      )

    try {
      await cli(['add', kind.recipe, built.path])
      await writeFile(join(project, 'Boxfile'), `box: ${kind.recipe}\nmemory: 1024\n`)
      const first = await boot()
      report('first up', first)
      const again: Boot[] = []
      for (let run = 1; run <= RUNS; run++) {
        again.push(await boot())
        report(`resnap up #${run}`, again.at(-1)!)
      }
      const med = (pick: (b: Boot) => number) => median(again.map(pick))
      rows.push(
        `| ${kind.name} | ${s(first.upS)} | ${s(med((b) => b.upS))} | ${s(med((b) => b.sshdS))} | ${med((b) => b.resnap.s).toFixed(2)} s | ${Math.min(...again.map((b) => b.load)).toFixed(2)}–${Math.max(...again.map((b) => b.load)).toFixed(2)} |`,
      )
    } finally {
      await cli(['destroy', '-f']).catch(() => undefined)
    }
  }
} finally {
  await rm(work, {recursive: true, force: true})
}
console.log(
  `\n| kind | first up → ssh | resnap up → ssh, median of ${RUNS} | sshd at guest uptime, median | resnap step, median | load at the boots |`,
)
console.log('|---|---|---|---|---|---|')
for (const row of rows) console.log(row)
console.log(`host load average after: ${loadAverages()}`)
