import {access, constants, mkdir, readFile, rename, stat, writeFile} from 'node:fs/promises'
import {hostname, platform, release} from 'node:os'
import {join} from 'node:path'

import {BoxError, ExitCode} from '../../lib/core/errors.js'
import {findOnPath, missingProgramError, run, spawn} from '../../lib/core/exec.js'

/** The QEMU every machine runs on (and whose accelerators and version are asked here). */
export const QEMU_BINARY = 'qemu-system-x86_64'

export type Accel = 'kvm' | 'hvf' | 'tcg'
export const ACCELS: readonly Accel[] = ['kvm', 'hvf', 'tcg']

export interface AccelAttempt {
  accel: Accel
  ok: boolean
  ms: number
  reason?: string
}

export interface AccelResult {
  accel: Accel
  source: 'env' | 'cache' | 'probe'
  attempts: AccelAttempt[]
}

/**
 * The probe guest (source: probe-guest.S): a 64 KiB firmware that goes from the
 * reset vector through protected mode into long mode and then writes to QEMU's
 * isa-debug-exit port. A real-mode-only guest is not enough: on hosts where KVM is
 * broken the hang starts at the switch to protected mode, as the kernel does.
 */
const PROBE_GUEST_CODE =
  'fa2e660f0116c0000f20c06683c8010f22c066ea1a00ffff080066b810008ed88ec0bf0010000031c0b900100000f3abc7050010000003200000' +
  'c7050020000003300000c7051820000003400000c7050030000083000000c705f84f00008300e0ff0f20e083c8200f22e0b8001000000f22d8b9' +
  '800000c00f320d000100000f300f20c00d000000800f22c0ea9300ffff1800b042e6f4f4ebfd8db4000066900000000000000000ffff0000009a' +
  'cf00ffff00000092cf00ffff0000009aaf001f00a000ffff'
const PROBE_RESET_VECTOR = 'ea000000f0' // ljmp 0xf000:0000, at offset 0xfff0
/** isa-debug-exit turns the guest's 0x42 into QEMU exit status (0x42 << 1) | 1. */
const PROBE_EXIT_STATUS = 133

export function probeFirmware(): Buffer {
  const image = Buffer.alloc(0x10000, 0xf4) // hlt everywhere else
  Buffer.from(PROBE_GUEST_CODE, 'hex').copy(image, 0)
  Buffer.from(PROBE_RESET_VECTOR, 'hex').copy(image, 0xfff0)
  return image
}

export interface ProbeOptions {
  cacheDir: string
  qemuBinary?: string
  /** How long one accelerator gets before it counts as hung. */
  deadlineMs?: number
  /** Ignore the cached answer. */
  refresh?: boolean
  env?: NodeJS.ProcessEnv
}

/** Accelerators worth trying on this host, best first; TCG always last. */
export async function candidateAccels(): Promise<Accel[]> {
  if (platform() === 'darwin') return ['hvf', 'tcg']
  if (platform() === 'linux') {
    try {
      await access('/dev/kvm', constants.R_OK | constants.W_OK)
      return ['kvm', 'tcg']
    } catch {
      return ['tcg']
    }
  }
  return ['tcg']
}

/**
 * Which accelerator machines will use: BOX_ACCEL if set, else a cached probe result
 * for this host (keyed by kernel, QEMU version and /dev/kvm), else a fresh probe.
 */
export async function resolveAccel(options: ProbeOptions): Promise<AccelResult> {
  const env = options.env ?? process.env
  const forced = env.BOX_ACCEL
  if (forced) {
    if (!(ACCELS as readonly string[]).includes(forced)) {
      throw new BoxError(`BOX_ACCEL=${forced} is not an accelerator box knows`, {
        exitCode: ExitCode.USAGE,
        suggestions: [`set BOX_ACCEL to one of ${ACCELS.join(', ')}, or unset it to probe`],
      })
    }
    return {accel: forced as Accel, source: 'env', attempts: []}
  }
  const qemu = options.qemuBinary ?? QEMU_BINARY
  const candidates = await candidateAccels()
  // The default binary's version from its stat-keyed cache: no QEMU spawned for it at every start.
  const version = options.qemuBinary ? await qemuVersion(qemu) : (await hostQemu(options.cacheDir)).version
  const key = {host: hostname(), kernel: release(), qemu: version, candidates}
  const cacheFile = join(options.cacheDir, 'accel.json')
  if (!options.refresh) {
    const cached = await readCache(cacheFile)
    if (cached && JSON.stringify(cached.key) === JSON.stringify(key)) return {...cached.result, source: 'cache'}
  }
  await mkdir(options.cacheDir, {recursive: true})
  const firmwareFile = join(options.cacheDir, 'accel-probe.bin')
  await writeFile(firmwareFile, probeFirmware())
  const attempts: AccelAttempt[] = []
  for (const accel of candidates) {
    const attempt = await probeOnce(qemu, accel, firmwareFile, options.deadlineMs ?? 3000)
    attempts.push(attempt)
    if (attempt.ok) {
      const result: AccelResult = {accel, source: 'probe', attempts}
      await writeFile(cacheFile, `${JSON.stringify({key, result, probedAt: new Date().toISOString()}, null, 2)}\n`)
      return result
    }
  }
  throw new BoxError(
    `QEMU could not run a guest with any accelerator (${attempts.map((a) => `${a.accel}: ${a.reason}`).join('; ')})`,
    {
      suggestions: [
        'check the QEMU installation: qemu-system-x86_64 --version',
        'reinstall it: sudo apt-get install --reinstall qemu-system-x86',
      ],
    },
  )
}

/** Run the probe guest under one accelerator; a guest that does not exit by the deadline is hung. */
export async function probeOnce(
  qemu: string,
  accel: Accel,
  firmwareFile: string,
  deadlineMs: number,
): Promise<AccelAttempt> {
  const started = Date.now()
  const args = ['-accel', accel, '-bios', firmwareFile, ...probeMachineArgs()]
  const child = spawn(qemu, args, {stdin: 'ignore', reject: false, timeout: deadlineMs, killSignal: 'SIGKILL'})
  const result = await child.catch((error: unknown) => error as {code?: string})
  const ms = Date.now() - started
  if ((result as {code?: string}).code === 'ENOENT') throw missingProgramError(qemu)
  const r = result as {exitCode?: number; timedOut?: boolean; stderr?: string}
  if (r.timedOut) return {accel, ok: false, ms, reason: `no answer within ${deadlineMs} ms (guest hung)`}
  if (r.exitCode === PROBE_EXIT_STATUS) return {accel, ok: true, ms}
  const message = String(r.stderr ?? '')
    .split('\n')
    .find((line) => line.trim() && !line.includes('warning:'))
  return {accel, ok: false, ms, reason: message?.trim() || `qemu exited with ${r.exitCode}`}
}

function probeMachineArgs(): string[] {
  return [
    '-machine',
    'pc',
    '-m',
    '16',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-serial',
    'none',
    '-device',
    'isa-debug-exit,iobase=0xf4,iosize=0x04',
  ]
}

export interface HostQemu {
  version: string
  /** The versioned machine type `-machine pc` stands for. */
  pcMachineType: string
}

/**
 * QEMU's version and what `pc` means, cached per binary (size and mtime: an upgrade
 * replaces the file), so starting a worker does not spawn QEMU twice to ask.
 */
export async function hostQemu(cacheDir: string): Promise<HostQemu> {
  const binary = (await findOnPath(QEMU_BINARY)) ?? QEMU_BINARY
  const info = await stat(binary).catch(() => undefined)
  const key = `${binary}:${info?.size}:${info?.mtimeMs}`
  const cacheFile = join(cacheDir, 'qemu-host.json')
  try {
    const cached = JSON.parse(await readFile(cacheFile, 'utf8')) as {key: string} & HostQemu
    if (cached.key === key) return {version: cached.version, pcMachineType: cached.pcMachineType}
  } catch {}
  const [version, machines] = await Promise.all([
    qemuVersion(QEMU_BINARY),
    run(QEMU_BINARY, ['-machine', 'help'], {timeout: 10_000, purpose: 'listing QEMU machine types'}),
  ])
  // "pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)"
  const pcMachineType = /^pc\s.*\(alias of ([\w.-]+)\)/m.exec(String(machines.stdout))?.[1] ?? 'pc'
  const result = {version, pcMachineType}
  await writeFile(`${cacheFile}.${process.pid}`, JSON.stringify({key, ...result}))
    .then(() => rename(`${cacheFile}.${process.pid}`, cacheFile))
    .catch(() => {})
  return result
}

async function qemuVersion(qemu: string): Promise<string> {
  // run's errors are BoxErrors: a missing QEMU names its package, a failing one its command.
  const {stdout} = await run(qemu, ['--version'], {timeout: 10_000, purpose: 'asking QEMU its version'})
  return /version ([\d.]+)/.exec(stdout)?.[1] ?? stdout.split('\n')[0]!
}

async function readCache(file: string): Promise<{key: unknown; result: AccelResult} | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8'))
  } catch {
    return undefined
  }
}

/**
 * TCG's CPU: `max` (every feature TCG emulates, so guests built for newer CPUs run) without
 * two that only cost time under emulation. With ERMS, the guest kernel and glibc copy and
 * clear memory with `rep movsb`/`rep stosb`, which TCG runs one byte per loop; without it,
 * eight bytes at a time. LA57 makes every page walk five levels deep. Measured here (Debian
 * 12 reference box, QEMU 7.2, bench/tcg-cpu.sh): sshd listening at 15.4–16.3 s of guest
 * uptime instead of 18.2–20.2 s with plain `max`.
 */
export const TCG_CPU = 'max,la57=off,erms=off'

/** QEMU options for an accelerator: the matching CPU model. */
export function accelArgs(accel: Accel): string[] {
  switch (accel) {
    case 'kvm':
    case 'hvf':
      return ['-accel', accel, '-cpu', 'host']
    case 'tcg':
      return ['-accel', 'tcg,thread=multi', '-cpu', TCG_CPU]
  }
}
