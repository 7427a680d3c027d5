/**
 * Resnap soak (issue 21): N consecutive `box resnap` cycles (default 100) on one machine of
 * the reference box. Each cycle writes to /root, changes /etc/issue and adds a file to
 * /persistent (synced), then runs `box resnap` (halt, then a resnap boot to ssh). After
 * each, the checksum of a watched file set of / (every file under /root and /usr/sbin, and
 * /etc/{issue,passwd,group,fstab,hostname,ssh/sshd_config}) must equal the first boot's, and
 * /persistent must hold every file written so far with its checksum. Failures are counted,
 * not fatal; reported: cycles, failures, `box resnap` wall time and the boot's own time
 * (QEMU start → ssh, box's bootMs) as min / median / max, and the resnap line's own time.
 * SOAK_MINUTES=M starts no new cycle after M minutes (the report says how many ran).
 * Run: npm run build && flock /tmp/box-qemu.lock node --import tsx/esm bench/resnap-soak.ts [N]
 */
import {createHash, randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {testCacheDir} from '../test/support/cache.js'
import {loadAverages} from './stats.js'

const N = Number(process.argv[2] ?? 100)
if (!Number.isInteger(N) || N < 1) {
  console.error(`usage: resnap-soak.ts [N]: N must be a whole number of cycles, 1 or more (got ${process.argv[2]})`)
  process.exit(2)
}
const budgetMinutes = process.env.SOAK_MINUTES === undefined ? Infinity : Number(process.env.SOAK_MINUTES)
if (!(budgetMinutes > 0)) {
  console.error(`SOAK_MINUTES must be a positive number of minutes (got ${process.env.SOAK_MINUTES})`)
  process.exit(2)
}
const BIN = join(PROJECT_ROOT, 'bin', 'box')
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`
const spread = (values: number[]) => {
  if (values.length === 0) return 'none'
  const sorted = [...values].sort((a, b) => a - b)
  return `min ${seconds(sorted[0]!)}, median ${seconds(sorted[Math.floor(sorted.length / 2)]!)}, max ${seconds(sorted.at(-1)!)} (n=${sorted.length})`
}

const WATCHED =
  'find /root /usr/sbin /etc/issue /etc/passwd /etc/group /etc/fstab /etc/hostname /etc/ssh/sshd_config -xdev -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d" " -f1'

const cacheDir = testCacheDir()
const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir})
const work = await mkdtemp(join(tmpdir(), 'box-bench-soak-'))
const project = join(work, 'project')
const env = {BOX_DATA_DIR: join(work, 'data'), BOX_CACHE_DIR: cacheDir, NO_COLOR: '1'}
const cli = (args: string[], input?: string) =>
  execa(BIN, args, {cwd: project, env, ...(input === undefined ? {stdin: 'ignore' as const} : {input})})
const asRoot = async (script: string) => (await cli(['ssh', '--', 'sudo', 'sh', '-eu'], script)).stdout.trim()

const persistent = new Map<string, string>()
const resnapMs: number[] = []
const bootMs: number[] = []
const scriptMs: number[] = []
const failures: string[] = []
console.log(`resnap soak: ${N} cycles; load before: ${loadAverages()}`)
const started = Date.now()
let cycles = 0

try {
  await mkdir(project, {recursive: true})
  await writeFile(join(project, 'Boxfile'), 'box: reference\nmemory: 1024\ncpus: 2\n')
  await cli(['add', 'reference', boxFile])
  await cli(['up', '--resnap'])
  const pristine = await asRoot(WATCHED)
  console.log(`first boot: watched set ${pristine.slice(0, 16)}…`)
  for (let cycle = 1; cycle <= N; cycle++) {
    if (Date.now() - started > budgetMinutes * 60_000) {
      console.log(`time budget of ${budgetMinutes} min spent: stopping after ${cycles} of ${N} cycles`)
      break
    }
    cycles = cycle
    const problems: string[] = []
    try {
      const data = randomBytes(32 * 1024).toString('base64')
      const path = `/persistent/soak/${cycle}`
      await asRoot(
        `mkdir -p /persistent/soak; cat > ${path} <<'DATA'\n${data}\nDATA\n` +
          `head -c 262144 /dev/urandom > /root/soak-${cycle}; echo "soak ${cycle}" >> /etc/issue; sync`,
      )
      persistent.set(path, createHash('sha256').update(`${data}\n`).digest('hex'))
      const before = Date.now()
      const {stdout} = await cli(['resnap', '--json'])
      resnapMs.push(Date.now() - before)
      const [result] = JSON.parse(stdout) as Array<{bootMs?: number}>
      if (result?.bootMs !== undefined) bootMs.push(result.bootMs)
      // One ssh round trip: the script's line, the watched set's hash, /persistent's checksums.
      const [said = '', watched = '', ...sums] = (
        await asRoot(
          [
            'echo "said: $(dmesg | grep -o "resnap: [a-z ]*[^ ]* ([^)]*) from [^ ]* in [0-9.]* s" | tail -1)"',
            WATCHED,
            'cd /persistent/soak && sha256sum *',
          ].join('\n'),
        )
      ).split('\n')
      const line = said.replace(/^said: ?/, '')
      const took = /in ([\d.]+) s$/.exec(line)
      if (took) scriptMs.push(Number(took[1]) * 1000)
      if (!line.startsWith('resnap: reset '))
        problems.push(`the resnap line says "${line}" (a reset in place was expected)`)
      if (watched !== pristine) problems.push(`watched set of / is ${watched.slice(0, 16)}…, not the first boot's`)
      const found = new Map(sums.map((row) => row.split(/\s+/).reverse() as [string, string]))
      for (const [file, sum] of persistent) {
        const name = file.slice('/persistent/soak/'.length)
        if (found.get(name) !== sum) problems.push(`${file} is ${found.has(name) ? 'changed' : 'missing'}`)
      }
      if (found.size !== persistent.size)
        problems.push(`/persistent/soak has ${found.size} files, ${persistent.size} written`)
    } catch (error) {
      // execa's message names the command; box's own error is on its stderr.
      const {message, stderr} = error as Error & {stderr?: string}
      const said = (stderr ?? '').trim().split('\n').slice(-4).join(' / ')
      problems.push(`${message.split('\n')[0]}${said ? `: ${said}` : ''}`)
      // A machine left halted or half-up: the next cycle starts it again.
      await cli(['up', '--resnap']).catch(() => {})
    }
    if (problems.length > 0) failures.push(`cycle ${cycle}: ${problems.join('; ')}`)
    console.log(
      `cycle ${cycle}/${N}: resnap ${seconds(resnapMs.at(-1) ?? 0)}, boot ${seconds(bootMs.at(-1) ?? 0)}` +
        `${problems.length > 0 ? `, FAILED: ${problems.join('; ')}` : ''}`,
    )
  }
} finally {
  await cli(['destroy', '-f']).catch(() => {})
  await rm(work, {recursive: true, force: true})
}

console.log(`
resnap soak: ${cycles} cycles${cycles < N ? ` of ${N} asked` : ''} (${cycles + 1} boots with the first), ${failures.length} failed, in ${seconds(Date.now() - started)}
  box resnap (halt + boot to ssh): ${spread(resnapMs)}
  boot (QEMU start → ssh):         ${spread(bootMs)}
  resnap script in the initramfs:  ${spread(scriptMs)}
  load after: ${loadAverages()}`)
for (const failure of failures) console.log(`  ${failure}`)
process.exitCode = failures.length > 0 ? 1 : 0
