/**
 * `box add NAME IMAGE.qcow2|IMAGE.img`: a bare cloud image (what distributions publish for
 * OpenStack, Lima, Multipass) wrapped into a stored box. The image has no login of its own:
 * its metadata says `cloud_init: true`, and `box up` hands it a NoCloud seed at every boot
 * (lib/box/cloud-init.ts). Atomic like any import: the box is made in the store's scratch
 * space and renamed into place.
 */
import {copyFile, constants, mkdir, rm, stat, writeFile} from 'node:fs/promises'
import {basename, join, resolve} from 'node:path'

import {readImageRange} from '../box/disk-image.js'
import type {BoxMetadata} from '../box/metadata.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {run} from '../core/exec.js'
import type {Progress} from '../core/progress.js'
import {exists} from '../core/fs.js'
import {boxPath, validateBoxName, validateBoxVersion} from './layout.js'
import {newScratch, placeStagedBox} from './import.js'
import type {StoredBox} from './query.js'

/** The login user box's seed creates when the Boxfile names none (ssh.username). */
export const CLOUD_IMAGE_USER = 'box'

/** File names `box add` takes as a bare disk image rather than a .box. */
export const DISK_IMAGE_NAME = /\.(qcow2|img|raw)$/i

export interface ImageInfo {
  format: string
  virtualSize: number
  backingFile?: string
}

/** What qemu-img makes of a file (its format probe reads the headers only). */
export async function imageInfo(file: string): Promise<ImageInfo> {
  const {stdout} = await run('qemu-img', ['info', '--output=json', file], {
    purpose: `reading the disk image ${file}`,
  })
  const info = JSON.parse(stdout) as {format: string; 'virtual-size': number; 'backing-filename'?: string}
  return {format: info.format, virtualSize: info['virtual-size'], backingFile: info['backing-filename']}
}

/** Whether the first sectors hold a partition table: an MBR boot signature (also GPT's protective MBR) or a GPT header. */
export function hasPartitionTable(head: Buffer): boolean {
  if (head.length >= 520 && head.toString('latin1', 512, 520) === 'EFI PART') return true
  return head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa
}

export async function addCloudImage(options: {
  dataDir: string
  name: string
  file: string
  version?: string
  provider?: string
  force?: boolean
  progress?: Progress
  signal?: AbortSignal
}): Promise<StoredBox> {
  const {dataDir, name, force = false, progress} = options
  validateBoxName(name)
  const version = options.version ?? '0'
  validateBoxVersion(version)
  if (options.provider !== undefined && options.provider !== 'qemu' && options.provider !== 'libvirt')
    throw new BoxError(`a cloud image is stored as a qemu box, not for ${options.provider}`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['add it without --provider'],
    })
  const file = resolve(options.file)
  if (!(await stat(file).catch(() => undefined))?.isFile())
    throw new BoxError(`disk image not found: ${file}`, {exitCode: ExitCode.USAGE})

  const info = await imageInfo(file)
  if (info.format !== 'qcow2' && info.format !== 'raw')
    throw new BoxError(`${file} is a ${info.format} image; box takes cloud images in qcow2 or raw`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`convert it: qemu-img convert -O qcow2 ${file} IMAGE.qcow2`],
    })
  if (info.backingFile)
    throw new BoxError(`${file} is a qcow2 overlay on ${info.backingFile}, not a whole disk image`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`flatten it first: qemu-img convert -O qcow2 ${file} IMAGE.qcow2`],
    })
  const head = await readImageRange(file, info.format, 0, Math.min(1024, info.virtualSize))
  if (!hasPartitionTable(head))
    throw new BoxError(
      `${file} is not a disk image: its first sectors hold no partition table (no MBR boot signature, no GPT header)`,
      {
        exitCode: ExitCode.USAGE,
        suggestions: [
          'a cloud image is a whole bootable disk (partition table, boot loader, root filesystem), such as a distribution’s genericcloud qcow2',
          'a .box (tar with metadata.json) is added by its .box name',
        ],
      },
    )

  if (!force && (await exists(boxPath(dataDir, {name, version, provider: 'qemu'}))))
    throw new BoxError(`box ${name} ${version} (qemu) is already installed`, {
      suggestions: ['add --force to replace it', 'or give it another version with --box-version'],
    })
  const scratch = await newScratch(dataDir)
  try {
    const staged = join(scratch, 'box')
    await mkdir(staged)
    const stage = progress?.stage(`Storing the cloud image ${basename(file)} as ${name}`)
    try {
      const disk = join(staged, 'box.img')
      // A qcow2 is stored as it is (a reflink where the filesystem can); raw becomes qcow2, holes and all.
      if (info.format === 'qcow2') await copyFile(file, disk, constants.COPYFILE_FICLONE)
      else
        await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', file, disk], {
          purpose: `converting ${file} to qcow2`,
        })
      stage?.done()
    } catch (error) {
      stage?.fail()
      throw error
    }
    options.signal?.throwIfAborted()
    const metadata: BoxMetadata = {
      provider: 'qemu',
      format: 'qcow2',
      virtual_size: Math.ceil(info.virtualSize / 2 ** 30),
      box: {version, user: CLOUD_IMAGE_USER, kernel_args: '', cloud_init: true},
    }
    await writeFile(join(staged, 'metadata.json'), `${JSON.stringify(metadata, null, 2)}\n`)
    return await placeStagedBox({
      dataDir,
      scratch,
      staged,
      box: {name, version, provider: 'qemu'},
      source: file,
      force,
    })
  } finally {
    await rm(scratch, {recursive: true, force: true})
  }
}
