/**
 * Boxes converted between the two providers' formats, disk by `qemu-img convert`:
 *
 * - a box built by box (vagrant-libvirt format: box.img, qcow2) for VirtualBox: the disk as
 *   VDI, metadata provider "virtualbox" (the provider builds a VM around it, no OVF);
 * - a Vagrant VirtualBox box (box.ovf + VMDK) for QEMU: the OVF's disk as box.img (qcow2),
 *   metadata provider "libvirt". Such a box has no kernel to boot directly, so QEMU boots
 *   its own boot loader from the disk.
 *
 * The store calls these on `box add` (and on a machine's first `up`) and owns atomicity:
 * it converts into scratch space and renames the result into place.
 */
import {copyFile, mkdir, readFile, readdir, rename, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError, ExitCode} from '../../lib/core/errors.js'
import {run} from '../../lib/core/exec.js'
import type {ConvertOptions} from '../provider.js'
import {ovfDisks} from './ovf.js'

/** The disk a converted box carries (no OVF: the provider builds the VM around it). */
export const CONVERTED_DISK = 'box.vdi'

export interface ConvertedBox {
  dir: string
  disk: string
}

export type {ConvertOptions} from '../provider.js'

/**
 * Convert `boxDir` (metadata.json + box.img qcow2) for VirtualBox, into `targetDir`
 * (default: in place, replacing box.img). box's own metadata keys (user, LVM layout)
 * are kept; the kernel/initrd files are not needed (VirtualBox boots through grub) but
 * are copied so the box stays whole. Writes to temporary names first, so an
 * interrupted conversion leaves no half box.
 */
export async function convertForVirtualBox(
  boxDir: string,
  targetDir = boxDir,
  options: ConvertOptions = {},
): Promise<ConvertedBox> {
  const metadata = await readMetadata(boxDir)
  if (metadata.provider === 'virtualbox') throw new BoxError(`${boxDir} is already a VirtualBox box`)
  if (metadata.format !== undefined && metadata.format !== 'qcow2') {
    throw new BoxError(
      `cannot convert ${boxDir} for VirtualBox: its disk format is ${String(metadata.format)}, not qcow2`,
    )
  }
  await mkdir(targetDir, {recursive: true})
  const disk = join(targetDir, CONVERTED_DISK)
  // -O vdi: VirtualBox's native format (differencing images for linked clones work best on it).
  await convertDisk(
    {
      source: join(boxDir, 'box.img'),
      sourceFormat: 'qcow2',
      output: disk,
      outputFormat: 'vdi',
      purpose: 'converting the box disk to VDI for VirtualBox',
    },
    options,
  )
  if (targetDir !== boxDir) await copyOtherFiles(boxDir, targetDir, new Set(['box.img']))
  await writeMetadata(targetDir, {
    ...metadata,
    provider: 'virtualbox',
    format: 'vdi',
    converted_from: metadata.provider,
  })
  if (targetDir === boxDir) await rm(join(boxDir, 'box.img'), {force: true})
  return {dir: targetDir, disk}
}

/**
 * Convert a Vagrant VirtualBox box in `boxDir` (metadata provider "virtualbox", an .ovf
 * and its VMDK) into a libvirt box in `targetDir`: box.img (qcow2) from the OVF's disk,
 * metadata provider "libvirt" with `converted_from`. Boxes with several disks are refused:
 * the QEMU provider gives a machine one disk.
 */
export async function convertVirtualBoxForQemu(
  boxDir: string,
  targetDir: string,
  options: ConvertOptions = {},
): Promise<ConvertedBox> {
  const metadata = await readMetadata(boxDir)
  if (metadata.provider !== 'virtualbox')
    throw new BoxError(`${boxDir} is not a VirtualBox box (its provider is ${String(metadata.provider)})`)
  const names = await readdir(boxDir)
  const ovfs = names.filter((name) => name.endsWith('.ovf'))
  if (ovfs.length !== 1) {
    throw new BoxError(
      `cannot convert the VirtualBox box for QEMU: it has ${ovfs.length === 0 ? 'no .ovf descriptor' : `${ovfs.length} .ovf descriptors (${ovfs.join(', ')})`}`,
      {
        exitCode: ExitCode.USAGE,
        suggestions: ['a Vagrant VirtualBox box holds one box.ovf and its disk (.vmdk)'],
      },
    )
  }
  const ovf = ovfs[0]!
  const disks = ovfDisks(await readFile(join(boxDir, ovf), 'utf8'), ovf)
  if (disks.length !== 1) {
    throw new BoxError(
      `cannot convert the VirtualBox box for QEMU: ${ovf} describes ${disks.length} disks (${disks.map((disk) => disk.file).join(', ') || 'none'}), and a QEMU machine has one`,
      {
        exitCode: ExitCode.USAGE,
        suggestions: [
          'keep it for VirtualBox only: box add NAME FILE --no-convert (and provider: virtualbox in the Boxfile)',
        ],
      },
    )
  }
  const vmdk = disks[0]!.file
  if (!names.includes(vmdk))
    throw new BoxError(`the VirtualBox box is missing ${vmdk}, the disk ${ovf} names`, {exitCode: ExitCode.USAGE})
  await mkdir(targetDir, {recursive: true})
  const disk = join(targetDir, 'box.img')
  const virtualSize = await convertDisk(
    {
      source: join(boxDir, vmdk),
      sourceFormat: 'vmdk',
      output: disk,
      outputFormat: 'qcow2',
      purpose: 'converting the VirtualBox disk (VMDK) to qcow2 for QEMU',
    },
    options,
  )
  // The descriptor, its manifest and the VMDK describe the VirtualBox appliance only.
  await copyOtherFiles(boxDir, targetDir, new Set(names.filter((name) => /\.(ovf|mf|vmdk)$/.test(name))))
  // virtual_size: whole GiB, as vagrant-libvirt writes it.
  await writeMetadata(targetDir, {
    ...metadata,
    provider: 'libvirt',
    format: 'qcow2',
    virtual_size: Math.ceil(virtualSize / 2 ** 30),
    converted_from: 'virtualbox',
  })
  return {dir: targetDir, disk}
}

interface DiskConversion {
  source: string
  sourceFormat: string
  output: string
  outputFormat: string
  purpose: string
}

/**
 * `qemu-img convert -p` into `<output>.partial`, checked (format, same virtual size as the
 * source), then renamed. The source format is given, never probed (a probed raw image
 * could pass for anything). Returns the virtual size in bytes.
 */
async function convertDisk(conversion: DiskConversion, options: ConvertOptions): Promise<number> {
  const {source, sourceFormat, output, outputFormat, purpose} = conversion
  const partial = `${output}.partial`
  await rm(partial, {force: true})
  try {
    const sourceSize = (await imageInfo(source, sourceFormat)).virtualSize
    await run('qemu-img', ['convert', '-p', '-f', sourceFormat, '-O', outputFormat, source, partial], {
      purpose,
      cancelSignal: options.signal,
      // -p writes "    (12.34/100%)\r" to stdout as it goes.
      stdout: {
        binary: true,
        *transform(chunk: unknown) {
          for (const match of Buffer.from(chunk as Uint8Array)
            .toString('latin1')
            .matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g))
            options.onProgress?.(Number(match[1]))
        },
      },
    })
    const converted = await imageInfo(partial, outputFormat)
    if (converted.format !== outputFormat || converted.virtualSize !== sourceSize) {
      throw new BoxError(
        `${purpose} produced a wrong image: ${converted.format}, ${converted.virtualSize} bytes (expected ${outputFormat}, ${sourceSize} bytes)`,
      )
    }
    await rename(partial, output)
    return sourceSize
  } catch (error) {
    await rm(partial, {force: true})
    throw error
  }
}

async function imageInfo(image: string, format: string): Promise<{format: string; virtualSize: number}> {
  const {stdout} = await run('qemu-img', ['info', '--output=json', '-f', format, image], {purpose: `reading ${image}`})
  const info = JSON.parse(stdout) as {format: string; 'virtual-size': number}
  return {format: info.format, virtualSize: info['virtual-size']}
}

async function readMetadata(boxDir: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(join(boxDir, 'metadata.json'), 'utf8')) as Record<string, unknown>
}

async function writeMetadata(dir: string, metadata: Record<string, unknown>): Promise<void> {
  await writeFile(join(dir, 'metadata.json.partial'), `${JSON.stringify(metadata, null, 2)}\n`)
  await rename(join(dir, 'metadata.json.partial'), join(dir, 'metadata.json'))
}

/** Files that go with the box as they are (Vagrantfile, kernel, initrd); not metadata.json, the store's dotfiles or `skip`. */
async function copyOtherFiles(from: string, to: string, skip: Set<string>): Promise<void> {
  for (const entry of await readdir(from, {withFileTypes: true})) {
    if (!entry.isFile() || entry.name === 'metadata.json' || entry.name.startsWith('.') || skip.has(entry.name))
      continue
    await copyFile(join(from, entry.name), join(to, entry.name))
  }
}
