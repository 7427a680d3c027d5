/**
 * A box built by box (vagrant-libvirt format: box.img, qcow2) as a VirtualBox box: the
 * disk converted to VDI, metadata provider "virtualbox". Store code calls this on `add`.
 */
import {copyFile, mkdir, readFile, readdir, rename, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError} from '../../lib/errors.js'
import {run} from '../../lib/exec.js'

/** The disk a converted box carries (no OVF: the provider builds the VM around it). */
export const CONVERTED_DISK = 'box.vdi'

export interface ConvertedBox {
  dir: string
  disk: string
}

/**
 * Convert `boxDir` (metadata.json + box.img qcow2) for VirtualBox, into `targetDir`
 * (default: in place, replacing box.img). box's own metadata keys (user, LVM layout)
 * are kept; the kernel/initrd files are not needed (VirtualBox boots through grub) but
 * are copied so the box stays whole. Writes to temporary names first, so an
 * interrupted conversion leaves no half box.
 */
export async function convertForVirtualBox(boxDir: string, targetDir = boxDir, options: {signal?: AbortSignal} = {}): Promise<ConvertedBox> {
  const metadata = JSON.parse(await readFile(join(boxDir, 'metadata.json'), 'utf8')) as Record<string, unknown>
  if (metadata.provider === 'virtualbox') throw new BoxError(`${boxDir} is already a VirtualBox box`)
  if (metadata.format !== undefined && metadata.format !== 'qcow2') {
    throw new BoxError(`cannot convert ${boxDir} for VirtualBox: its disk format is ${String(metadata.format)}, not qcow2`)
  }
  await mkdir(targetDir, {recursive: true})
  const disk = join(targetDir, CONVERTED_DISK)
  const partial = `${disk}.partial`
  await rm(partial, {force: true})
  try {
    // -O vdi: VirtualBox's native format (differencing images for linked clones work best on it).
    await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'vdi', join(boxDir, 'box.img'), partial], {purpose: 'converting the box disk to VDI for VirtualBox', cancelSignal: options.signal})
    await rename(partial, disk)
  } catch (error) {
    await rm(partial, {force: true})
    throw error
  }
  if (targetDir !== boxDir) {
    for (const entry of await readdir(boxDir, {withFileTypes: true})) {
      if (!entry.isFile() || entry.name === 'box.img' || entry.name === 'metadata.json') continue
      await copyFile(join(boxDir, entry.name), join(targetDir, entry.name))
    }
  }
  const converted = {...metadata, provider: 'virtualbox', format: 'vdi', converted_from: metadata.provider}
  await writeFile(join(targetDir, 'metadata.json.partial'), `${JSON.stringify(converted, null, 2)}\n`)
  await rename(join(targetDir, 'metadata.json.partial'), join(targetDir, 'metadata.json'))
  if (targetDir === boxDir) await rm(join(boxDir, 'box.img'), {force: true})
  return {dir: targetDir, disk}
}
