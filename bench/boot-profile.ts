/**
 * Where the reference box's boot time goes (issue 4): boots the cached reference box
 * (plain QEMU, the argv box uses, resnap) and prints QEMU start → ssh ready, the
 * kernel's own timeline, `systemd-analyze`, the blame top and the critical chain.
 *   BOOTS=n            boots of the same machine (the first one also makes its /persistent state)
 *   EXTRA_ARGS='…'     appended to the kernel command line (e.g. `loglevel=7` with quiet off)
 *   DROP_ARGS='quiet'  words removed from the box's kernel_args
 *   RECIPE=dir         another recipe (default boxes/debian-bookworm)
 *   INITRD=file        boot this initrd instead of the box's (experiments)
 *   HOLD=file          keep each booted guest running until the file (an ssh command line) is removed
 *   PROBE_LOG=1        probe ssh like waitForSsh, printing each attempt (PROBE_CONNECT_TIMEOUT=s, default 10)
 *   JOURNAL=1          print the boot's journal (monotonic time stamps)
 *   DMESG=1 SERIAL=1   print the guest's dmesg / the serial log, lines stamped with host seconds since QEMU start
 * Run: node --import tsx/esm bench/boot-profile.ts
 */
import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {loadavg, tmpdir} from 'node:os'
import {join, relative, resolve} from 'node:path'
import {execa} from 'execa'

import {ensureBox} from '../src/builder/index.js'
import {extractBoxArchive} from '../src/lib/box/archive.js'
import {BoxMetadataSchema} from '../src/lib/box/metadata.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {installPrivateKey, waitForSsh} from '../src/lib/machine/ssh.js'
import {resolveAccel} from '../src/providers/qemu/accel.js'
import {bootInstance, createOverlay, instanceFiles} from '../src/providers/qemu/instance.js'
import {isAlive, stopQemu} from '../src/providers/qemu/process.js'
import {testCacheDir} from '../test/support/cache.js'

const recipeDir = process.env.RECIPE ?? join(PROJECT_ROOT, 'boxes', 'debian-bookworm')
const boots = Number(process.env.BOOTS ?? 1)
const cacheDir = testCacheDir()
const {path: boxFile, recipeHash} = await ensureBox(recipeDir, {cacheDir})
const work = await mkdtemp(join(tmpdir(), 'box-profile-'))
const {accel} = await resolveAccel({cacheDir})
console.log(`box ${recipeHash}, accelerator ${accel}, work dir ${work}`)

try {
  const boxDir = join(work, 'box')
  await extractBoxArchive({file: boxFile, dest: boxDir})
  const metadata = BoxMetadataSchema.parse(JSON.parse(await readFile(join(boxDir, 'metadata.json'), 'utf8')))
  const info = metadata.box!
  const drop = new Set((process.env.DROP_ARGS ?? '').split(/\s+/).filter(Boolean))
  info.kernel_args = [
    ...info.kernel_args.split(/\s+/).filter((word) => word && !drop.has(word)),
    process.env.EXTRA_ARGS ?? '',
  ]
    .join(' ')
    .trim()
  if (process.env.INITRD) info.initrd = relative(boxDir, resolve(process.env.INITRD))
  const files = instanceFiles(join(work, 'machine'))
  await mkdir(files.stateDir, {recursive: true})
  await createOverlay({dir: boxDir, metadata}, files.overlay)
  const key = await installPrivateKey(join(PROJECT_ROOT, 'static', 'insecure_key'), join(work, 'key'))
  for (let boot = 1; boot <= boots; boot++) {
    const load = loadavg()[0]!.toFixed(2)
    const started = performance.now()
    const serial = watchSerial(files.serialLog, started)
    const booted = await bootInstance({
      name: 'profile',
      files,
      box: {dir: boxDir, metadata},
      accel,
      cpus: 2,
      memoryMiB: 1024,
      choice: {resnap: true},
    })
    const target = {host: '127.0.0.1', port: booted.sshPort, user: 'box', keyFile: key}
    if (process.env.PROBE_LOG) {
      // The same probe as waitForSsh, each attempt's outcome printed (host seconds since QEMU start).
      for (;;) {
        const at = (performance.now() - started) / 1000
        const probe = await execa(
          'ssh',
          [
            '-o',
            'BatchMode=yes',
            '-o',
            'IdentitiesOnly=yes',
            '-o',
            'StrictHostKeyChecking=no',
            '-o',
            'UserKnownHostsFile=/dev/null',
            '-o',
            `ConnectTimeout=${process.env.PROBE_CONNECT_TIMEOUT ?? 10}`,
            '-i',
            key,
            '-p',
            String(booted.sshPort),
            'box@127.0.0.1',
            'true',
          ],
          {reject: false, timeout: 8000, stdin: 'ignore'},
        )
        console.log(
          `probe at ${at.toFixed(1)} s: ${probe.timedOut ? 'killed after 8 s' : `exit ${probe.exitCode}`} after ${((performance.now() - started) / 1000 - at).toFixed(1)} s ${probe.stderr.split('\n').filter(Boolean).slice(-1)[0] ?? ''}`,
        )
        if (probe.exitCode === 0) break
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
    }
    await waitForSsh(target, {
      timeoutMs: Number(process.env.TIMEOUT ?? 300) * 1000,
      isAlive: () => isAlive(booted.pid),
    }).catch(async (error: unknown) => {
      clearInterval(serial.timer)
      console.log(serial.lines.join('\n'))
      await stopQemu({pidFile: files.pidFile, qmpSocket: files.qmpSocket, timeoutMs: 1000, force: true})
      throw error
    })
    const ms = performance.now() - started
    console.log(`\n=== boot ${boot}: QEMU start → ssh ready ${(ms / 1000).toFixed(1)} s (load before: ${load})`)
    const guest = async (command: string) =>
      (
        await execa(
          'ssh',
          [
            '-i',
            key,
            '-p',
            String(booted.sshPort),
            '-o',
            'StrictHostKeyChecking=no',
            '-o',
            'UserKnownHostsFile=/dev/null',
            '-o',
            'LogLevel=ERROR',
            'box@127.0.0.1',
            command,
          ],
          {
            reject: false,
            all: true,
          },
        )
      ).all
    // Let the boot finish (systemd-analyze needs it) before asking.
    console.log(
      await guest(
        'for i in $(seq 60); do sudo systemctl is-system-running | grep -qE "starting|initializing" || break; sleep 1; done; sudo systemctl is-system-running; uptime; sudo systemd-analyze; sudo systemd-analyze blame | head -25; sudo systemd-analyze critical-chain ssh.service; sudo systemctl list-units --failed --no-legend; test -e /resnap-marker && echo "resnap: a file written to / last boot is STILL THERE" || echo "resnap: / is fresh (no marker from a previous boot)"; sudo touch /resnap-marker; sync',
      ),
    )
    if (process.env.JOURNAL)
      console.log(
        await guest(
          'sudo journalctl -b -o short-monotonic --no-pager _TRANSPORT=journal + _TRANSPORT=stdout + _TRANSPORT=syslog; sudo journalctl -b -o short-monotonic --no-pager -k | grep -v -e acpiphp -e BAR -e pci_bus -e evm:',
        ),
      )
    if (process.env.DMESG) console.log(await guest('sudo dmesg | grep -v -e acpiphp -e BAR -e pci_bus -e evm:'))
    if (process.env.HOLD) {
      // Experiments by hand: ssh in, then remove the file to go on.
      await writeFile(
        process.env.HOLD,
        `ssh -i ${key} -p ${booted.sshPort} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null box@127.0.0.1\n`,
      )
      while (existsSync(process.env.HOLD)) await new Promise((resolve) => setTimeout(resolve, 1000))
    }
    const haltStarted = performance.now()
    const {how} = await stopQemu({pidFile: files.pidFile, qmpSocket: files.qmpSocket, timeoutMs: 60_000})
    console.log(`stopped: ${how} in ${((performance.now() - haltStarted) / 1000).toFixed(1)} s`)
    clearInterval(serial.timer)
    if (process.env.SERIAL) console.log(serial.lines.join('\n'))
  }
} finally {
  if (!process.env.KEEP) await rm(work, {recursive: true, force: true})
}

/** Polls the serial log and stamps each new line with host seconds since QEMU start. */
function watchSerial(path: string, started: number) {
  const lines: string[] = []
  let offset = 0
  let partial = ''
  const timer = setInterval(async () => {
    const text = await readFile(path).catch(() => undefined)
    if (!text || text.length <= offset) return
    const stamp = ((performance.now() - started) / 1000).toFixed(2).padStart(6)
    const parts = (partial + text.subarray(offset).toString('utf8').replace(/\r/g, '')).split('\n')
    offset = text.length
    partial = parts.pop()!
    for (const line of parts) lines.push(`${stamp} | ${line}`)
  }, 100)
  return {lines, timer}
}
