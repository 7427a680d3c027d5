import {open, readFile, rm, stat} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'

import {BoxError} from './errors.js'

/** Whether a process exists (EPERM: it does, under another user). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

export interface LockOptions {
  /** How long to wait for a live owner to let go; 0 fails at once. */
  waitMs?: number
  /** Pause between attempts (short for locks held for milliseconds). */
  pollMs?: number
  /** The error for a lock a live process holds. */
  busy: (ownerPid: number) => BoxError
}

/** A lock file still without a pid after this long was left by a writer that died mid-create. */
const UNWRITTEN_LOCK_MS = 5000

/**
 * An exclusive lock file (O_EXCL) holding the owner's pid. A lock whose owner is dead
 * (a crash, a SIGKILL) is taken over; a live one is waited for up to `waitMs`.
 * Returns the release function.
 */
export async function acquireLock(file: string, options: LockOptions): Promise<() => Promise<void>> {
  const deadline = Date.now() + (options.waitMs ?? 0)
  for (;;) {
    try {
      const handle = await open(file, 'wx', 0o600)
      await handle.writeFile(`${process.pid}\n`)
      await handle.close()
      return async () => {
        await rm(file, {force: true})
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
    const [text, info] = await Promise.all([readFile(file, 'utf8').catch(() => ''), stat(file).catch(() => undefined)])
    if (!info) continue // released meanwhile
    const owner = Number.parseInt(text, 10)
    if (Number.isInteger(owner) && owner > 0) {
      if (!processAlive(owner)) {
        await rm(file, {force: true})
        continue
      }
      if (Date.now() >= deadline) throw options.busy(owner)
    } else if (Date.now() - info.mtimeMs > UNWRITTEN_LOCK_MS) {
      // No pid yet: another process is between create and write, unless it died there.
      await rm(file, {force: true})
      continue
    }
    await sleep(options.pollMs ?? 200)
  }
}
