/**
 * Machine loop figures (issue 4), on the reference box under whatever accelerator
 * the probe picks:
 *   - QEMU start → ssh ready, plain QEMU (same argv, hand-run) vs `box up`, alternating RUNS
 *     times (default 3);
 *   - `box ssh -c true` and `box status` on a running machine (median of 10 after a warm-up,
 *     with the host's load average: the machine is shared), beside plain ssh through the same
 *     master connection and `node -e 0` (the parts box cannot make faster);
 *   - `box halt`;
 *   - disk written by the creation of a second machine from the same box (before boot).
 * Run: npm run build && [RUNS=n] node --import tsx/esm bench/machine.ts
 */
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {availableParallelism, loadavg, tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {extractBoxArchive} from '../src/lib/box/archive.js'
import {BoxMetadataSchema} from '../src/lib/box/metadata.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {installPrivateKey, sshArgs, waitForSsh} from '../src/lib/machine/ssh.js'
import {resolveAccel} from '../src/providers/qemu/accel.js'
import {QemuProvider} from '../src/providers/qemu/index.js'
import {bootInstance, createOverlay, instanceFiles} from '../src/providers/qemu/instance.js'
import {isAlive, stopQemu} from '../src/providers/qemu/process.js'
import {testCacheDir} from '../test/support/cache.js'

const BIN = join(PROJECT_ROOT, 'bin', 'box')
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!
const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const started = performance.now()
  const value = await fn()
  return [value, performance.now() - started]
}

const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
const work = await mkdtemp(join(tmpdir(), 'box-bench-'))
const cacheDir = testCacheDir()
const env = {BOX_DATA_DIR: join(work, 'data'), BOX_CACHE_DIR: cacheDir}
const {accel} = await resolveAccel({cacheDir})
console.log(`accelerator: ${accel}`)

try {
  // Plain QEMU: the same box, overlay and argv box uses, started and polled by hand (the
  // ssh probe box uses for boxes without box-agent). Boots of a TCG guest vary by seconds,
  // so plain and box up alternate, RUNS times each.
  const boxDir = join(work, 'plain-box')
  await extractBoxArchive({file: boxFile, dest: boxDir})
  const metadata = BoxMetadataSchema.parse(JSON.parse(await readFile(join(boxDir, 'metadata.json'), 'utf8')))
  const files = instanceFiles(join(work, 'plain'))
  await mkdir(files.stateDir, {recursive: true})
  await createOverlay({dir: boxDir, metadata}, files.overlay)
  const key = await installPrivateKey(join(PROJECT_ROOT, 'static', 'insecure_key'), join(work, 'key'))
  const plainBoot = async () => {
    const [, ms] = await timed(async () => {
      const booted = await bootInstance({
        name: 'plain',
        files,
        box: {dir: boxDir, metadata},
        accel,
        cpus: 2,
        memoryMiB: 1024,
        choice: {resnap: true},
      })
      await waitForSsh(
        {host: '127.0.0.1', port: booted.sshPort, user: 'box', keyFile: key},
        {timeoutMs: 300_000, isAlive: () => isAlive(booted.pid)},
      )
    })
    await stopQemu({pidFile: files.pidFile, qmpSocket: files.qmpSocket, timeoutMs: 30_000})
    return ms
  }

  const project = join(work, 'project')
  await mkdir(project)
  await writeFile(join(project, 'Boxfile'), 'box: reference\n')
  await execa(BIN, ['add', 'reference', boxFile], {env})
  const cli = (args: string[]) => execa(BIN, args, {cwd: project, env, stdin: 'ignore'})
  // First up creates the machine and swaps the insecure key for its own: measure the later ones.
  await cli(['up'])
  await cli(['halt'])
  const runs = Number(process.env.RUNS ?? 3)
  const overheads: number[] = []
  for (let run = 1; run <= runs; run++) {
    const plainMs = await plainBoot()
    const [, upMs] = await timed(() => cli(['up']))
    overheads.push(upMs - plainMs)
    console.log(
      `run ${run}: plain QEMU start → ssh ready ${seconds(plainMs)}; box up → ssh ready ${seconds(upMs)} (overhead ${seconds(upMs - plainMs)})`,
    )
    if (run < runs) await cli(['halt'])
  }
  console.log(`box up overhead vs plain QEMU: median ${seconds(median(overheads))} of ${runs} runs`)

  // One warm-up each (opens the ssh master connection, writes the Boxfile cache), then the median of 10.
  const medianOf10 = async (args: string[]) => {
    await cli(args)
    const times: number[] = []
    for (let i = 0; i < 10; i++) times.push((await timed(() => cli(args)))[1])
    return seconds(median(times))
  }
  console.log(`box ssh -c true: median ${await medianOf10(['ssh', '-c', 'true'])}`)
  // The same command through the same master connection by hand: the guest's share (sshd
  // forking bash under TCG); box's own share is the difference.
  const machineDir = join(project, '.box', 'machines', 'default')
  const {sshPort} = JSON.parse(await readFile(join(machineDir, 'machine.json'), 'utf8')) as {sshPort: number}
  const target = {host: '127.0.0.1', port: sshPort, user: 'box', keyFile: join(machineDir, 'id_ed25519')}
  const rawSsh = (controlPath?: string) => execa('ssh', sshArgs({...target, controlPath}, ['true']), {stdin: 'ignore'})
  const medianOfRaw = async (controlPath: string | undefined, runs: number) => {
    const times: number[] = []
    for (let i = 0; i < runs; i++) times.push((await timed(() => rawSsh(controlPath)))[1])
    return seconds(median(times))
  }
  const controlPath = new QemuProvider().sshControlPath({stateDir: machineDir})
  await rawSsh(controlPath)
  console.log(`plain ssh -c true through box's master connection: median ${await medianOfRaw(controlPath, 10)}`)
  // A new connection each time (key exchange, PAM session): what up's probe and key install pay.
  console.log(`plain ssh -c true on a new connection: median ${await medianOfRaw(undefined, 5)}`)
  // Node's own start; bin/box starts ssh and status without NODE_EXTRA_CA_CERTS (see there).
  const nodeStart = async (env: NodeJS.ProcessEnv) => {
    const times: number[] = []
    for (let i = 0; i < 10; i++) times.push((await timed(() => execa('node', ['-e', '0'], {env, extendEnv: false})))[1])
    return seconds(median(times))
  }
  const {NODE_EXTRA_CA_CERTS: extraCaCerts, ...withoutExtraCa} = process.env
  console.log(
    `node -e 0: median ${await nodeStart(withoutExtraCa)}${extraCaCerts ? `; with this host's NODE_EXTRA_CA_CERTS ${await nodeStart(process.env)}` : ''}`,
  )
  console.log(`box status (running, with snapshot fill): median ${await medianOf10(['status'])}`)
  console.log(`host load average (1 min): ${loadavg()[0]!.toFixed(2)} on ${availableParallelism()} cores`)
  const [, haltMs] = await timed(() => cli(['halt']))
  console.log(`box halt: ${seconds(haltMs)}`)

  // A second machine from the same box: the linked clone and its key, before any boot.
  const second = join(work, 'second')
  await mkdir(second)
  const before = await du(join(work))
  await createOverlay({dir: boxDir, metadata}, join(second, 'disk.qcow2'))
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(second, 'id_ed25519')])
  console.log(`disk written creating a second machine: ${((await du(work)) - before) / 1024} KiB`)
} finally {
  await execa(BIN, ['destroy', '-f'], {cwd: join(work, 'project'), env, reject: false})
  await rm(work, {recursive: true, force: true})
}

async function du(path: string): Promise<number> {
  const {stdout} = await execa('du', ['-sk', path])
  return Number.parseInt(stdout, 10) * 1024
}
