import {readdirSync, readFileSync} from 'node:fs'
import {readFile, rm} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'

import {BoxError} from '../../lib/core/errors.js'
import {run} from '../../lib/core/exec.js'
import {QEMU_BINARY} from './accel.js'
import {buildQemuArgs, optionValue, type QemuLaunchSpec} from './argv.js'
import {QmpClient} from './qmp.js'

/** QEMU could not bind a forwarded host port; the caller may pick another one. */
export class HostPortInUseError extends BoxError {}

/**
 * Start QEMU in the background (-daemonize: the parent exits once the guest is set up,
 * so startup errors still reach us) and return its pid.
 */
export async function launchQemu(spec: QemuLaunchSpec): Promise<number> {
  await rm(spec.qmpSocket, {force: true})
  try {
    await run(QEMU_BINARY, buildQemuArgs({...spec, daemonize: true}), {
      purpose: `starting QEMU for ${spec.name}`,
      stdin: 'ignore',
    })
  } catch (error) {
    const detail = (error as BoxError).detail ?? ''
    if (/host forwarding rule|Could not set up host forwarding/i.test(detail)) {
      throw new HostPortInUseError(`a forwarded host port of ${spec.name} is already in use`, {detail, cause: error})
    }
    throw error
  }
  const pid = await runningPid(spec.pidFile, spec.qmpSocket)
  if (!pid)
    throw new BoxError(`QEMU for ${spec.name} exited right after starting`, {
      suggestions: [`see the serial log: ${spec.serialLog}`],
    })
  return pid
}

/**
 * The pid of this machine's QEMU if it is running. The pid file alone is not proof:
 * after a crash the pid may belong to another process, so its command line must
 * name this machine's QMP socket.
 */
export async function runningPid(pidFile: string, qmpSocket: string): Promise<number | undefined> {
  let pid: number
  try {
    pid = Number.parseInt((await readFile(pidFile, 'utf8')).trim(), 10)
  } catch {
    return undefined
  }
  if (!Number.isInteger(pid) || pid <= 0) return undefined
  try {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8')
    return cmdline.includes(optionValue(qmpSocket)) ? pid : undefined
  } catch {
    return undefined
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  // A zombie whose threads are all gone has closed its files: its parent (init, for a
  // daemonized QEMU) just has not reaped it yet. Only the leader being a zombie is not
  // enough: QEMU's other threads may still be exiting, holding its files and image locks.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat[stat.lastIndexOf(')') + 2] !== 'Z' || readdirSync(`/proc/${pid}/task`).length > 1
  } catch {
    return false
  }
}

export async function waitForExit(pid: number, timeoutMs: number, pollMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (!isAlive(pid)) return true
    await sleep(pollMs)
  }
  return !isAlive(pid)
}

/**
 * SIGKILL, for a QEMU whose guest is thrown away (a snapshot restore replaces its disk and
 * its RAM): nothing it holds is kept, so there is nothing to let it finish, and `quit`
 * costs a QMP round trip and a coarse wait. Its disk layers below the running overlay were
 * flushed when they were frozen (QMP `stop` flushes). Resolves once it is gone, so its host
 * ports and files are free, and its pid file (stale or not) removed.
 */
export async function killQemu(options: {pidFile: string; qmpSocket: string}): Promise<boolean> {
  const pid = await runningPid(options.pidFile, options.qmpSocket)
  if (pid) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
    // Freeing 1 GiB of guest RAM takes a few milliseconds: poll finely.
    if (!(await waitForExit(pid, 5000, 5)))
      throw new BoxError(`QEMU (pid ${pid}) did not exit after SIGKILL`, {
        suggestions: ['see whether the process is stuck in the kernel (ps -o stat,wchan -p PID)'],
      })
  }
  await rm(options.pidFile, {force: true})
  return pid !== undefined
}

export interface StopResult {
  /** 'acpi' when the guest powered itself off, 'forced' when QEMU was told to quit or killed. */
  how: 'acpi' | 'forced' | 'not-running'
}

/**
 * ACPI power-down through QMP, then `quit` after the timeout (or at once with force),
 * then SIGKILL if QEMU still does not go away.
 */
export async function stopQemu(options: {
  pidFile: string
  qmpSocket: string
  timeoutMs: number
  force?: boolean
}): Promise<StopResult> {
  const pid = await runningPid(options.pidFile, options.qmpSocket)
  if (!pid) return {how: 'not-running'}
  if (!options.force) {
    try {
      const qmp = await QmpClient.connect(options.qmpSocket)
      await qmp.execute('system_powerdown')
      qmp.close()
      if (await waitForExit(pid, options.timeoutMs)) return {how: 'acpi'}
    } catch {
      // QMP unreachable: fall through to forcing.
    }
  }
  try {
    const qmp = await QmpClient.connect(options.qmpSocket, 2000)
    await qmp.execute('quit').catch(() => {})
    qmp.close()
  } catch {}
  if (!(await waitForExit(pid, 3000))) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
    await waitForExit(pid, 3000)
  }
  return {how: 'forced'}
}
