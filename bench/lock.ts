/** The shared QEMU lock for benches that boot guests between other work (HELPERS.md). */
import {once} from 'node:events'
import {execa} from 'execa'

/** The lock file (BENCH_LOCK, default /tmp/box-qemu.lock). */
export const QEMU_LOCK = process.env.BENCH_LOCK ?? '/tmp/box-qemu.lock'

/**
 * Run `fn` holding the QEMU lock. The lock is held by a `flock` child of this process
 * (not by a descriptor this process owns), so a QEMU that `box up` leaves running does not
 * inherit it; it is given back when `fn` ends, or when this process dies (the child's stdin
 * closes). Time inside `fn`: the wait for the lock is not part of what is measured.
 */
export async function withQemuLock<T>(fn: () => Promise<T>): Promise<T> {
  const holder = execa('flock', [QEMU_LOCK, 'sh', '-c', 'echo held && exec cat >/dev/null'], {
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'inherit',
  })
  holder.catch(() => undefined)
  const held = once(holder.stdout!, 'data')
  await Promise.race([
    held,
    holder.then(() => {
      throw new Error(`flock ${QEMU_LOCK} ended before the lock was held`)
    }),
  ])
  try {
    return await fn()
  } finally {
    holder.stdin!.end()
    await holder
  }
}
