/**
 * `box build` for real: the reference recipe through every stage (debootstrap, chroot,
 * mke2fs, the builder VM under QEMU, zstd). Slow the first time on a machine (a few
 * minutes); the box is cached under BOX_TEST_CACHE (default <cache>-test) keyed by the
 * full recipe hash, so later runs — and the QEMU boot tests — reuse it.
 * Bad-input cases run the built CLI (dist/, `npm run build`).
 */
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {cp, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox, fullRecipeHash, loadRecipe, rootfsHash} from '../../src/builder/index.js'
import {testCacheDir} from '../support/cache.js'
import {lockOutput} from '../../src/builder/package.js'
import {readArchiveFile} from '../../src/lib/box/archive.js'
import {BoxMetadataSchema} from '../../src/lib/box/metadata.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {createProgress, type Progress} from '../../src/lib/core/progress.js'
import {defaultMirror, ensureRootfs, rootfsCachePath} from '../../src/builder/rootfs.js'

const RECIPE = join(PROJECT_ROOT, 'boxes', 'debian-bookworm')
const CLI = process.env.BOX_TEST_CLI ?? join(PROJECT_ROOT, 'bin', 'run.js')
const isRoot = process.getuid?.() === 0

let dir: string
let mirror: string
let referenceHash: string
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'box-build-'))
  mirror = (await defaultMirror()).replace(/\/+$/, '')
  referenceHash = await fullRecipeHash(await loadRecipe(RECIPE), mirror)
})
afterAll(async () => {
  await rm(dir, {recursive: true, force: true})
})

async function box(args: string[], env: Record<string, string> = {}, timeout = 120_000) {
  const result = await execa('node', [CLI, ...args], {
    reject: false,
    env: {BOX_CACHE_DIR: join(dir, 'cache'), BOX_DATA_DIR: join(dir, 'data'), NO_COLOR: '1', ...env},
    stdin: 'ignore',
    timeout,
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

  it('a copy of the recipe whose files only have new mtimes maps to the same box: reused', async () => {
    const copy = await recipeCopy('touched')
    const later = new Date(Date.now() + 3_600_000)
    await utimes(join(copy, 'recipe.yaml'), later, later)
    await utimes(join(copy, '..', '..', 'static', 'insecure_key.pub'), later, later)
    expect(await hashOf(copy)).toBe(referenceHash)
    expect(await ensureBox(copy, {cacheDir: testCacheDir()})).toMatchObject({path: boxPath, built: false})
  })

  it('one changed input of the recipe (a package, the hostname, a key file) gives another key', async () => {
    const reference = await loadRecipe(RECIPE)
    const withPackage = await recipeCopy('package', (yaml) => yaml.replace(/^( {2}- nftables.*)$/m, '$1\n  - less'))
    expect(await hashOf(withPackage)).not.toBe(referenceHash)
    // A package changes the debootstrapped tree too; the hostname and a key only what is configured on it.
    expect(rootfsHash(await loadRecipe(withPackage), mirror)).not.toBe(rootfsHash(reference, mirror))
    const renamed = await recipeCopy('hostname', renameHost)
    expect(await hashOf(renamed)).not.toBe(referenceHash)
    expect(rootfsHash(await loadRecipe(renamed), mirror)).toBe(rootfsHash(reference, mirror))
    const otherKey = await recipeCopy('key')
    const keyFile = join(otherKey, '..', '..', 'static', 'insecure_key.pub')
    await rm(keyFile)
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'other', '-f', keyFile.replace(/\.pub$/, '')])
    expect(await hashOf(otherKey)).not.toBe(referenceHash)
  })

  it('the guest payload is in the key: a changed initramfs hook gives another, a touched one the same', async () => {
    const root = join(dir, 'project-copy')
    for (const part of ['src', 'initramfs', 'provisioners', 'static'])
      await cp(join(PROJECT_ROOT, part), join(root, part), {recursive: true})
    const hook = join(root, 'initramfs', 'hooks', 'resnap')
    const later = new Date(Date.now() + 3_600_000)
    await utimes(hook, later, later)
    expect(await hashOf(RECIPE, root)).toBe(referenceHash)
    await writeFile(hook, `${await readFile(hook, 'utf8')}# changed\n`)
    expect(await hashOf(RECIPE, root)).not.toBe(referenceHash)
  })

  it('ensureBox builds (does not reuse the cached box) for a changed recipe', async () => {
    const renamed = await recipeCopy('hostname-ensure', renameHost)
    const hash = await hashOf(renamed)
    // Stopped as the first stage starts: the decision is what is under test, the build itself below.
    const controller = new AbortController()
    const stages: string[] = []
    const progress: Progress = {
      ...createProgress({silent: true}),
      stage(name) {
        stages.push(name)
        controller.abort()
        return createProgress({silent: true}).stage(name)
      },
    }
    await expect(ensureBox(renamed, {cacheDir: testCacheDir(), progress, signal: controller.signal})).rejects.toThrow()
    expect(stages).toEqual(['rootfs'])
    await expect(stat(join(testCacheDir(), 'boxes', `${hash}.box`))).rejects.toThrow()
  })

  it('box build through the CLI: the cached rootfs reused, every stage shown, the box written', async () => {
    const output = join(dir, 'cli.box')
    const started = Date.now()
    const result = await box(['build', RECIPE, '--output', output], {BOX_CACHE_DIR: testCacheDir()}, 600_000)
    console.log(`box build through the CLI (rootfs cached): ${Math.round((Date.now() - started) / 1000)} s`)
    expect(result.exitCode, result.stderr).toBe(0)
    const done = result.stderr.split('\n').filter((line) => line.startsWith('✔ '))
    expect(done.map((line) => /^✔ (.+?) \((?:\d+ min )?[\d.]+ s\)/.exec(line)?.[1])).toEqual(BUILD_STAGES)
    expect(done[0]).toMatch(/^✔ rootfs \([\d.]+ s\): cached$/)
    for (const stage of BUILD_STAGES) expect(result.stderr).toContain(`==> ${stage}\n`)
    const [path, summary] = result.stdout.trim().split('\n')
    expect(path).toBe(output)
    const sha256 = await sha256Of(output)
    expect(summary).toMatch(new RegExp(`^sha256 ${sha256}  [\\d.]+ MB, built in `))
    const listing = async (file: string) => (await execa('tar', ['--zstd', '-tf', file])).stdout.split('\n').sort()
    expect(await listing(output)).toEqual(await listing(boxPath))
    // Same recipe, same key: the metadata is the cached box's, byte for byte.
    expect(String(await readArchiveFile(output, 'metadata.json'))).toBe(
      String(await readArchiveFile(boxPath, 'metadata.json')),
    )
  }, 600_000)

  it('box build --json of a changed recipe: rebuilt on the cached rootfs, the result as JSON', async () => {
    const renamed = await recipeCopy('hostname-cli', renameHost)
    const output = join(dir, 'renamed.box')
    const started = Date.now()
    const result = await box(['build', renamed, '--output', output, '--json'], {BOX_CACHE_DIR: testCacheDir()}, 600_000)
    console.log(`box build --json through the CLI (rootfs cached): ${Math.round((Date.now() - started) / 1000)} s`)
    expect(result.exitCode, result.stderr).toBe(0)
    const json = JSON.parse(result.stdout) as Record<string, unknown>
    expect(Object.keys(json).sort()).toEqual(['output', 'recipeHash', 'rootfsHash', 'sha256', 'size', 'timings'])
    expect(json).toMatchObject({
      output,
      sha256: await sha256Of(output),
      size: (await stat(output)).size,
      recipeHash: await hashOf(renamed),
      rootfsHash: rootfsHash(await loadRecipe(RECIPE), mirror),
    })
    expect(json.recipeHash).not.toBe(referenceHash)
    const timings = json.timings as {stage: string; ms: number; cached?: boolean}[]
    expect(timings.map((timing) => timing.stage)).toEqual(BUILD_STAGES)
    expect(timings[0]!.cached).toBe(true)
    expect(timings.slice(1).every((timing) => timing.cached === undefined && timing.ms > 0)).toBe(true)
    const metadata = JSON.parse(String(await readArchiveFile(output, 'metadata.json')))
    expect(metadata.box.recipe_hash).toBe(json.recipeHash)
  }, 600_000)

  it('a thin tree, like any kind’s, is the plain tree copied with the kinds’ packages installed by apt: no second debootstrap', async () => {
    // A cache holding only a copy of the plain tree the reference box was built on.
    const cacheDir = join(dir, 'derived-cache')
    const reference = await loadRecipe(RECIPE)
    const plainPath = rootfsCachePath(cacheDir, rootfsHash(reference, mirror))
    await mkdir(join(cacheDir, 'rootfs'), {recursive: true})
    await execa('cp', [
      '-a',
      '--reflink=auto',
      rootfsCachePath(testCacheDir(), rootfsHash(reference, mirror)),
      plainPath,
    ])
    const thin = await loadRecipe(join(PROJECT_ROOT, 'boxes', 'debian-bookworm-thin'))
    const steps: string[] = []
    const started = Date.now()
    const derived = await ensureRootfs({
      recipe: thin,
      mirror,
      cacheDir,
      stage: {update: (text) => steps.push(text), done: () => undefined, fail: () => undefined},
    })
    console.log(`thin tree from the plain one: ${Math.round((Date.now() - started) / 1000)} s`)
    expect(derived).toMatchObject({hash: rootfsHash(thin, mirror), cached: false, added: ['thin-provisioning-tools']})
    expect(steps).toEqual(['copying the plain tree, then installing thin-provisioning-tools (apt)'])
    // dpkg-query's own field syntax, not a template.
    // eslint-disable-next-line no-template-curly-in-string
    const statusFormat = '${db:Status-Status}'
    const installed = async (root: string) =>
      (
        await execa('chroot', [root, 'dpkg-query', '-W', '-f', statusFormat, 'thin-provisioning-tools'], {
          reject: false,
        })
      ).stdout
    expect(await installed(derived.path)).toBe('installed')
    // thin_check, which LVM runs when it activates the pool (in the builder VM and the guest's initramfs).
    expect((await stat(join(derived.path, 'usr', 'sbin', 'thin_check'))).mode & 0o111).not.toBe(0)
    // The plain tree is left as it was, and no temp tree is left beside them.
    expect(await installed(plainPath)).not.toBe('installed')
    expect((await readdir(join(cacheDir, 'rootfs'))).sort()).toEqual(
      [rootfsHash(reference, mirror), derived.hash].sort(),
    )
    // The next build of the same kind reuses it.
    expect(await ensureRootfs({recipe: thin, mirror, cacheDir})).toMatchObject({cached: true, path: derived.path})
    await rm(cacheDir, {recursive: true, force: true})
  }, 600_000)
})

const BUILD_STAGES = ['rootfs', 'configure', 'images', 'disk (builder VM)', 'package']

const renameHost = (yaml: string) => yaml.replace(/^hostname: box$/m, 'hostname: box-renamed')

/** A copy of the reference recipe laid out as in the checkout (its key path, ../../static/…, resolves alike). */
async function recipeCopy(name: string, edit?: (yaml: string) => string): Promise<string> {
  const top = join(dir, name)
  const recipeDir = join(top, 'boxes', 'debian-bookworm')
  await mkdir(recipeDir, {recursive: true})
  await cp(join(PROJECT_ROOT, 'static', 'insecure_key.pub'), join(top, 'static', 'insecure_key.pub'))
  const yaml = await readFile(join(RECIPE, 'recipe.yaml'), 'utf8')
  const edited = edit ? edit(yaml) : yaml
  if (edit) expect(edited).not.toBe(yaml)
  await writeFile(join(recipeDir, 'recipe.yaml'), edited)
  return recipeDir
}

async function hashOf(recipeDir: string, root?: string): Promise<string> {
  return fullRecipeHash(await loadRecipe(recipeDir), mirror, root)
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

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
