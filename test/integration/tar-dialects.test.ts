/**
 * Boxes as real tools write them: GNU tar (old-GNU sparse, PAX sparse 0.0/0.1/1.0, long
 * names) and bsdtar (pax, gnutar, ustar), each compressed with gzip, bzip2, xz and zstd by
 * the system programs, imported through the store's own import. And archives no tool
 * writes (hostile sparse maps, tar bombs), crafted header by header here, refused by name
 * with nothing stored and nothing left in the store's scratch space.
 */
import {createHash, randomBytes} from 'node:crypto'
import {mkdir, readFile, readdir, readlink, stat, symlink, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {readArchiveFile} from '../../src/lib/box/archive.js'
import {BoxError} from '../../src/lib/core/errors.js'
import {addBoxFromFile} from '../../src/lib/store/import.js'
import {boxesDir} from '../../src/lib/store/layout.js'
import {makeTempDir} from '../fixtures/boxes.js'

let dir: string
let cleanup: () => Promise<void>
let source: string
let imageSha: string
let storeCount = 0

const IMAGE_SIZE = 64 * 1024 * 1024
/** Data written into the sparse image: [offset, bytes]; unaligned ones too (GNU tar maps in 512-byte blocks). */
const IMAGE_DATA: Array<[number, number]> = [
  [0, 8192],
  [1024 * 1024 + 512, 3000],
  [20 * 1024 * 1024, 64 * 1024],
  [IMAGE_SIZE - 4096, 4096],
]
const DATA_BYTES = IMAGE_DATA.reduce((sum, [, bytes]) => sum + bytes, 0)
const LONG_DIR = `extra/${'a-directory-name-that-is-long/'.repeat(5)}`.slice(0, -1)
const LONG_FILE = `${LONG_DIR}/${'file-with-a-long-name-'.repeat(4)}.txt`
/** Longer than ustar's 100-byte name field, short enough for its 155-byte prefix: how ustar stores long paths. */
const PREFIXED_FILE = `extra/${'a-directory-name-that-is-long/'.repeat(4)}short.txt`

beforeAll(async () => {
  ;({dir, cleanup} = await makeTempDir('box-tar-dialects-'))
  source = join(dir, 'src')
  await mkdir(join(source, LONG_DIR), {recursive: true})
  await writeFile(
    join(source, 'metadata.json'),
    JSON.stringify({provider: 'libvirt', format: 'qcow2', virtual_size: 1}),
  )
  await writeFile(join(source, 'Vagrantfile'), 'Vagrant.configure("2") do |config|\nend\n')
  // A sparse disk image, made as users make them: truncate, then dd into it.
  const image = join(source, 'box.img')
  await execa('truncate', ['-s', String(IMAGE_SIZE), image])
  for (const [offset, bytes] of IMAGE_DATA) {
    await writeFile(join(dir, 'chunk'), randomBytes(bytes))
    await execa('dd', [
      `if=${join(dir, 'chunk')}`,
      `of=${image}`,
      'bs=1',
      `seek=${offset}`,
      'conv=notrunc',
      'status=none',
    ])
  }
  imageSha = await sha256(image)
  await writeFile(join(source, LONG_FILE), 'deep and long\n')
  await writeFile(join(source, PREFIXED_FILE), 'prefixed\n')
  // A symlink whose target is longer than ustar's 100 bytes: a GNU 'K' record or a PAX linkpath.
  await symlink(LONG_FILE.slice('extra/'.length), join(source, 'extra', 'link'))
}, 120_000)
afterAll(async () => {
  await cleanup()
})

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex')
}

const COMPRESSORS = {
  none: undefined,
  gzip: ['gzip', '-c'],
  bzip2: ['bzip2', '-c'],
  xz: ['xz', '-c', '-T0'],
  zstd: ['zstd', '-q', '-c'],
} as const

/** Compress `tarFile` with the system program into `output`. */
async function compress(tarFile: string, compression: keyof typeof COMPRESSORS, output: string): Promise<string> {
  const command = COMPRESSORS[compression]
  if (!command) return tarFile
  await execa(command[0], [...command.slice(1), tarFile], {stdout: {file: output}})
  return output
}

interface Producer {
  label: string
  args: string[]
  /** ustar cannot hold the longest name nor the long symlink target. */
  longNames: boolean
}

const PRODUCERS: Producer[] = [
  {
    label: 'GNU tar -S --format=gnu (old-GNU sparse, L/K long names)',
    args: ['tar', '-S', '--format=gnu', '-cf'],
    longNames: true,
  },
  {
    label: 'GNU tar -S --format=posix --sparse-version=0.0',
    args: ['tar', '-S', '--format=posix', '--sparse-version=0.0', '-cf'],
    longNames: true,
  },
  {
    label: 'GNU tar -S --format=posix --sparse-version=0.1',
    args: ['tar', '-S', '--format=posix', '--sparse-version=0.1', '-cf'],
    longNames: true,
  },
  {
    label: 'GNU tar -S --format=posix --sparse-version=1.0',
    args: ['tar', '-S', '--format=posix', '--sparse-version=1.0', '-cf'],
    longNames: true,
  },
  {label: 'GNU tar -S --format=pax', args: ['tar', '-S', '--format=pax', '-cf'], longNames: true},
  {label: 'bsdtar --format=pax (PAX sparse 1.0)', args: ['bsdtar', '--format=pax', '-cf'], longNames: true},
  {label: 'bsdtar --format=gnutar', args: ['bsdtar', '--format=gnutar', '-cf'], longNames: true},
  {label: 'bsdtar --format=ustar (prefix field)', args: ['bsdtar', '--format=ustar', '-cf'], longNames: false},
]

describe('boxes written by GNU tar and bsdtar, every compression', () => {
  for (const [index, producer] of PRODUCERS.entries()) {
    it(
      producer.label,
      async () => {
        const tarFile = join(dir, `p${index}.tar`)
        const members = [
          './metadata.json',
          './Vagrantfile',
          './box.img',
          `./${PREFIXED_FILE}`,
          ...(producer.longNames ? [`./${LONG_FILE}`, './extra/link'] : []),
        ]
        await execa(producer.args[0]!, [...producer.args.slice(1), tarFile, '-C', source, ...members])
        if (producer.args.includes('-S') || producer.label.includes('sparse')) {
          // The archive holds the data, not the holes: the sparse dialect really was written.
          expect((await stat(tarFile)).size).toBeLessThan(DATA_BYTES + 64 * 1024)
        }
        for (const compression of Object.keys(COMPRESSORS) as Array<keyof typeof COMPRESSORS>) {
          const file = await compress(tarFile, compression, join(dir, `p${index}.${compression}.box`))
          const dataDir = join(dir, `data-${storeCount++}`)
          const box = await addBoxFromFile({dataDir, name: `dialect/p${index}`, file, version: '1.0.0'})
          const image = join(box.path, 'box.img')
          expect(await sha256(image), `${producer.label}, ${compression}`).toBe(imageSha)
          const info = await stat(image)
          expect(info.size).toBe(IMAGE_SIZE)
          // Holes kept: only the data's blocks (rounded to 4 KiB each) are allocated.
          expect(info.blocks * 512, `${producer.label}, ${compression}: allocated bytes`).toBeLessThanOrEqual(
            DATA_BYTES + IMAGE_DATA.length * 2 * 4096,
          )
          expect(await readFile(join(box.path, PREFIXED_FILE), 'utf8')).toBe('prefixed\n')
          if (producer.longNames) {
            expect(await readFile(join(box.path, LONG_FILE), 'utf8')).toBe('deep and long\n')
            expect(await readlink(join(box.path, 'extra', 'link'))).toBe(LONG_FILE.slice('extra/'.length))
          }
          expect(box.metadata.provider).toBe('libvirt')
          // The store's early peek reads metadata.json (first, behind any extended headers) the same way.
          expect(JSON.parse(String(await readArchiveFile(file, 'metadata.json', {maxEntries: 1})))).toEqual({
            provider: 'libvirt',
            format: 'qcow2',
            virtual_size: 1,
          })
          expect((await readdir(boxesDir(dataDir))).sort()).toEqual(['dialect-VAGRANTSLASH-p' + index])
        }
      },
      120_000,
    )
  }
})

// ---------------------------------------------------------------------------------
// Archives no tool writes, byte by byte.

interface HeaderFields {
  name: string
  size?: number
  typeflag?: string
  linkname?: string
  /** 'gnu' ("ustar  \0") or 'posix' ("ustar\0" "00"). */
  magic?: 'gnu' | 'posix'
  /** Raw edits after the standard fields (old-GNU sparse fields), before the checksum. */
  edit?: (block: Buffer) => void
}

function octal(block: Buffer, offset: number, length: number, value: number): void {
  block.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, length, 'latin1')
}

/** GNU base-256: for numbers octal cannot hold in the field. */
function base256(block: Buffer, offset: number, length: number, value: bigint): void {
  for (let i = length - 1; i > 0; i--) {
    block[offset + i] = Number(value & 0xffn)
    value >>= 8n
  }
  block[offset] = 0x80
}

/** One 512-byte tar header with a correct checksum. */
function header(fields: HeaderFields): Buffer {
  const block = Buffer.alloc(512)
  block.write(fields.name, 0, 100, 'utf8')
  octal(block, 100, 8, 0o644)
  octal(block, 108, 8, 0)
  octal(block, 116, 8, 0)
  octal(block, 124, 12, fields.size ?? 0)
  octal(block, 136, 12, 1_700_000_000)
  block.write(fields.typeflag ?? '0', 156, 1, 'latin1')
  if (fields.linkname) block.write(fields.linkname, 157, 100, 'utf8')
  if ((fields.magic ?? 'posix') === 'gnu') block.write('ustar  \0', 257, 8, 'latin1')
  else block.write('ustar\u000000', 257, 8, 'latin1')
  fields.edit?.(block)
  block.fill(0x20, 148, 156)
  let sum = 0
  for (const byte of block) sum += byte
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1')
  return block
}

function pad(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)])
}

/** A PAX record: its length counts itself. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`
  let length = body.length + 1
  while (String(length).length + body.length !== length) length++
  return `${length}${body}`
}

function paxHeader(name: string, records: Array<[string, string]>): Buffer {
  const data = Buffer.from(records.map(([key, value]) => paxRecord(key, value)).join(''), 'utf8')
  return Buffer.concat([header({name: `PaxHeaders/${name}`, size: data.length, typeflag: 'x'}), pad(data)])
}

function fileEntry(name: string, content: Buffer): Buffer {
  return Buffer.concat([header({name, size: content.length}), pad(content)])
}

/** Old-GNU 'S' header: up to four [offset, length] segments in the header itself. */
function oldGnuSparse(name: string, segments: Array<[number, number]>, realSize: number, storedBytes: number): Buffer {
  return header({
    name,
    size: storedBytes,
    typeflag: 'S',
    magic: 'gnu',
    edit: (block) => {
      for (const [i, [offset, length]] of segments.entries()) {
        octal(block, 386 + i * 24, 12, offset)
        octal(block, 386 + i * 24 + 12, 12, length)
      }
      octal(block, 483, 12, realSize)
    },
  })
}

const METADATA = fileEntry('metadata.json', Buffer.from(JSON.stringify({provider: 'libvirt', format: 'qcow2'})))
const END = Buffer.alloc(1024)

describe('hostile and broken archives are refused by name, nothing stored or left in scratch', () => {
  async function expectRefused(
    name: string,
    parts: Buffer[],
    message: RegExp,
    compression: keyof typeof COMPRESSORS = 'none',
  ): Promise<BoxError> {
    const tarFile = join(dir, `${name}.tar`)
    await writeFile(tarFile, Buffer.concat(parts))
    const file = await compress(tarFile, compression, join(dir, `${name}.${compression}.box`))
    const dataDir = join(dir, `data-${storeCount++}`)
    const error = await addBoxFromFile({dataDir, name: 'hostile', file}).then(
      () => undefined,
      (error_: unknown) => error_,
    )
    expect(error).toBeInstanceOf(BoxError)
    expect((error as BoxError).message).toMatch(message)
    // Nothing stored, no scratch left: the store's folder is empty.
    expect(await readdir(boxesDir(dataDir))).toEqual([])
    return error as BoxError
  }

  it('an old-GNU sparse map that overlaps itself', async () => {
    const entry = oldGnuSparse(
      'box.img',
      [
        [0, 4096],
        [2048, 4096],
      ],
      16_384,
      8192,
    )
    await expectRefused(
      'overlap',
      [METADATA, entry, Buffer.alloc(8192, 1), END],
      /refusing to extract entry "box\.img": its sparse map overlaps itself/,
    )
  })

  it('a sparse map out of order', async () => {
    const entry = oldGnuSparse(
      'box.img',
      [
        [8192, 512],
        [0, 512],
      ],
      16_384,
      1024,
    )
    await expectRefused(
      'unordered',
      [METADATA, entry, Buffer.alloc(1024, 1), END],
      /"box\.img": its sparse map is out of order/,
    )
  })

  it('a sparse map running past the declared real size', async () => {
    const entry = oldGnuSparse(
      'box.img',
      [
        [0, 512],
        [1_000_000, 512],
      ],
      4096,
      1024,
    )
    await expectRefused(
      'past-size',
      [METADATA, entry, Buffer.alloc(1024, 1), END],
      /"box\.img": its sparse map runs past the entry's real size .*the file is 4096 bytes/,
    )
  })

  it('a PAX 0.1 map past the size (gzip)', async () => {
    const pax = paxHeader('box.img', [
      ['GNU.sparse.size', '4096'],
      ['GNU.sparse.numblocks', '1'],
      ['GNU.sparse.name', 'box.img'],
      ['GNU.sparse.map', '4000,512'],
    ])
    await expectRefused(
      'pax01-past',
      [METADATA, pax, header({name: 'GNUSparseFile.1/box.img', size: 512}), Buffer.alloc(512, 1), END],
      /"box\.img": its sparse map runs past/,
      'gzip',
    )
  })

  it('a PAX 1.0 map announcing an enormous number of segments (zstd)', async () => {
    const pax = paxHeader('box.img', [
      ['GNU.sparse.major', '1'],
      ['GNU.sparse.minor', '0'],
      ['GNU.sparse.name', 'box.img'],
      ['GNU.sparse.realsize', '1048576'],
    ])
    const map = pad(Buffer.from('99999999999\n0\n512\n'))
    const error = await expectRefused(
      'huge-count',
      [
        METADATA,
        pax,
        header({name: 'GNUSparseFile.1/box.img', size: map.length + 512}),
        map,
        Buffer.alloc(512, 1),
        END,
      ],
      /"box\.img": its sparse map has 99999999999 segments, more than the \d+ box accepts/,
      'zstd',
    )
    expect([error.message, ...error.suggestions].join('\n')).not.toMatch(/damaged or hostile/)
  })

  it('a PAX 0.0 map whose segments hold more data than the entry stores', async () => {
    const pax = paxHeader('box.img', [
      ['GNU.sparse.size', '1048576'],
      ['GNU.sparse.numblocks', '1'],
      ['GNU.sparse.offset', '0'],
      ['GNU.sparse.numbytes', '8192'],
    ])
    await expectRefused(
      'pax00-short',
      [METADATA, pax, header({name: 'box.img', size: 512}), Buffer.alloc(512, 1), END],
      /"box\.img": its sparse map describes 8192 bytes of data but the entry stores 512/,
    )
  })

  it('a sparse entry cut short in its data (xz)', async () => {
    const entry = oldGnuSparse(
      'box.img',
      [
        [0, 4096],
        [65_536, 4096],
      ],
      1_048_576,
      8192,
    )
    // The file ends 1 KiB into the entry's data.
    await expectRefused(
      'truncated',
      [METADATA, entry, Buffer.alloc(1024, 1)],
      /truncated: it ends in the middle of entry "box\.img"|xz data is damaged or cut short/,
      'xz',
    )
  })

  it('a sparse entry cut short, uncompressed: the message names the entry', async () => {
    const entry = oldGnuSparse(
      'box.img',
      [
        [0, 4096],
        [65_536, 4096],
      ],
      1_048_576,
      8192,
    )
    await expectRefused(
      'truncated-plain',
      [METADATA, entry, Buffer.alloc(4096, 1)],
      /extracting .* failed: the archive is truncated: it ends in the middle of entry "box\.img"/,
    )
  })

  it('a tar bomb: a file announced far beyond the free space is refused before a byte is written', async () => {
    const bomb = header({name: 'box.img', edit: (block) => base256(block, 124, 12, 1n << 45n)})
    // Only a little data follows: the refusal must come from the header, not from running out of disk.
    await expectRefused(
      'bomb',
      [METADATA, bomb, Buffer.alloc(4096, 7), END],
      /"box\.img": it would write 32 TiB|"box\.img": it would write .* more than the .* left free .*tar bomb/,
    )
  })

  it('a tar bomb: a sparse real size no disk image has', async () => {
    const pax = paxHeader('box.img', [
      ['GNU.sparse.major', '1'],
      ['GNU.sparse.minor', '0'],
      ['GNU.sparse.name', 'box.img'],
      ['GNU.sparse.realsize', String(2 ** 52)],
    ])
    const map = pad(Buffer.from(`1\n${2 ** 52 - 512}\n512\n`))
    await expectRefused(
      'sparse-bomb',
      [
        METADATA,
        pax,
        header({name: 'GNUSparseFile.1/box.img', size: map.length + 512}),
        map,
        Buffer.alloc(512, 1),
        END,
      ],
      /"box\.img": it declares a size of .*more than any disk image box takes .*tar bomb/,
    )
  })

  it('an unknown entry type is named as such, not as "null"', async () => {
    const error = await expectRefused(
      'multivolume',
      [METADATA, header({name: 'box.img', typeflag: 'M', size: 0}), END],
      /"box\.img": it has tar entry type "M", which is not a file, directory or link \(a GNU multi-volume continuation\)/,
    )
    expect(error.message).not.toMatch(/null/)
  })

  it('a PAX path escaping the destination is caught after the name is resolved', async () => {
    const pax = paxHeader('innocent', [['path', '../../escaped-by-pax']])
    await expectRefused(
      'pax-escape',
      [METADATA, pax, header({name: 'innocent', size: 5}), pad(Buffer.from('pwned')), END],
      /refusing to extract entry "\.\.\/\.\.\/escaped-by-pax": paths with "\.\." are not allowed/,
    )
    expect(await readdir(dir)).not.toContain('escaped-by-pax')
  })

  it('a GNU long name escaping the destination', async () => {
    const longName = Buffer.from('/tmp/escaped-by-gnu-long-name\0')
    await expectRefused(
      'gnu-long-escape',
      [
        METADATA,
        header({name: '././@LongLink', typeflag: 'L', size: longName.length, magic: 'gnu'}),
        pad(longName),
        header({name: 'short', size: 5, magic: 'gnu'}),
        pad(Buffer.from('pwned')),
        END,
      ],
      /refusing to extract entry "\/tmp\/escaped-by-gnu-long-name": absolute paths are not allowed/,
    )
  })
})

describe('a .box that is a bare disk image is refused saying what it is and how to add it', () => {
  async function expectNotABox(name: string, make: (file: string) => Promise<void>, message: RegExp) {
    const file = join(dir, name)
    await make(file)
    const dataDir = join(dir, `data-${storeCount++}`)
    const error = await addBoxFromFile({dataDir, name: 'image', file}).then(
      () => undefined,
      (error_: unknown) => error_,
    )
    expect(error).toBeInstanceOf(BoxError)
    expect((error as BoxError).message).toMatch(message)
    expect((error as BoxError).suggestions.join('\n')).toMatch(/wrap it in a box: .*tar -czf NAME\.box/)
    expect(await readdir(boxesDir(dataDir))).toEqual([])
  }

  it('a qcow2 image (made by qemu-img)', async () => {
    await expectNotABox(
      'disk.qcow2.box',
      async (file) => void (await execa('qemu-img', ['create', '-q', '-f', 'qcow2', file, '3G'])),
      /disk\.qcow2\.box is a qcow2 disk image, not a box: a \.box is a tar archive/,
    )
  })

  it('a gzip-compressed qcow2 image', async () => {
    await expectNotABox(
      'disk.qcow2.gz.box',
      async (file) => {
        await execa('qemu-img', ['create', '-q', '-f', 'qcow2', `${file}.qcow2`, '1G'])
        await execa('gzip', ['-c', `${file}.qcow2`], {stdout: {file}})
      },
      /is a gzip-compressed qcow2 disk image, not a box/,
    )
  })

  it('a raw disk image with a partition table (made by sfdisk)', async () => {
    await expectNotABox(
      'disk.raw.box',
      async (file) => {
        await execa('truncate', ['-s', '64M', file])
        await execa('sfdisk', ['-q', file], {input: 'label: dos\n,,L\n'})
      },
      /disk\.raw\.box is a raw disk image \(MBR boot sector\), not a box/,
    )
  })
})
