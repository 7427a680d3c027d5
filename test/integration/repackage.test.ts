/** `box repackage`: an added box written back holds the very members it was added with. */
import {createHash} from 'node:crypto'
import {mkdir, readdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {writeBoxArchive} from '../../src/lib/box/archive.js'
import {makeTempDir} from '../fixtures/boxes.js'
import {box, type CliEnv} from '../support/cli.js'

/** Every file of a .box, extracted by the system's tar, as name → sha256 (folders as "dir"). */
async function members(file: string, into: string): Promise<Record<string, string>> {
  await mkdir(into)
  await execa('tar', ['-xf', file, '-C', into])
  const listed = (await execa('tar', ['-tf', file])).stdout
    .split('\n')
    .map((name) => name.replace(/^\.\//, '').replace(/\/$/, ''))
  const result: Record<string, string> = {}
  for (const name of listed) {
    const path = join(into, name)
    result[name] =
      (await readdir(path).then(
        () => 'dir',
        () => undefined,
      )) ??
      createHash('sha256')
        .update(await readFile(path))
        .digest('hex')
  }
  return result
}

describe('box repackage', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let env: CliEnv
  let original: string

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-repackage-'))
    env = {cwd: join(dir, 'cwd'), dataDir: join(dir, 'data'), cacheDir: join(dir, 'cache')}
    await mkdir(env.cwd)
    // A real qcow2 with data in it, a Vagrantfile, and a member in a subfolder.
    const source = join(dir, 'source')
    await mkdir(join(source, 'include'), {recursive: true})
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(source, 'box.img'), '64M'])
    await execa('qemu-io', ['-c', 'write -P 0x5a 1M 3M', join(source, 'box.img')])
    await writeFile(
      join(source, 'metadata.json'),
      JSON.stringify({provider: 'libvirt', format: 'qcow2', virtual_size: 1}),
    )
    await writeFile(join(source, 'Vagrantfile'), 'Vagrant.configure("2") { |c| c.ssh.username = "box" }\n')
    await writeFile(join(source, 'include', 'notes.txt'), 'shipped with the box\n')
    original = join(dir, 'tiny.box')
    await writeBoxArchive({
      sourceDir: source,
      entries: ['metadata.json', 'box.img', 'Vagrantfile', 'include'],
      output: original,
      compression: 'zstd',
    })
    expect((await box(env, ['add', 'org/tiny', original, '--box-version', '1.2.3'])).exitCode).toBe(0)
  })

  afterAll(async () => {
    await cleanup?.()
  })

  it('writes every member back with the same bytes, metadata.json first, gzip by default', async () => {
    const result = await box(env, ['repackage', 'org/tiny', '1.2.3', 'libvirt'])
    expect(result.exitCode, result.stderr).toBe(0)
    const written = join(env.cwd, 'org-VAGRANTSLASH-tiny-1.2.3-libvirt.box')
    expect(result.stdout).toBe(written)
    expect((await readFile(written)).subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]))
    const before = await members(original, join(dir, 'before'))
    const after = await members(written, join(dir, 'after'))
    expect(Object.keys(after)[0]).toBe('metadata.json')
    expect(after).toEqual(before)
    expect(Object.keys(after).sort()).toEqual([
      'Vagrantfile',
      'box.img',
      'include',
      'include/notes.txt',
      'metadata.json',
    ])
    // The repackaged box adds again as the same box.
    const again = await box(env, ['add', 'org/tiny-again', written, '--box-version', '1.2.3'])
    expect(again.exitCode, again.stderr).toBe(0)
  })

  it('refuses a box that is not installed and an output that exists (unless --force)', async () => {
    const missing = await box(env, ['repackage', 'org/tiny', '9.9', 'libvirt'])
    expect(missing.exitCode).toBe(2)
    expect(missing.stderr).toMatch(/box org\/tiny 9\.9 \(libvirt\) is not installed/)
    const output = join(dir, 'exists.box')
    await writeFile(output, 'keep me')
    const exists = await box(env, ['repackage', 'org/tiny', '1.2.3', 'libvirt', '-o', output])
    expect(exists.exitCode).toBe(2)
    expect(exists.stderr).toMatch(/exists\.box already exists/)
    expect(await readFile(output, 'utf8')).toBe('keep me')
    const forced = await box(env, [
      'repackage',
      'org/tiny',
      '1.2.3',
      'libvirt',
      '-o',
      output,
      '--force',
      '--compression',
      'zstd',
      '--json',
    ])
    expect(forced.exitCode, forced.stderr).toBe(0)
    expect(JSON.parse(forced.stdout)).toMatchObject({
      output,
      entries: ['metadata.json', 'Vagrantfile', 'box.img', 'include'],
    })
    expect((await readFile(output)).subarray(0, 4)).toEqual(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))
  })
})
