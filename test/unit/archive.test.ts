import {existsSync} from 'node:fs'
import {mkdir, readFile, readdir, readlink, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {
  detectCompression,
  extractBoxArchive,
  readArchiveFile,
  writeBoxArchive,
  type Compression,
} from '../../src/lib/box/archive.js'
import {BoxError} from '../../src/lib/core/errors.js'
import {listTree, makeBoxSource, makeTempDir, sha256File, writeRawTar} from '../fixtures/boxes.js'

let dir: string
let cleanup: () => Promise<void>

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-archive-'))
})
afterEach(async () => {
  await cleanup()
})

const TAR_LIST_FLAGS: Record<Compression, string[]> = {zstd: ['--zstd', '-tf'], gzip: ['-tzf'], none: ['-tf']}

describe('writeBoxArchive → extractBoxArchive round trip', () => {
  for (const compression of ['zstd', 'gzip', 'none'] as const) {
    it(`${compression}: sha256 matches sha256sum, system tar reads it, contents survive`, async () => {
      const source = join(dir, 'src')
      const entries = await makeBoxSource(source, {imageBytes: 3 * 1024 * 1024 + 17, sparseBytes: 8 * 1024 * 1024})
      const output = join(dir, `out.${compression}.box`)
      const progress: Array<[number, number]> = []

      const written = await writeBoxArchive({
        sourceDir: source,
        entries,
        output,
        compression,
        onProgress: (done, total) => progress.push([done, total]),
      })

      expect(written.output).toBe(output)
      expect(existsSync(`${output}.partial`)).toBe(false)
      const {stdout: sha256sum} = await execa('sha256sum', [output])
      expect(written.sha256).toBe(sha256sum.split(' ')[0])
      expect(written.size).toBe((await stat(output)).size)
      expect(await detectCompression(output)).toBe(compression)
      const total =
        3 * 1024 * 1024 +
        17 +
        8 * 1024 * 1024 +
        (await stat(join(source, 'metadata.json'))).size +
        (await stat(join(source, 'Vagrantfile'))).size
      expect(progress.at(-1)).toEqual([total, total])

      // Standard tools read what we write (Vagrant's `box add` uses them).
      const {stdout: listing} = await execa('tar', [...TAR_LIST_FLAGS[compression], output])
      expect(listing.split('\n')).toEqual(entries)

      const dest = join(dir, 'dest')
      const extracted = await extractBoxArchive({file: output, dest})
      expect(extracted).toEqual({compression, entries})
      for (const name of entries) expect(await sha256File(join(dest, name))).toBe(await sha256File(join(source, name)))
      // The 8 MiB of zeros come back as a hole, not as allocated blocks.
      const big = await stat(join(dest, 'big.img'))
      expect(big.size).toBe(8 * 1024 * 1024)
      expect(big.blocks * 512).toBeLessThan(1024 * 1024)
      expect((await stat(join(dest, 'box.img'))).size).toBe(3 * 1024 * 1024 + 17)
    })
  }

  it('metadata.json comes first and readArchiveFile reads it without extracting', async () => {
    const source = join(dir, 'src')
    const entries = await makeBoxSource(source, {metadata: {provider: 'libvirt', format: 'qcow2'}})
    for (const compression of ['zstd', 'gzip', 'none'] as const) {
      const output = join(dir, `m.${compression}.box`)
      await writeBoxArchive({sourceDir: source, entries, output, compression})
      const metadata = await readArchiveFile(output, 'metadata.json')
      expect(JSON.parse(String(metadata))).toEqual({provider: 'libvirt', format: 'qcow2'})
      expect(await readArchiveFile(output, 'missing.json')).toBeUndefined()
    }
  })

  it('zero runs at unaligned offsets survive the sparse writer byte for byte', async () => {
    const source = join(dir, 'src')
    const entries = await makeBoxSource(source)
    const {randomBytes} = await import('node:crypto')
    const mixed = Buffer.concat([
      randomBytes(5000),
      Buffer.alloc(20_000),
      randomBytes(3),
      Buffer.alloc(70_001),
      randomBytes(4096),
      Buffer.alloc(4095),
      Buffer.from([7]),
      Buffer.alloc(9000),
    ])
    await writeFile(join(source, 'mixed.img'), mixed)
    const output = join(dir, 'mixed.box')
    await writeBoxArchive({sourceDir: source, entries: [...entries, 'mixed.img'], output, compression: 'gzip'})
    const dest = join(dir, 'dest')
    await extractBoxArchive({file: output, dest})
    expect((await readFile(join(dest, 'mixed.img'))).equals(mixed)).toBe(true)
  })

  it('readArchiveFile stops at the entry: the rest of the archive is never needed', async () => {
    const source = join(dir, 'src')
    const entries = await makeBoxSource(source, {imageBytes: 2 * 1024 * 1024})
    for (const compression of ['zstd', 'gzip', 'none'] as const) {
      const output = join(dir, `early.${compression}.box`)
      await writeBoxArchive({sourceDir: source, entries, output, compression})
      // Cut the archive inside box.img: reading metadata.json must still work…
      const cut = join(dir, `cut.${compression}.box`)
      await writeFile(cut, (await readFile(output)).subarray(0, 256 * 1024))
      expect(JSON.parse(String(await readArchiveFile(cut, 'metadata.json')))).toMatchObject({provider: 'qemu'})
      // …while a later entry cannot be reached, and says why.
      await expect(readArchiveFile(cut, 'Vagrantfile')).rejects.toThrow(/reading .*cut\..*\.box failed/)
    }
  })

  it('a missing zstd names the package to install and leaves nothing behind', async () => {
    const source = join(dir, 'src')
    const entries = await makeBoxSource(source)
    const zstdBox = join(dir, 'ok.box')
    await writeBoxArchive({sourceDir: source, entries, output: zstdBox, compression: 'zstd'})
    const savedPath = process.env.PATH
    process.env.PATH = join(dir, 'empty-path')
    try {
      const output = join(dir, 'nozstd.box')
      await expect(writeBoxArchive({sourceDir: source, entries, output, compression: 'zstd'})).rejects.toThrow(
        'zstd is not installed',
      )
      expect(existsSync(`${output}.partial`)).toBe(false)
      const error = await extractBoxArchive({file: zstdBox, dest: join(dir, 'dest')}).catch((error_: unknown) => error_)
      expect((error as BoxError).message).toBe('zstd is not installed')
      expect((error as BoxError).suggestions).toEqual(['install it: sudo apt-get install zstd'])
    } finally {
      process.env.PATH = savedPath
    }
  })

  it('packs directories with their contents', async () => {
    const source = join(dir, 'src')
    const entries = await makeBoxSource(source)
    await mkdir(join(source, 'extra', 'deep'), {recursive: true})
    await writeFile(join(source, 'extra', 'deep', 'file.txt'), 'deep')
    const output = join(dir, 'dirs.box')
    await writeBoxArchive({sourceDir: source, entries: [...entries, 'extra'], output, compression: 'none'})
    const dest = join(dir, 'dest')
    await extractBoxArchive({file: output, dest})
    expect(await readFile(join(dest, 'extra', 'deep', 'file.txt'), 'utf8')).toBe('deep')
  })

  it('an abort removes the partial file and leaves no output', async () => {
    const source = join(dir, 'src')
    const entries = await makeBoxSource(source, {imageBytes: 32 * 1024 * 1024})
    const output = join(dir, 'aborted.box')
    const controller = new AbortController()
    const writing = writeBoxArchive({
      sourceDir: source,
      entries,
      output,
      compression: 'zstd',
      signal: controller.signal,
      onProgress: (done) => {
        if (done > 1024 * 1024) controller.abort()
      },
    })
    await expect(writing).rejects.toThrow(/interrupted/)
    expect(await readdir(dir)).toEqual(['src'])
  })

  it('a missing entry fails before any output exists', async () => {
    const source = join(dir, 'src')
    await makeBoxSource(source)
    const output = join(dir, 'missing.box')
    await expect(
      writeBoxArchive({sourceDir: source, entries: ['metadata.json', 'nope.img'], output, compression: 'gzip'}),
    ).rejects.toThrow(/nope\.img/)
    expect(existsSync(output)).toBe(false)
    expect(existsSync(`${output}.partial`)).toBe(false)
  })

  it('extracts boxes made by the system tar (./ prefixes, gzip and zstd)', async () => {
    const source = join(dir, 'src')
    const entries = await makeBoxSource(source)
    for (const [flag, compression] of [
      ['-czf', 'gzip'],
      ['--zstd', 'zstd'],
    ] as const) {
      const output = join(dir, `system.${compression}.box`)
      const args = flag === '--zstd' ? ['--zstd', '-cf', output] : [flag, output]
      await execa('tar', [...args, '-C', source, ...entries.map((name) => `./${name}`)])
      const dest = join(dir, `dest-${compression}`)
      const extracted = await extractBoxArchive({file: output, dest})
      expect(extracted.compression).toBe(compression)
      expect(extracted.entries).toEqual(entries)
      expect(await sha256File(join(dest, 'box.img'))).toBe(await sha256File(join(source, 'box.img')))
      expect(JSON.parse(String(await readArchiveFile(output, 'metadata.json')))).toEqual({
        provider: 'qemu',
        format: 'qcow2',
        virtual_size: 1,
      })
    }
  })
})

describe('detectCompression', () => {
  it('refuses zip files with a clear message', async () => {
    const file = join(dir, 'box.zip')
    await writeFile(file, Buffer.concat([Buffer.from([0x50, 0x4b, 0x03, 0x04]), Buffer.alloc(600)]))
    await expect(detectCompression(file)).rejects.toThrow('zip boxes are not supported yet')
  })

  it('refuses a file that is not an archive', async () => {
    const file = join(dir, 'notes.txt')
    await writeFile(file, 'just some text\n'.repeat(100))
    await expect(detectCompression(file)).rejects.toThrow(/is not a box/)
  })

  it('names a missing file', async () => {
    await expect(detectCompression(join(dir, 'gone.box'))).rejects.toThrow(/file not found: .*gone\.box/)
  })
})

describe('extractBoxArchive refuses hostile entries', () => {
  const metadata = {header: {name: 'metadata.json'}, content: '{"provider":"qemu"}'}

  /** Extract `entries` into sandbox/dest; expect a refusal naming `entryName` and nothing outside dest. */
  async function expectRefused(
    entries: Parameters<typeof writeRawTar>[1],
    entryName: string,
    why: RegExp,
    compression: Compression = 'none',
  ) {
    const sandbox = join(dir, 'sandbox')
    const dest = join(sandbox, 'dest')
    await mkdir(sandbox, {recursive: true})
    const file = await writeRawTar(join(dir, `evil.${compression}.box`), entries, compression)
    const error = await extractBoxArchive({file, dest}).then(
      () => undefined,
      (error_: unknown) => error_,
    )
    expect(error).toBeInstanceOf(BoxError)
    expect((error as BoxError).message).toContain(`refusing to extract entry ${JSON.stringify(entryName)}`)
    expect((error as BoxError).message).toMatch(why)
    // Nothing beside dest in the sandbox, nothing in the temp dir beside sandbox and the tar.
    expect(await readdir(sandbox)).toEqual(['dest'])
    expect((await readdir(dir)).sort()).toEqual([`evil.${compression}.box`, 'sandbox'])
    return dest
  }

  for (const compression of ['none', 'gzip', 'zstd'] as const) {
    it(`absolute path (${compression})`, async () => {
      const target = join(dir, 'pwned-absolute')
      await expectRefused(
        [metadata, {header: {name: target}, content: 'pwned'}],
        target,
        /absolute paths are not allowed/,
        compression,
      )
      expect(existsSync(target)).toBe(false)
    })
  }

  it('".." in the path', async () => {
    await expectRefused([metadata, {header: {name: '../pwned-dotdot'}, content: 'pwned'}], '../pwned-dotdot', /"\.\."/)
    expect(existsSync(join(dir, 'pwned-dotdot'))).toBe(false)
  })

  it('".." hidden in the middle of a path', async () => {
    await expectRefused(
      [metadata, {header: {name: 'a/b/../../../pwned-middle'}, content: 'pwned'}],
      'a/b/../../../pwned-middle',
      /"\.\."/,
    )
  })

  it('symlink pointing outside', async () => {
    await expectRefused(
      [metadata, {header: {name: 'escape', type: 'symlink', linkname: '../../outside'}}],
      'escape',
      /leads outside/,
    )
  })

  it('symlink to an absolute path', async () => {
    await expectRefused([metadata, {header: {name: 'etc', type: 'symlink', linkname: '/etc'}}], 'etc', /absolute path/)
  })

  it('symlink chain that climbs through another link', async () => {
    // x/y → .. resolves to dest (fine), but z → x/y/../.. would then reach dest's grandparent.
    await expectRefused(
      [
        metadata,
        {header: {name: 'x', type: 'directory'}},
        {header: {name: 'x/y', type: 'symlink', linkname: '..'}},
        {header: {name: 'z', type: 'symlink', linkname: 'x/y/../..'}},
      ],
      'z',
      /after a path component/,
    )
  })

  it('file written through a symlink', async () => {
    const dest = await expectRefused(
      [
        metadata,
        {header: {name: 'sub', type: 'directory'}},
        {header: {name: 'link', type: 'symlink', linkname: 'sub'}},
        {header: {name: 'link/file', type: 'file'}, content: 'x'},
      ],
      'link/file',
      /goes through the symlink link/,
    )
    expect(existsSync(join(dest, 'sub', 'file'))).toBe(false)
  })

  it('hard link pointing outside', async () => {
    await writeFile(join(dir, 'victim'), 'secret')
    const sandbox = join(dir, 'sandbox')
    await mkdir(sandbox)
    const dest = join(sandbox, 'dest')
    const file = await writeRawTar(join(dir, 'hard.box'), [
      metadata,
      {header: {name: 'grab', type: 'link', linkname: '../../victim'}},
    ])
    await expect(extractBoxArchive({file, dest})).rejects.toThrow(
      /refusing to extract entry "grab": hard link to .* leads outside/,
    )
    expect(existsSync(join(dest, 'grab'))).toBe(false)
    expect((await stat(join(dir, 'victim'))).nlink).toBe(1)
  })

  it('hard link with an absolute target', async () => {
    await expectRefused(
      [metadata, {header: {name: 'passwd', type: 'link', linkname: '/etc/passwd'}}],
      'passwd',
      /leads outside/,
    )
  })

  it('character device', async () => {
    await expectRefused(
      [metadata, {header: {name: 'null', type: 'character-device', devmajor: 1, devminor: 3}}],
      'null',
      /character-device entries are not allowed/,
    )
  })

  it('block device', async () => {
    await expectRefused(
      [metadata, {header: {name: 'sda', type: 'block-device', devmajor: 8, devminor: 0}}],
      'sda',
      /block-device entries are not allowed/,
    )
  })

  it('fifo', async () => {
    await expectRefused([metadata, {header: {name: 'pipe', type: 'fifo'}}], 'pipe', /fifo entries are not allowed/)
  })

  it('accepts links that stay inside', async () => {
    const dest = join(dir, 'dest')
    const file = await writeRawTar(join(dir, 'links.box'), [
      metadata,
      {header: {name: 'sub', type: 'directory'}},
      {header: {name: 'sub/data', type: 'file'}, content: 'data'},
      {header: {name: 'sub/up', type: 'symlink', linkname: '../metadata.json'}},
      {header: {name: 'alias', type: 'symlink', linkname: 'sub/data'}},
      {header: {name: 'hard', type: 'link', linkname: 'sub/data'}},
    ])
    const extracted = await extractBoxArchive({file, dest})
    expect(extracted.entries).toEqual(['metadata.json', 'sub', 'sub/data', 'sub/up', 'alias', 'hard'])
    expect(await readlink(join(dest, 'sub', 'up'))).toBe('../metadata.json')
    expect(await readFile(join(dest, 'alias'), 'utf8')).toBe('data')
    expect((await stat(join(dest, 'hard'))).nlink).toBe(2)
    expect(await listTree(dir)).toEqual([
      'dest',
      'dest/alias',
      'dest/hard',
      'dest/metadata.json',
      'dest/sub',
      'dest/sub/data',
      'dest/sub/up',
      'links.box',
    ])
  })

  it('a truncated archive fails with a clear error', async () => {
    const source = join(dir, 'src')
    const entries = await makeBoxSource(source, {imageBytes: 1024 * 1024})
    const output = join(dir, 'whole.box')
    await writeBoxArchive({sourceDir: source, entries, output, compression: 'gzip'})
    const truncated = join(dir, 'truncated.box')
    await writeFile(truncated, (await readFile(output)).subarray(0, 300 * 1024))
    await expect(extractBoxArchive({file: truncated, dest: join(dir, 'dest')})).rejects.toThrow(
      /extracting .*truncated\.box failed/,
    )
  })
})
