/**
 * `box build` for real: the reference recipe through every stage (debootstrap, chroot,
 * mke2fs, the builder VM under QEMU, zstd). Slow the first time on a machine (a few
 * minutes); the box is cached under BOX_TEST_CACHE (default <cache>-test) keyed by the
 * full recipe hash, so later runs — and the QEMU boot tests — reuse it.
 * Bad-input cases run the built CLI (dist/, `npm run build`).
 */
import {mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {testCacheDir} from '../support/cache.js'
import {lockOutput} from '../../src/builder/package.js'
import {readArchiveFile} from '../../src/lib/box/archive.js'
import {BoxMetadataSchema} from '../../src/lib/box/metadata.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {createProgress} from '../../src/lib/core/progress.js'

const RECIPE = join(PROJECT_ROOT, 'boxes', 'debian-bookworm')
const CLI = process.env.BOX_TEST_CLI ?? join(PROJECT_ROOT, 'bin', 'run.js')
const isRoot = process.getuid?.() === 0

let dir: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'box-build-'))
})
afterAll(async () => {
  await rm(dir, {recursive: true, force: true})
})

async function box(args: string[], env: Record<string, string> = {}) {
  const result = await execa('node', [CLI, ...args], {
    reject: false,
    env: {BOX_CACHE_DIR: join(dir, 'cache'), BOX_DATA_DIR: join(dir, 'data'), NO_COLOR: '1', ...env},
    stdin: 'ignore',
    timeout: 120_000,
  })
  return {exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr)}
}

describe.skipIf(!isRoot)('box build boxes/debian-bookworm (real build, cached)', () => {
  let boxPath: string

  beforeAll(async () => {
    const ensured = await ensureBox(RECIPE, {cacheDir: testCacheDir(), progress: createProgress({plain: true})})
    boxPath = ensured.path
  }, 30 * 60_000)

  it('holds metadata.json, box.img, Vagrantfile, vmlinuz and initrd.img', async () => {
    const {stdout} = await execa('tar', ['--zstd', '-tf', boxPath])
    expect(stdout.split('\n').sort()).toEqual(['Vagrantfile', 'box.img', 'initrd.img', 'metadata.json', 'vmlinuz'])
  })

  it('has Vagrant libvirt metadata plus box’s LVM layout and boot parameters', async () => {
    const raw = await readArchiveFile(boxPath, 'metadata.json')
    const metadata = BoxMetadataSchema.parse(JSON.parse(String(raw)))
    expect(metadata).toMatchObject({provider: 'libvirt', format: 'qcow2', virtual_size: 8})
    expect(metadata.box).toMatchObject({
      version: '0.1.0',
      user: 'box',
      kernel: 'vmlinuz',
      initrd: 'initrd.img',
      lvm: {
        vg: 'box',
        root: 'root',
        snapshot: 'root_snap',
        snapshot_size: '2G',
        persistent: 'persistent',
        swap: 'swap',
      },
    })
    expect(metadata.box?.kernel_args).toContain('console=ttyS0')
    expect(metadata.box?.recipe_hash).toMatch(/^[0-9a-f]{16}$/)
    const vagrantfile = String(await readArchiveFile(boxPath, 'Vagrantfile'))
    expect(vagrantfile).toContain(':libvirt')
    expect(vagrantfile).toContain('config.ssh.username = "box"')
  })

  it('carries a valid qcow2 of the recipe’s disk size', async () => {
    const out = join(dir, 'extract')
    await mkdir(out, {recursive: true})
    await execa('tar', ['--zstd', '-xf', boxPath, '-C', out, 'box.img'])
    const {stdout} = await execa('qemu-img', ['info', '--output=json', join(out, 'box.img')])
    const info = JSON.parse(stdout) as {format: string; 'virtual-size': number; 'backing-filename'?: string}
    expect(info.format).toBe('qcow2')
    expect(info['virtual-size']).toBe(8 * 1024 ** 3)
    expect(info['backing-filename']).toBeUndefined()
    await execa('qemu-img', ['check', join(out, 'box.img')])
  }, 120_000)

  it('is at most 400 MB', async () => {
    expect((await stat(boxPath)).size).toBeLessThanOrEqual(400 * 1000 * 1000)
  })

  it('is reused, not rebuilt, for an unchanged recipe', async () => {
    const again = await ensureBox(RECIPE, {cacheDir: testCacheDir()})
    expect(again).toMatchObject({path: boxPath, built: false})
  })
})

describe('box build: bad input (built CLI)', () => {
  it('unknown recipe path: exit 2, names it', async () => {
    const result = await box(['build', join(dir, 'no-such-recipe'), '--output', join(dir, 'x.box')])
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toContain('recipe directory not found')
  })

  it('invalid recipe: exit 2 with file:line:col', async () => {
    const recipeDir = join(dir, 'bad-recipe')
    await mkdir(recipeDir, {recursive: true})
    await writeFile(join(recipeDir, 'recipe.yaml'), 'name: bad\nversion: 1\nsuite: bookworm\npackages: []\n')
    const result = await box(['build', recipeDir, '--output', join(dir, 'bad.box')])
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toMatch(new RegExp(`${join(recipeDir, 'recipe.yaml')}:4:\\d+: packages`))
  })

  it.skipIf(!isRoot)('unreachable mirror: a clear error and nothing at the output path', async () => {
    const output = join(dir, 'mirror.box')
    // A rootfs hash no cache holds (the mirror is part of it), on a port nothing listens on.
    const result = await box(['build', RECIPE, '--output', output, '--mirror', 'http://127.0.0.1:9/debian'])
    expect(result.exitCode).toBe(1)
    expect(result.stderr).toContain('Debian mirror unreachable: http://127.0.0.1:9/debian/dists/bookworm/Release')
    await expect(stat(output)).rejects.toThrow()
    await expect(stat(`${output}.partial`)).rejects.toThrow()
  })

  it.skipIf(!isRoot)('a second build of the same output at once: refused by the lock', async () => {
    const output = join(dir, 'locked.box')
    const release = await lockOutput(output)
    try {
      // The lock is held by this (live) process, so the CLI must refuse.
      const result = await box(['build', RECIPE, '--output', output])
      expect(result.exitCode).toBe(1)
      expect(result.stderr).toMatch(/another build \(pid \d+\) is writing/)
      await expect(stat(output)).rejects.toThrow()
    } finally {
      await release()
    }
  })

  it.skipIf(!isRoot)(
    'Ctrl-C mid-debootstrap: exit 130, no output, no half tree in the cache, no process or mount left',
    async () => {
      const output = join(dir, 'interrupted.box')
      const cache = join(dir, 'interrupted-cache')
      const child = execa('node', [CLI, 'build', RECIPE, '--output', output], {
        reject: false,
        env: {BOX_CACHE_DIR: cache, BOX_DATA_DIR: join(dir, 'data'), NO_COLOR: '1'},
        stdin: 'ignore',
        timeout: 120_000,
      })
      // Mid-way: debootstrap has started filling its temporary tree.
      const rootfsDir = join(cache, 'rootfs')
      let temp: string | undefined
      for (let i = 0; i < 300 && !temp; i++) {
        temp = (await readdir(rootfsDir).catch(() => [])).find((name) => name.includes('.tmp-'))
        if (!temp) await sleep(100)
      }
      expect(temp, 'debootstrap never started').toBeDefined()
      await sleep(3000)
      child.kill('SIGINT')
      const result = await child
      expect(result.exitCode, String(result.stderr)).toBe(130)
      expect(String(result.stderr)).toMatch(/interrupted/)
      await expect(stat(output)).rejects.toThrow()
      await expect(stat(`${output}.partial`)).rejects.toThrow()
      expect(await readdir(rootfsDir)).toEqual([])
      // Nothing debootstrap started (wget, dpkg, chroot) goes on writing a tree that is gone.
      await sleep(500)
      const {stdout: processes} = await execa('ps', ['-eo', 'pid=,args='])
      expect(processes.split('\n').filter((line) => line.includes(cache))).toEqual([])
      expect((await readFile('/proc/self/mounts', 'utf8')).split('\n').filter((line) => line.includes(cache))).toEqual(
        [],
      )
    },
  )

  it.skipIf(!isRoot)('refuses to overwrite an existing output without --force', async () => {
    const output = join(dir, 'exists.box')
    await writeFile(output, 'old')
    const result = await box(['build', RECIPE, '--output', output])
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toContain('already exists')
  })
})
