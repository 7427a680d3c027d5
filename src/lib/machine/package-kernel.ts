/** The kernel and initrd a packaged box ships for direct boot: the ones grub would boot from the image. */
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {copyFile, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {copyImageRange, dumpExtFile, listExtDirectory, parseMbr, readImageRange} from '../box/disk-image.js'
import type {BoxMetadata} from '../box/metadata.js'
import type {Progress} from '../core/progress.js'
import type {MachineRecord} from './context.js'

/** Where the kernel and initrd came from: the image's /boot, or the source box (unchanged or unreadable /boot). */
export interface ShippedKernel {
  from: 'image' | 'source-box'
  file?: string
  changed: boolean
}

/** The newest kernel in /boot is the one grub boots; direct boot must use the same. */
const KERNEL_PATTERN = /^vmlinuz-(.+)$/

/**
 * Direct kernel boot must use the kernel grub would boot: the newest in the image's
 * /boot (a maintainer may have upgraded it in the origin). Read it from the /boot
 * partition; when that cannot be read, ship the source box's kernel and say so.
 */
export async function shipKernel(
  image: string,
  record: MachineRecord,
  metadata: BoxMetadata,
  workDir: string,
  progress: Progress,
  signal?: AbortSignal,
): Promise<ShippedKernel> {
  const kernelName = metadata.box!.kernel!
  const initrdName = metadata.box!.initrd
  const fromSource = async (why: string): Promise<ShippedKernel> => {
    progress.warn(`${why}; shipping the source box's kernel${initrdName ? ' and initrd' : ''}`)
    await copyFile(join(record.box.path, kernelName), join(workDir, kernelName))
    if (initrdName) await copyFile(join(record.box.path, initrdName), join(workDir, initrdName))
    return {from: 'source-box', changed: false}
  }
  try {
    const partitions = parseMbr(await readImageRange(image, 'qcow2', 0, 512))
    const boot =
      partitions.find((partition) => partition.bootable && partition.type === 0x83) ??
      partitions.find((partition) => partition.type === 0x83)
    if (!boot) return await fromSource('the disk has no /boot partition box can read')
    const bootImage = join(workDir, 'boot.raw')
    await copyImageRange(image, 'qcow2', boot.offset, boot.size, bootImage, signal)
    try {
      const entries = await listExtDirectory(bootImage, '/')
      const kernels = entries
        .map((entry) => ({entry, version: KERNEL_PATTERN.exec(entry.name)?.[1]}))
        .filter(
          (kernel): kernel is {entry: typeof kernel.entry; version: string} =>
            kernel.version !== undefined && (kernel.entry.mode & 0o170000) === 0o100000,
        )
        .filter((kernel) => !initrdName || entries.some((entry) => entry.name === `initrd.img-${kernel.version}`))
        .sort((a, b) => compareKernelVersions(a.version, b.version))
      const newest = kernels.at(-1)
      if (!newest) return await fromSource("no kernel with an initrd found in the image's /boot")
      await dumpExtFile(bootImage, `/${newest.entry.name}`, workDir, kernelName)
      if (initrdName) await dumpExtFile(bootImage, `/initrd.img-${newest.version}`, workDir, initrdName)
      const changed =
        (await sha256File(join(workDir, kernelName))) !==
        (await sha256File(join(record.box.path, kernelName)).catch(() => ''))
      if (changed)
        progress.info(
          `the kernel changed in the origin: shipping ${newest.entry.name} from the image's /boot for direct boot`,
        )
      return {from: 'image', file: newest.entry.name, changed}
    } finally {
      await rm(bootImage, {force: true})
    }
  } catch (error) {
    if (signal?.aborted) throw signal.reason
    return fromSource(`cannot read /boot from the image (${(error as Error).message})`)
  }
}

/** Kernel versions as `sort -V` orders them ("6.1.0-28-cloud-amd64" < "6.1.0-31-cloud-amd64"). */
export function compareKernelVersions(a: string, b: string): number {
  const parts = (text: string) => text.split(/(\d+)/).filter(Boolean)
  const left = parts(a)
  const right = parts(b)
  for (let i = 0; i < Math.max(left.length, right.length); i++) {
    const x = left[i]
    const y = right[i]
    if (x === undefined) return -1
    if (y === undefined) return 1
    if (x === y) continue
    const numeric = /^\d+$/.test(x) && /^\d+$/.test(y)
    return numeric ? Number(x) - Number(y) : x < y ? -1 : 1
  }
  return 0
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}
