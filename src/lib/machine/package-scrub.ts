/**
 * The disk side of `box package`, on a throwaway overlay over the machine's disk (the
 * machine itself is never touched): which parts the machine changed, the snapshot and swap
 * areas zeroed, /persistent put back as the source box shipped it, the login keys reset to
 * the insecure key, and the chain flattened into one standalone qcow2.
 */
import {copyFile, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {copyImageRange, imageRangeSpec, lvRangesOnPv, readLvmOnDisk, type ExtentRange} from '../box/disk-image.js'
import type {LvmLayout} from '../box/metadata.js'
import {BoxError, tail} from '../core/errors.js'
import {run, spawn, toBoxError} from '../core/exec.js'
import {PROJECT_ROOT} from '../core/paths.js'
import {formatBytes, type Progress} from '../core/progress.js'

export interface DiskSizes {
  virtual: number
  /** Bytes a standalone qcow2 of the chain needs (qemu-img measure). */
  required: number
}

export async function measureDisk(disk: string): Promise<DiskSizes> {
  const exists = await stat(disk).catch(() => undefined)
  if (!exists)
    throw new BoxError(`the machine's disk ${disk} is missing`, {
      suggestions: ['destroy the machine and create it again: box destroy, box up'],
    })
  const info = JSON.parse(
    (await run('qemu-img', ['info', '--output=json', disk], {purpose: 'reading the machine disk'})).stdout,
  ) as {'virtual-size': number}
  const measured = JSON.parse(
    (await run('qemu-img', ['measure', '--output=json', '-O', 'qcow2', disk], {purpose: 'measuring the machine disk'}))
      .stdout,
  ) as {required: number}
  return {virtual: info['virtual-size'], required: measured.required}
}

interface MapEntry {
  start: number
  length: number
  depth: number
  present: boolean
}

/** Whether the machine's own overlay (depth 0) holds any cluster inside `ranges`. */
export async function overlayTouches(disk: string, ranges: ExtentRange[]): Promise<boolean> {
  const map = JSON.parse(
    (await run('qemu-img', ['map', '--output=json', disk], {purpose: 'reading the machine disk'})).stdout,
  ) as MapEntry[]
  const chain = JSON.parse(
    (await run('qemu-img', ['info', '--backing-chain', '--output=json', disk], {purpose: 'reading the machine disk'}))
      .stdout,
  ) as unknown[]
  const boxDepth = chain.length - 1
  return map.some(
    (entry) =>
      entry.depth < boxDepth &&
      entry.present &&
      ranges.some((range) => entry.start < range.offset + range.size && range.offset < entry.start + entry.length),
  )
}

export async function overlayHasData(disk: string): Promise<boolean> {
  return overlayTouches(disk, [{offset: 0, size: Number.MAX_SAFE_INTEGER}])
}

/**
 * /persistent is the machine's own state (its ssh host key, login keys, setup answers):
 * a new box ships the source box's persistent volume, block for block, so every
 * machine made from it gets its own host key and nothing of the maintainer's.
 */
export async function restorePersistent(
  scrubbed: string,
  sourceBoxDir: string,
  lvm: LvmLayout,
  ranges: ExtentRange[],
  progress: Progress,
): Promise<void> {
  const sourceImage = join(sourceBoxDir, 'box.img')
  const source = await readLvmOnDisk(sourceImage, 'qcow2').catch(() => undefined)
  const sourceRanges = source
    ? (lvRangesOnPv(source.metadata, lvm.vg, lvm.persistent, source.pvUuid) ?? []).map((range) => ({
        ...range,
        offset: range.offset + source.pvOffset,
      }))
    : []
  const same =
    ranges.length === 1 &&
    sourceRanges.length === 1 &&
    ranges[0]!.offset === sourceRanges[0]!.offset &&
    ranges[0]!.size === sourceRanges[0]!.size
  if (!same) {
    progress.warn(
      `${lvm.vg}/${lvm.persistent} is not where the source box has it: /persistent is packaged as the machine left it (its ssh host key included)`,
    )
    return
  }
  const {offset, size} = ranges[0]!
  await run(
    'qemu-img',
    [
      'convert',
      '-n',
      imageRangeSpec(sourceImage, 'qcow2', offset, size),
      imageRangeSpec(scrubbed, 'qcow2', offset, size),
    ],
    {purpose: "restoring the source box's /persistent"},
  )
}

/**
 * \`box up\` replaced the insecure key by the machine's own key in the login user's
 * authorized_keys — in the origin, when it was booted with --base. A box must ship the
 * documented insecure key again (as Vagrant boxes do) and never the maintainer's key:
 * the root filesystem is copied out, its journal replayed by e2fsck, the file replaced
 * with debugfs, and the filesystem written back into the throwaway overlay.
 */
export async function resetLoginKeys(
  scrubbed: string,
  ranges: ExtentRange[],
  user: string,
  workDir: string,
): Promise<void> {
  if (ranges.length !== 1)
    throw new BoxError('the root volume is split into several segments: box cannot reset its login keys')
  const {offset, size} = ranges[0]!
  const rootImage = join(workDir, 'root.raw')
  await copyImageRange(scrubbed, 'qcow2', offset, size, rootImage)
  try {
    const fsckArgs = ['-y', rootImage]
    const fsck = await spawn('e2fsck', fsckArgs, {reject: false, stdin: 'ignore'})
    if (fsck.failed && fsck.exitCode === undefined)
      throw toBoxError('e2fsck', fsckArgs, fsck, "checking the origin's root filesystem")
    // 0: clean, 1: errors fixed (a replayed journal); anything else is a damaged root.
    if ((fsck.exitCode ?? 8) > 1)
      throw new BoxError(`the origin's root filesystem is damaged (e2fsck exit ${fsck.exitCode})`, {
        detail: tail(`${fsck.stdout}\n${fsck.stderr}`),
        suggestions: ['boot it with `box up --base`, repair it, halt it cleanly, then package again'],
      })
    const passwd = (
      await run('debugfs', ['-R', 'cat /etc/passwd', rootImage], {purpose: 'reading /etc/passwd of the origin'})
    ).stdout
    const fields = passwd
      .split('\n')
      .map((line) => line.split(':'))
      .find((entry) => entry[0] === user)
    if (!fields || fields.length < 7) throw new BoxError(`the login user ${user} is not in the origin's /etc/passwd`)
    const [uid, gid, home] = [fields[2]!, fields[3]!, fields[5]!]
    if (!/^\d+$/.test(uid) || !/^\d+$/.test(gid) || !/^\/[A-Za-z0-9._/-]*$/.test(home))
      throw new BoxError(`unusual passwd entry for ${user}: ${fields.join(':')}`)
    await copyFile(join(PROJECT_ROOT, 'static', 'insecure_key.pub'), join(workDir, 'insecure_key.pub'))
    const sshDir = `${home.replace(/\/$/, '')}/.ssh`
    // debugfs requests are words, not shell: the names were checked above. Missing files make rm/mkdir complain harmlessly.
    const requests = [
      `mkdir ${sshDir}`,
      `sif ${sshDir} mode 040700`,
      `sif ${sshDir} uid ${uid}`,
      `sif ${sshDir} gid ${gid}`,
      `cd ${sshDir}`,
      'rm authorized_keys',
      'write insecure_key.pub authorized_keys',
      'sif authorized_keys mode 0100600',
      `sif authorized_keys uid ${uid}`,
      `sif authorized_keys gid ${gid}`,
    ]
    await writeFile(join(workDir, 'debugfs.requests'), `${requests.join('\n')}\n`)
    await run('debugfs', ['-w', '-f', 'debugfs.requests', rootImage], {
      cwd: workDir,
      purpose: 'putting the insecure key back',
    })
    const check = (
      await run('debugfs', ['-R', `cat ${sshDir}/authorized_keys`, rootImage], {purpose: 'checking the login keys'})
    ).stdout
    const insecure = (await readFile(join(workDir, 'insecure_key.pub'), 'utf8')).trim()
    if (check.trim() !== insecure)
      throw new BoxError(`could not put the insecure key back into ${sshDir}/authorized_keys of the origin`)
    await run('qemu-img', ['convert', '-n', '-f', 'raw', rootImage, imageRangeSpec(scrubbed, 'qcow2', offset, size)], {
      purpose: 'writing the origin back',
    })
  } finally {
    await rm(rootImage, {force: true})
  }
}

/** Swap's first page holds its signature (mkswap's work); the rest is scratch. */
export function skipSwapSignature(range: ExtentRange): ExtentRange {
  const page = 4096
  return {offset: range.offset + page, size: Math.max(0, range.size - page)}
}

/** overlay + backing chain → one standalone qcow2; zero and unallocated clusters are left out. */
export async function flattenDisk(
  source: string,
  image: string,
  virtualSize: number,
  progress: Progress,
  signal?: AbortSignal,
): Promise<void> {
  const stage = progress.stage(`flattening the disk (${formatBytes(virtualSize)} virtual)`)
  const args = ['convert', '-p', '-O', 'qcow2', '-W', source, image]
  const child = spawn('qemu-img', args, {cancelSignal: signal, stdin: 'ignore', buffer: {stdout: false}})
  child.stdout?.on('data', (chunk: Buffer) => {
    // -p redraws "(12.34/100%)" in place.
    const matches = [...chunk.toString().matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)]
    const last = matches.at(-1)
    if (last) stage.update(`${Number(last[1]).toFixed(0)} %`)
  })
  try {
    await child
    stage.done(formatBytes((await stat(image)).size))
  } catch (error) {
    stage.fail()
    if (signal?.aborted) throw signal.reason
    throw toBoxError('qemu-img', args, error, 'flattening the disk')
  }
}
