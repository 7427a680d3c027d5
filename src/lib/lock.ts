import {open, readFile, rm} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'

import {BoxError} from './errors.js'

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * An exclusive lock file holding the owner's pid. A lock whose owner is dead is
 * taken over; a live one is waited for up to `waitMs`, then `what` is reported busy.
 */
export async function acquireLock(file: string, what: string, waitMs = 3000): Promise<() => Promise<void>> {
  const deadline = Date.now() + waitMs
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
    const owner = Number.parseInt(await readFile(file, 'utf8').catch(() => ''), 10)
    if (!Number.isInteger(owner) || !alive(owner)) {
      await rm(file, {force: true})
      continue
    }
    if (Date.now() > deadline) {
      throw new BoxError(`${what} is busy: another box command (pid ${owner}) is working on it`, {
        suggestions: ['wait for that command to finish, then try again'],
      })
    }
    await sleep(200)
  }
}
