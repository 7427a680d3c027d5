/**
 * Mount hygiene for chroots and temp trees: a tree is never removed while anything
 * is mounted below it (a bind of /dev under a chroot would take the host's device
 * nodes with it).
 */
import {readFile, rm} from 'node:fs/promises'
import {resolve} from 'node:path'

import {BoxError} from '../lib/core/errors.js'
import {run} from '../lib/core/exec.js'

/** Mount points at or below `dir`, deepest first. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const root = resolve(dir)
  const text = await readFile('/proc/self/mountinfo', 'utf8')
  const points = text
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((point): point is string => Boolean(point))
    .map((point) => point.replace(/\\(\d{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8))))
    .filter((point) => point === root || point.startsWith(`${root}/`))
  return [...new Set(points)].sort((a, b) => b.length - a.length)
}

/** Unmount everything at or below `dir` (lazily, so a busy mount cannot block cleanup). */
export async function unmountUnder(dir: string): Promise<void> {
  for (const point of await mountsUnder(dir)) {
    await run('umount', ['-l', point], {purpose: `unmounting ${point}`}).catch(() => undefined)
  }
  const left = await mountsUnder(dir)
  if (left.length > 0)
    throw new BoxError(`cannot unmount ${left.join(', ')}; not removing ${dir}`, {
      suggestions: [`unmount it by hand: umount -l ${left[0]}`],
    })
}

/** rm -rf that first makes sure nothing is mounted inside. */
export async function removeTree(dir: string): Promise<void> {
  await unmountUnder(dir)
  await rm(dir, {recursive: true, force: true})
}
