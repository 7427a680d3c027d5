/**
 * Reading a guest disk image on the host, without root, loop devices or device-mapper
 * (these machines have none): byte ranges through qemu-img (any format, backing chain
 * included), the MBR partition table, the LVM2 on-disk label and text metadata (to find
 * where an LV's extents live), and files in an ext2/3/4 partition through debugfs.
 * `box package` uses this to drop the root snapshot's copy-on-write area and to take
 * the kernel from the image's own /boot.
 */
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError} from '../core/errors.js'
import {run} from '../core/exec.js'

const SECTOR = 512

/** A qemu block-layer description of bytes [offset, offset+size) of `image` (raw view of its guest disk). */
export function imageRangeSpec(image: string, format: string, offset: number, size: number): string {
  // A json: filename needs no escaping of commas or colons in paths, unlike -o style options.
  return `json:${JSON.stringify({driver: 'raw', offset, size, file: {driver: format, file: {driver: 'file', filename: image}}})}`
}

/** Copy a byte range of a disk image into a raw file (sparse: zero blocks stay holes). */
export async function copyImageRange(
  image: string,
  format: string,
  offset: number,
  size: number,
  dest: string,
  signal?: AbortSignal,
): Promise<void> {
  await run('qemu-img', ['convert', '-O', 'raw', imageRangeSpec(image, format, offset, size), dest], {
    purpose: 'reading the disk image',
    cancelSignal: signal,
  })
}

/** Read a small byte range of a disk image into memory. */
export async function readImageRange(image: string, format: string, offset: number, size: number): Promise<Buffer> {
  const dir = await mkdtemp(join(process.env.TMPDIR ?? '/tmp', 'box-range-'))
  try {
    const out = join(dir, 'range.raw')
    await copyImageRange(image, format, offset, size, out)
    return await readFile(out)
  } finally {
    await rm(dir, {recursive: true, force: true})
  }
}

export interface Partition {
  /** 1-based, as Linux numbers MBR primary partitions. */
  number: number
  type: number
  bootable: boolean
  /** Byte offset and size on the disk. */
  offset: number
  size: number
}

/** The primary partitions of an MBR (dos) partition table; [] when there is none (or it is GPT). */
export function parseMbr(sector0: Buffer): Partition[] {
  if (sector0.length < SECTOR || sector0[510] !== 0x55 || sector0[511] !== 0xaa) return []
  const partitions: Partition[] = []
  for (let i = 0; i < 4; i++) {
    const entry = sector0.subarray(446 + i * 16, 446 + (i + 1) * 16)
    const type = entry[4]!
    const start = entry.readUInt32LE(8)
    const count = entry.readUInt32LE(12)
    // 0xee is GPT's protective entry: not a real partition.
    if (type === 0 || type === 0xee || count === 0) continue
    partitions.push({number: i + 1, type, bootable: entry[0] === 0x80, offset: start * SECTOR, size: count * SECTOR})
  }
  return partitions
}

// ---------------------------------------------------------------------------------
// LVM2 on-disk format (lib/format_text/layout.h, lib/label/label.h in lvm2)

const LABEL_ID = 'LABELONE'
const MDA_MAGIC = ' LVM2 x[5A%r0N*>'

export interface PhysicalVolumeLabel {
  /** The PV's uuid without dashes (as stored in the label). */
  uuid: string
  /** Metadata areas: byte offset from the PV start, and size. */
  metadataAreas: Array<{offset: number; size: number}>
}

/** The LVM label in the first four sectors of a PV; undefined when it is not a PV. */
export function parsePvLabel(head: Buffer): PhysicalVolumeLabel | undefined {
  for (let sector = 0; sector < 4; sector++) {
    const base = sector * SECTOR
    if (head.length < base + SECTOR) break
    if (head.toString('latin1', base, base + 8) !== LABEL_ID) continue
    const pvHeader = base + head.readUInt32LE(base + 20)
    const uuid = head.toString('latin1', pvHeader, pvHeader + 32)
    // After the uuid and device size: data area locations, a zero entry, then metadata area locations, a zero entry.
    let at = pvHeader + 40
    const readList = () => {
      const list: Array<{offset: number; size: number}> = []
      for (; at + 16 <= head.length;) {
        const offset = Number(head.readBigUInt64LE(at))
        const size = Number(head.readBigUInt64LE(at + 8))
        at += 16
        if (offset === 0) break
        list.push({offset, size})
      }
      return list
    }
    readList() // data areas
    return {uuid, metadataAreas: readList()}
  }
  return undefined
}

/**
 * The current metadata text from a metadata area (the area starts with its header; the
 * text sits in a circular buffer after the first sector and may wrap around).
 */
export function metadataTextFromArea(area: Buffer): string | undefined {
  if (area.toString('latin1', 4, 20) !== MDA_MAGIC) return undefined
  const size = Number(area.readBigUInt64LE(32))
  const offset = Number(area.readBigUInt64LE(40))
  const length = Number(area.readBigUInt64LE(48))
  if (offset === 0 || length === 0) return undefined
  const end = offset + length
  const text =
    end <= size
      ? area.subarray(offset, end)
      : Buffer.concat([area.subarray(offset, size), area.subarray(SECTOR, SECTOR + end - size)])
  return text.toString('utf8').replace(/\0+$/, '')
}

export type LvmValue = string | number | LvmValue[] | LvmSection
export interface LvmSection {
  [key: string]: LvmValue
}

/** Parse LVM2's text metadata format (`key = value`, `name { … }`, `[…]` lists, # comments). */
export function parseLvmText(text: string): LvmSection {
  const tokens = text.match(/"(?:[^"\\]|\\.)*"|[{}[\]=,]|[^\s{}[\]=,#"]+|#[^\n]*/g) ?? []
  let position = 0
  const next = () => tokens[position++]
  const value = (token: string | undefined): LvmValue => {
    if (token === undefined) throw new Error('unexpected end of LVM metadata')
    if (token === '[') {
      const list: LvmValue[] = []
      for (let t = next(); t !== ']'; t = next()) {
        if (t === undefined) throw new Error('unterminated list in LVM metadata')
        if (t === ',' || t.startsWith('#')) continue
        list.push(value(t))
      }
      return list
    }
    if (token.startsWith('"')) return token.slice(1, -1).replace(/\\(.)/g, '$1')
    const number = Number(token)
    return Number.isFinite(number) ? number : token
  }
  const section = (): LvmSection => {
    const result: LvmSection = {}
    for (let token = next(); token !== undefined && token !== '}'; token = next()) {
      if (token.startsWith('#')) continue
      const operator = next()
      if (operator === '{') result[token] = section()
      else if (operator === '=') {
        let t = next()
        while (t?.startsWith('#')) t = next()
        result[token] = value(t)
      } else throw new Error(`unexpected ${operator ?? 'end'} after ${token} in LVM metadata`)
    }
    return result
  }
  return section()
}

export interface ExtentRange {
  /** Byte offset from the start of the PV, and length. */
  offset: number
  size: number
}

/**
 * Where a logical volume's data lives on the PV whose uuid is `pvUuid`: the byte ranges of
 * its linear/striped segments (for a classic snapshot, the LV named as the snapshot holds
 * the copy-on-write store). Undefined when the VG or LV is not in the metadata.
 */
export function lvRangesOnPv(
  metadata: LvmSection,
  vgName: string,
  lvName: string,
  pvUuid: string,
): ExtentRange[] | undefined {
  const vg = metadata[vgName]
  if (!isSection(vg)) return undefined
  const extentBytes = Number(vg.extent_size) * SECTOR
  const pvs = isSection(vg.physical_volumes) ? vg.physical_volumes : {}
  const lvs = isSection(vg.logical_volumes) ? vg.logical_volumes : {}
  const lv = lvs[lvName]
  if (!isSection(lv) || !Number.isFinite(extentBytes) || extentBytes <= 0) return undefined
  const pvKey = Object.entries(pvs).find(([, pv]) => isSection(pv) && String(pv.id).replaceAll('-', '') === pvUuid)?.[0]
  if (!pvKey) return undefined
  const peStart = Number((pvs[pvKey] as LvmSection).pe_start) * SECTOR
  const ranges: ExtentRange[] = []
  for (const segment of Object.values(lv)) {
    if (!isSection(segment) || segment.type !== 'striped' || !Array.isArray(segment.stripes)) continue
    const stripeCount = segment.stripes.length / 2
    const extentsPerStripe = Number(segment.extent_count) / stripeCount
    for (let i = 0; i < segment.stripes.length; i += 2) {
      if (segment.stripes[i] !== pvKey) continue
      ranges.push({
        offset: peStart + Number(segment.stripes[i + 1]) * extentBytes,
        size: extentsPerStripe * extentBytes,
      })
    }
  }
  return ranges
}

function isSection(value: LvmValue | undefined): value is LvmSection {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

export interface LvmOnDisk {
  /** The PV partition's byte offset on the disk. */
  pvOffset: number
  pvUuid: string
  metadata: LvmSection
}

/** Find the LVM PV among the disk's MBR partitions and read its current metadata. */
export async function readLvmOnDisk(image: string, format: string): Promise<LvmOnDisk | undefined> {
  const partitions = parseMbr(await readImageRange(image, format, 0, SECTOR))
  for (const partition of partitions) {
    const head = await readImageRange(image, format, partition.offset, 4 * SECTOR)
    const label = parsePvLabel(head)
    if (!label) continue
    for (const area of label.metadataAreas) {
      const text = metadataTextFromArea(await readImageRange(image, format, partition.offset + area.offset, area.size))
      if (!text) continue
      try {
        return {pvOffset: partition.offset, pvUuid: label.uuid, metadata: parseLvmText(text)}
      } catch (error) {
        throw new BoxError(`cannot read the LVM metadata in ${image}: ${(error as Error).message}`, {cause: error})
      }
    }
  }
  return undefined
}

/**
 * Zero byte ranges of a qcow2 image (`write -z -u`: zero clusters, no data written, so
 * `qemu-img convert` ships nothing for them). Used on a throwaway overlay, never on a
 * machine's own disk.
 */
export async function zeroImageRanges(image: string, ranges: ExtentRange[]): Promise<void> {
  const chunk = 1 << 30 // qemu-io requests stay below 2 GiB
  const commands: string[] = []
  for (const range of ranges) {
    for (let at = range.offset; at < range.offset + range.size; at += chunk) {
      commands.push('-c', `write -z -u ${at} ${Math.min(chunk, range.offset + range.size - at)}`)
    }
  }
  if (commands.length === 0) return
  const result = await run('qemu-io', ['-f', 'qcow2', ...commands, image], {purpose: 'dropping the snapshot area'})
  // qemu-io reports a failed request on its output but still exits 0.
  if (/failed/i.test(`${result.stdout}\n${result.stderr}`))
    throw new BoxError(`dropping the snapshot area of ${image} failed`, {
      detail: `${result.stdout}\n${result.stderr}`.trim(),
    })
}

// ---------------------------------------------------------------------------------
// Files in an ext filesystem image (debugfs reads it as a plain file).

export interface ExtFileEntry {
  name: string
  mode: number
  size: number
}

/** The entries of a directory of an ext2/3/4 image. */
export async function listExtDirectory(fsImage: string, dir: string): Promise<ExtFileEntry[]> {
  assertDebugfsWord(dir)
  const {stdout} = await run('debugfs', ['-R', `ls -p ${dir}`, fsImage], {purpose: 'reading /boot of the disk image'})
  // `ls -p` lines: /inode/mode(octal)/uid/gid/name/size/
  return stdout
    .split('\n')
    .map((line) => line.split('/'))
    .filter((parts) => parts.length >= 7 && parts[5] !== '' && parts[5] !== '.' && parts[5] !== '..')
    .map((parts) => ({name: parts[5]!, mode: Number.parseInt(parts[2]!, 8), size: Number(parts[6])}))
}

/** Copy one file out of an ext2/3/4 image into destDir/destName. */
export async function dumpExtFile(fsImage: string, path: string, destDir: string, destName: string): Promise<void> {
  assertDebugfsWord(path)
  assertDebugfsWord(destName)
  // The destination is named relative to cwd: the directory's own path may hold any character.
  await run('debugfs', ['-R', `dump ${path} ${destName}`, fsImage], {
    cwd: destDir,
    purpose: `copying ${path} out of the disk image`,
  })
}

/** debugfs splits its request on spaces: only plain names go into one. */
function assertDebugfsWord(word: string): void {
  if (!/^[A-Za-z0-9._+/-]+$/.test(word))
    throw new BoxError(`cannot read ${JSON.stringify(word)} with debugfs: unusual characters in the name`)
}
