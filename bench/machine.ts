/**
 * Machine loop figures (issues 4 and 18), on the reference box under whatever accelerator
 * the probe picks:
 *   - QEMU start → ssh ready, plain QEMU vs `box up`, alternating RUNS times (default 3) after
 *     one uncounted boot each. Plain QEMU is box's argv on its own overlay of the box, started
 *     by hand and waited for as a person without box would: `ssh -o ConnectTimeout=120 … true`
 *     run again 1 s after each failure until it logs in (PLAIN_WAIT=banner: poll the port until
 *     sshd's `SSH-` banner comes, 1 s between tries, then log in once). box's own wait
 *     (box-agent, the kept master connection) is not used on that side;
 *   - `box ssh -c true` and `box status` on a running machine (median of 10 after a warm-up,
 *     with the host's load average: the machine is shared), beside plain ssh through the same
 *     master connection and `node -e 0` (the parts box cannot make faster);
 *   - `box halt`;
 *   - the disk a second machine takes: `box up` of a second project on the same box, then the
 *     allocated bytes of its machine folder (`du`) once ssh is ready and after `box halt`.
 * Run (boots QEMU 2·RUNS + 3 times): npm run build && flock /tmp/box-qemu.lock env [RUNS=n]
 *   [PLAIN_WAIT=ssh|banner] node --import tsx/esm bench/machine.ts
 */
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {connect} from 'node:net'
import {availableParallelism, loadavg, tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {extractBoxArchive} from '../src/lib/box/archive.js'
import {BoxMetadataSchema} from '../src/lib/box/metadata.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {installPrivateKey, sshArgs} from '../src/lib/machine/ssh.js'
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
const plainWait = process.env.PLAIN_WAIT ?? 'ssh'
if (plainWait !== 'ssh' && plainWait !== 'banner') throw new Error(`PLAIN_WAIT must be ssh or banner, not ${plainWait}`)
console.log(
  `accelerator: ${accel}; plain QEMU waited for by ${plainWait === 'ssh' ? 'ssh retried' : 'polling the ssh banner'}`,
)

/** One login as a person types it: the box's published insecure key, no host key kept. */
const sshByHand = (port: number, key: string, connectTimeoutS: number) =>
  execa(
    'ssh',
    [
      '-o',
      'BatchMode=yes',
      '-o',
      `ConnectTimeout=${connectTimeoutS}`,
      '-o',
      'StrictHostKeyChecking=no',
      '-o',
      'UserKnownHostsFile=/dev/null',
      '-o',
      'LogLevel=ERROR',
      '-o',
      'IdentitiesOnly=yes',
      '-i',
      key,
      '-p',
      String(port),
      'box@127.0.0.1',
      'true',
    ],
    {reject: false, stdin: 'ignore'},
  )

/** `until ssh -o ConnectTimeout=120 … true; do sleep 1; done` */
async function waitBySshRetried(port: number, key: string, alive: () => boolean): Promise<void> {
  while ((await sshByHand(port, key, 120)).exitCode !== 0) {
    if (!alive()) throw new Error('plain QEMU exited before ssh answered')
    await sleep(1000)
  }
}

/** Whether a TCP connection to `port` is sent sshd's banner within `timeoutMs` (QEMU's user-mode network accepts at once and closes when the guest does not answer). */
function sshBanner(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    let received = ''
    const socket = connect(port, '127.0.0.1')
    const finish = (heard: boolean) => {
      socket.destroy()
      resolve(heard)
    }
    socket.setTimeout(timeoutMs, () => finish(false))
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1')
      if (received.startsWith('SSH-')) finish(true)
      else if (received.length >= 4) finish(false)
    })
    socket.on('error', () => finish(false))
    socket.on('close', () => finish(received.startsWith('SSH-')))
  })
}

/** Poll for the banner without logging in, then log in once (again 1 s later should that fail). */
async function waitByBanner(port: number, key: string, alive: () => boolean): Promise<void> {
  while (!(await sshBanner(port, 120_000))) {
    if (!alive()) throw new Error('plain QEMU exited before sshd answered')
    await sleep(1000)
  }
  await waitBySshRetried(port, key, alive)
}

try {
  // Plain QEMU: the same box, overlay and argv box uses, started by hand and waited for
  // without box (above). Boots of a TCG guest vary by seconds, so plain and box up
  // alternate, RUNS times each.
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
      const wait = plainWait === 'ssh' ? waitBySshRetried : waitByBanner
      await wait(booted.sshPort, key, () => isAlive(booted.pid))
    })
    await stopQemu({pidFile: files.pidFile, qmpSocket: files.qmpSocket, timeoutMs: 30_000})
    return ms
  }

  const project = join(work, 'project')
  await mkdir(project)
  await writeFile(join(project, 'Boxfile'), 'box: reference\n')
  await execa(BIN, ['add', 'reference', boxFile], {env})
  const cli = (args: string[]) => execa(BIN, args, {cwd: project, env, stdin: 'ignore'})
  // One uncounted boot each: the plain overlay's first boot seeds /persistent (host keys),
  // box's first up creates the machine and swaps the insecure key for its own; both warm the
  // page cache with the box image.
  await plainBoot()
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

  // A second machine on the same box, made and booted by box up in a project of its own.
  const second = join(work, 'second')
  await mkdir(second)
  await writeFile(join(second, 'Boxfile'), 'box: reference\n')
  const secondCli = (args: string[]) => execa(BIN, args, {cwd: second, env, stdin: 'ignore'})
  const secondDir = join(second, '.box', 'machines', 'default')
  await secondCli(['up'])
  const [runningFolder, runningDisk] = [
    await allocatedKiB(secondDir),
    await allocatedKiB(join(secondDir, 'disk.qcow2')),
  ]
  await secondCli(['halt'])
  const [haltedFolder, haltedDisk] = [await allocatedKiB(secondDir), await allocatedKiB(join(secondDir, 'disk.qcow2'))]
  console.log(
    `second machine (box up of another project on the same box): machine folder ${runningFolder} KiB allocated once ssh is ready (disk.qcow2 ${runningDisk} KiB), ${haltedFolder} KiB after box halt (disk.qcow2 ${haltedDisk} KiB)`,
  )
} finally {
  for (const project of ['project', 'second']) {
    await execa(BIN, ['destroy', '-f'], {cwd: join(work, project), env, reject: false})
  }
  await rm(work, {recursive: true, force: true})
}

/** Bytes the file system allocated to `path` (du's default: blocks, not apparent size), in KiB. */
async function allocatedKiB(path: string): Promise<number> {
  const {stdout} = await execa('du', ['-sk', path])
  return Number.parseInt(stdout, 10)
}
