import {cp, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {builderParams, resolveModules, sfdiskLayout} from '../../src/builder/appliance.js'
import {fstab, systemdDeviceUnit, tuneLvmConf, withoutDynamicMotd} from '../../src/builder/configure.js'
import {grubConfig} from '../../src/builder/image.js'
import {fullRecipeHash} from '../../src/builder/index.js'
import {boxMetadata} from '../../src/builder/package.js'
import {
  debootstrapPackages,
  kindPackages,
  loadRecipe,
  lvmLayout,
  parseSize,
  rootfsHash,
} from '../../src/builder/recipe.js'
import {BoxError} from '../../src/lib/core/errors.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

const REFERENCE = join(PROJECT_ROOT, 'boxes', 'debian-bookworm')
const MIRROR = 'http://deb.debian.org/debian'

let dir: string
let recipeText: string

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'box-recipe-'))
  recipeText = await readFile(join(REFERENCE, 'recipe.yaml'), 'utf8')
  await cp(join(PROJECT_ROOT, 'static', 'insecure_key.pub'), join(dir, 'key.pub'))
})
afterEach(async () => {
  await rm(dir, {recursive: true, force: true})
})

/** Write a variant of the reference recipe (keys point at a copy of the insecure key). */
async function writeRecipe(edit: (text: string) => string): Promise<string> {
  const text = edit(recipeText.replace('../../static/insecure_key.pub', 'key.pub'))
  await writeFile(join(dir, 'recipe.yaml'), text)
  return dir
}

async function loadError(recipeDir: string): Promise<BoxError> {
  try {
    await loadRecipe(recipeDir)
  } catch (error) {
    expect(error).toBeInstanceOf(BoxError)
    return error as BoxError
  }
  throw new Error('expected the recipe to be rejected')
}

/** Line (1-based) of the first line containing `text`. */
function lineOf(text: string, needle: string): number {
  return text.split('\n').findIndex((line) => line.includes(needle)) + 1
}

describe('loadRecipe', () => {
  it('loads the reference recipe', async () => {
    const recipe = await loadRecipe(REFERENCE)
    expect(recipe.name).toBe('debian-bookworm')
    expect(recipe.lvm).toMatchObject({
      vg: 'box',
      root: 'root',
      snapshot: 'root_snap',
      persistent: 'persistent',
      swap: 'swap',
    })
    expect(recipe.users[0]).toMatchObject({name: 'box', sudo: 'nopasswd'})
    expect(recipe.authorizedKeyFiles[0]).toEqual([join(PROJECT_ROOT, 'static', 'insecure_key.pub')])
    expect(recipe.packages).toContain('lvm2')
  })

  it('names a missing recipe directory', async () => {
    const error = await loadError(join(dir, 'nope'))
    expect(error.message).toContain('recipe directory not found')
    expect(error.exitCode).toBe(2)
  })

  it('names a missing recipe.yaml', async () => {
    const error = await loadError(dir)
    expect(error.message).toContain(`recipe not found: ${join(dir, 'recipe.yaml')}`)
  })

  it('reports a bad size with file:line:col of the value', async () => {
    const recipeDir = await writeRecipe((text) => text.replace('snapshot_size: 2G', 'snapshot_size: two gigs'))
    const error = await loadError(recipeDir)
    const file = join(recipeDir, 'recipe.yaml')
    const line = lineOf(await readFile(file, 'utf8'), 'snapshot_size:')
    expect(error.message).toMatch(new RegExp(`${file}:${line}:\\d+: lvm\\.snapshot_size: a size such as 512M or 2G`))
  })

  it('reports an unknown field at its key', async () => {
    const recipeDir = await writeRecipe((text) => text.replace('hostname: box', 'hostname: box\nflavour: vanilla'))
    const error = await loadError(recipeDir)
    const line = lineOf(await readFile(join(recipeDir, 'recipe.yaml'), 'utf8'), 'flavour:')
    expect(error.message).toContain(`recipe.yaml:${line}:1: unknown field "flavour"`)
  })

  it('refuses an unknown initramfs or snapshot kind at its line, naming the kinds', async () => {
    for (const [field, bad, accepted] of [
      ['initramfs', 'mkinitcpio', 'one of initramfs-tools, dracut'],
      ['snapshot', 'zfs', 'one of classic'],
    ] as const) {
      const recipeDir = await writeRecipe((text) => text.replace(new RegExp(`^${field}: .*$`, 'm'), `${field}: ${bad}`))
      const error = await loadError(recipeDir)
      const file = join(recipeDir, 'recipe.yaml')
      const line = lineOf(await readFile(file, 'utf8'), `${field}: ${bad}`)
      expect(error.message).toContain(`${file}:${line}:${field.length + 3}: ${field}: ${accepted}`)
    }
  })

  it("refuses another kind's initramfs package in packages, at its list item", async () => {
    const recipeDir = await writeRecipe((text) =>
      text
        .replace('initramfs: initramfs-tools', 'initramfs: dracut')
        .replace('  - lvm2\n', '  - lvm2\n  - initramfs-tools\n'),
    )
    const error = await loadError(recipeDir)
    const line = lineOf(await readFile(join(recipeDir, 'recipe.yaml'), 'utf8'), '- initramfs-tools')
    expect(error.message).toMatch(
      new RegExp(`recipe\\.yaml:${line}:\\d+: .*initramfs-tools is the initramfs of \`initramfs: initramfs-tools\``),
    )
  })

  it('loads the dracut recipe: the reference recipe but for its name and initramfs', async () => {
    const [reference, dracut] = await Promise.all([
      loadRecipe(REFERENCE),
      loadRecipe(join(PROJECT_ROOT, 'boxes', 'debian-bookworm-dracut')),
    ])
    expect(dracut).toMatchObject({name: 'debian-bookworm-dracut', initramfs: 'dracut', snapshot: 'classic'})
    expect(reference).toMatchObject({initramfs: 'initramfs-tools', snapshot: 'classic'})
    const {name: _a, initramfs: _b, dir: _c, file: _d, authorizedKeyFiles: _e, ...sharedDracut} = dracut
    const {name: _f, initramfs: _g, dir: _h, file: _i, authorizedKeyFiles: _j, ...sharedReference} = reference
    expect(sharedDracut).toEqual(sharedReference)
    // debootstrap gets initramfs-tools either way (the kernel's first alternative); apt switches a dracut tree.
    expect(debootstrapPackages(dracut)).toEqual([...dracut.packages, 'initramfs-tools'])
    expect(debootstrapPackages(reference)).toEqual([...reference.packages, 'initramfs-tools'])
    expect(rootfsHash(dracut, MIRROR)).not.toBe(rootfsHash(reference, MIRROR))
    expect(boxMetadata(dracut, 'abc').box).toMatchObject({initramfs: 'dracut', snapshot: 'classic'})
  })

  it('loads the thin recipe: root and root_snap in a pool, no snapshot size; its tree adds thin-provisioning-tools', async () => {
    const [reference, thin] = await Promise.all([
      loadRecipe(REFERENCE),
      loadRecipe(join(PROJECT_ROOT, 'boxes', 'debian-bookworm-thin')),
    ])
    expect(thin).toMatchObject({name: 'debian-bookworm-thin', initramfs: 'initramfs-tools', snapshot: 'thin'})
    expect(thin.lvm).toMatchObject({pool: 'pool', pool_size: '6G', root_size: '3G', snapshot: 'root_snap'})
    expect(thin.lvm.snapshot_size).toBeUndefined()
    expect(thin.packages).toEqual(reference.packages)
    expect(kindPackages(thin)).toEqual(['thin-provisioning-tools'])
    expect(kindPackages(reference)).toEqual([])
    expect(kindPackages({initramfs: 'dracut', snapshot: 'classic'})).toEqual(['dracut'])
    expect(rootfsHash(thin, MIRROR)).not.toBe(rootfsHash(reference, MIRROR))
    // The metadata and the kernel command line name the pool, not a size.
    expect(lvmLayout(thin)).toEqual({
      vg: 'box',
      root: 'root',
      snapshot: 'root_snap',
      pool: 'pool',
      persistent: 'persistent',
      swap: 'swap',
    })
    expect(boxMetadata(thin, 'abc').box).toMatchObject({snapshot: 'thin', lvm: {pool: 'pool'}})
    expect(builderParams(thin)).toMatchObject({snapshot_kind: 'thin', pool: 'pool', pool_size: '6G', snapshot_size: ''})
    expect(builderParams(reference)).toMatchObject({snapshot_kind: 'classic', pool: '', snapshot_size: '2G'})
  })

  it.each([
    [
      'a thin snapshot with a size',
      (t: string) =>
        t
          .replace('snapshot: classic', 'snapshot: thin')
          .replace('snapshot_size: 2G', 'snapshot_size: 2G\n  pool: pool\n  pool_size: 6G'),
      'snapshot_size:',
      /lvm\.snapshot_size: a thin snapshot has no size of its own/,
    ],
    [
      'a thin snapshot without a pool',
      (t: string) => t.replace('snapshot: classic', 'snapshot: thin').replace(/\n  snapshot_size: 2G[^\n]*/, ''),
      '  vg: box',
      /lvm: `snapshot: thin` needs pool and pool_size/,
    ],
    [
      'a classic snapshot with a pool',
      (t: string) => t.replace('snapshot_size: 2G', 'snapshot_size: 2G\n  pool: pool'),
      'pool: pool',
      /lvm\.pool: pool is for `snapshot: thin` only/,
    ],
    [
      'a classic snapshot without a size',
      (t: string) => t.replace(/\n  snapshot_size: 2G[^\n]*/, ''),
      '  vg: box',
      /lvm: `snapshot: classic` needs snapshot_size/,
    ],
    [
      'a thin pool smaller than twice root',
      (t: string) =>
        t
          .replace('snapshot: classic', 'snapshot: thin')
          .replace(/snapshot_size: 2G[^\n]*/, 'pool: pool\n  pool_size: 5G'),
      'pool_size: 5G',
      /lvm\.pool_size: 5G is less than twice root_size \(3G\)/,
    ],
    [
      'thin with dracut',
      (t: string) =>
        t
          .replace('snapshot: classic', 'snapshot: thin')
          .replace('initramfs: initramfs-tools', 'initramfs: dracut')
          .replace(/snapshot_size: 2G[^\n]*/, 'pool: pool\n  pool_size: 6G'),
      'snapshot: thin',
      /snapshot: thin snapshots are resnapped by the initramfs-tools script only/,
    ],
    [
      'an unknown snapshot kind',
      (t: string) => t.replace('snapshot: classic', 'snapshot: zfs'),
      'snapshot: zfs',
      /snapshot: one of classic, thin/,
    ],
  ])('rejects %s, naming file:line', async (_name, edit, needle, message) => {
    const recipeDir = await writeRecipe(edit)
    const file = join(recipeDir, 'recipe.yaml')
    const error = await loadError(recipeDir)
    const line = lineOf(await readFile(file, 'utf8'), needle)
    expect(error.message).toMatch(new RegExp(`${file}:${line}:\\d+: `))
    expect(error.message).toMatch(message)
  })

  it('rejects LVM names that would need quoting', async () => {
    const recipeDir = await writeRecipe((text) => text.replace('vg: box', 'vg: "box; rm -rf /"'))
    const error = await loadError(recipeDir)
    expect(error.message).toMatch(/recipe\.yaml:\d+:\d+: lvm\.vg: an LVM name/)
  })

  it('rejects kernel arguments outside the grub-safe alphabet', async () => {
    const recipeDir = await writeRecipe((text) =>
      text.replace(/^kernel_args: .*$/m, "kernel_args: console=ttyS0 '$(reboot)'"),
    )
    const error = await loadError(recipeDir)
    expect(error.message).toMatch(/recipe\.yaml:\d+:\d+: kernel_args: kernel arguments/)
  })

  it('rejects a layout that does not fit the disk, pointing at disk_size', async () => {
    const recipeDir = await writeRecipe((text) => text.replace('disk_size: 8G', 'disk_size: 4G'))
    const error = await loadError(recipeDir)
    const line = lineOf(await readFile(join(recipeDir, 'recipe.yaml'), 'utf8'), 'disk_size:')
    expect(error.message).toMatch(
      new RegExp(
        `recipe\\.yaml:${line}:\\d+: disk_size: 4G is too small: boot \\+ root \\+ snapshot \\+ persistent \\+ swap need \\d+ MiB`,
      ),
    )
  })

  it('rejects duplicate LV names and swap without a size', async () => {
    const dup = await loadError(await writeRecipe((text) => text.replace('persistent: persistent', 'persistent: root')))
    expect(dup.message).toContain('lvm: root, snapshot, pool, persistent and swap need distinct names')
    const noSize = await loadError(await writeRecipe((text) => text.replace(/^ {2}swap_size: .*$/m, '')))
    expect(noSize.message).toMatch(/lvm\.swap: swap needs swap_size/)
  })

  it('rejects an unreadable or non-key authorized_keys file at its list item', async () => {
    const missing = await loadError(await writeRecipe((text) => text.replace('key.pub', 'missing.pub')))
    expect(missing.message).toMatch(/recipe\.yaml:\d+:\d+: users\.0\.authorized_keys\.0: cannot read/)
    await writeFile(join(dir, 'bad.pub'), 'not a key\n')
    const bad = await loadError(await writeRecipe((text) => text.replace('key.pub', 'bad.pub')))
    expect(bad.message).toContain('is not an OpenSSH public key')
  })

  it('reports YAML syntax errors with a position', async () => {
    const recipeDir = await writeRecipe((text) => text.replace('suite: bookworm', 'suite: [bookworm'))
    const error = await loadError(recipeDir)
    expect(error.message).toMatch(/recipe\.yaml:\d+:\d+: /)
  })
})

describe('hashes', () => {
  it('rootfsHash covers suite, mirror and packages only (order-insensitive)', async () => {
    const recipe = await loadRecipe(REFERENCE)
    const base = rootfsHash(recipe, MIRROR)
    expect(base).toMatch(/^[0-9a-f]{16}$/)
    expect(rootfsHash({...recipe, packages: [...recipe.packages].reverse()}, MIRROR)).toBe(base)
    expect(rootfsHash(recipe, `${MIRROR}/`)).toBe(base)
    expect(rootfsHash({...recipe, suite: 'trixie'}, MIRROR)).not.toBe(base)
    expect(rootfsHash({...recipe, packages: [...recipe.packages, 'vim-tiny']}, MIRROR)).not.toBe(base)
    expect(rootfsHash(recipe, 'http://ftp.de.debian.org/debian')).not.toBe(base)
    // A layout change does not touch the rootfs.
    expect(rootfsHash({...recipe, disk_size: '16G'} as typeof recipe, MIRROR)).toBe(base)
  })

  it('fullRecipeHash is stable and changes with the recipe text and the mirror', async () => {
    const reference = await loadRecipe(REFERENCE)
    const first = await fullRecipeHash(reference, MIRROR)
    expect(await fullRecipeHash(reference, MIRROR)).toBe(first)
    expect(await fullRecipeHash(reference, 'http://ftp.de.debian.org/debian')).not.toBe(first)
    // The hash reads recipe.yaml itself: hash each variant right after writing it.
    const same = await fullRecipeHash(await loadRecipe(await writeRecipe((text) => text)), MIRROR)
    const variant = await fullRecipeHash(
      await loadRecipe(await writeRecipe((text) => text.replace('snapshot_size: 2G', 'snapshot_size: 3G'))),
      MIRROR,
    )
    expect(variant).not.toBe(same)
  })
})

describe('generated files', () => {
  it('grub.cfg boots the snapshot with resnap by default and offers keep and the origin', async () => {
    const recipe = await loadRecipe(REFERENCE)
    const cfg = grubConfig(recipe)
    const lines = cfg.split('\n').filter((line) => line.trim().startsWith('linux '))
    expect(lines[0]).toContain(
      'root=/dev/mapper/box-root_snap ro volgroup=box lvroot=root lvsnap=root_snap lvsize=2G resnap console=ttyS0',
    )
    expect(lines[1]).toContain('root=/dev/mapper/box-root_snap ro')
    expect(lines[1]).not.toMatch(/\bresnap\b/)
    expect(lines[2]).toContain('root=/dev/mapper/box-root ro')
    expect(lines[2]).not.toMatch(/\bresnap\b/)
    expect(cfg).toContain('set default=resnap')
    expect(cfg.match(/--id (\w+)/g)).toEqual(['--id resnap', '--id keep', '--id origin'])
  })

  it('fstab mounts the snapshot as /, /boot by label and the rest nofail', async () => {
    const recipe = await loadRecipe(REFERENCE)
    const text = fstab(recipe)
    expect(text).toMatch(/^\/dev\/mapper\/box-root_snap\t\/\text4/m)
    expect(text).toMatch(/^LABEL=boot\t\/boot\text4\tdefaults,nofail/m)
    expect(text).toMatch(/^\/dev\/mapper\/box-persistent\t\/persistent\text4\tdefaults,nofail/m)
    expect(text).toMatch(/^\/dev\/mapper\/box-swap\tnone\tswap\tsw,noauto,nofail/m)
  })

  it('doubles dashes in mapper paths and escapes device unit names like systemd-escape', () => {
    expect(
      fstab({
        lvm: {
          vg: 'my-vg',
          root: 'root',
          root_size: '3G',
          snapshot: 'root-snap',
          snapshot_size: '1G',
          persistent: 'p',
          persistent_size: '1G',
        },
      }),
    ).toContain('/dev/mapper/my--vg-root--snap\t/')
    expect(systemdDeviceUnit('/dev/mapper/box-swap')).toBe('dev-mapper-box\\x2dswap.device')
  })

  it('tunes lvm.conf settings whether commented out or set', () => {
    const conf = 'devices {\n\t# issue_discards = 0\n}\nactivation {\n\tmonitoring = 1\n}\n'
    expect(tuneLvmConf(conf)).toBe('devices {\n\tissue_discards = 1\n}\nactivation {\n\tmonitoring = 0\n}\n')
    expect(() => tuneLvmConf('nothing here')).toThrow(/issue_discards/)
  })

  it("drops only the dynamic motd from sshd's PAM stack", () => {
    const pam =
      '@include common-account\nsession    optional     pam_motd.so  motd=/run/motd.dynamic\nsession    optional     pam_motd.so noupdate\n'
    expect(withoutDynamicMotd(pam)).toBe(
      '@include common-account\n# box: no update-motd scripts at every login (slow under emulation)\n#session    optional     pam_motd.so  motd=/run/motd.dynamic\nsession    optional     pam_motd.so noupdate\n',
    )
    expect(() => withoutDynamicMotd('@include common-account\n')).toThrow(/pam_motd/)
  })

  it('sfdisk layout and metadata follow the recipe', async () => {
    const recipe = await loadRecipe(REFERENCE)
    expect(sfdiskLayout(recipe)).toBe(
      `label: dos\n\nsize=${parseSize(recipe.boot_size) / 1024 / 1024}MiB, type=83, bootable\ntype=8e\n`,
    )
    const metadata = boxMetadata(recipe, 'abc')
    expect(metadata).toMatchObject({provider: 'libvirt', format: 'qcow2', virtual_size: 8})
    expect(metadata.box).toMatchObject({
      version: recipe.version,
      user: 'box',
      kernel: 'vmlinuz',
      initrd: 'initrd.img',
      recipe_hash: 'abc',
      lvm: {vg: 'box', snapshot_size: '2G'},
      initramfs: 'initramfs-tools',
      snapshot: 'classic',
    })
  })

  it('resolves module dependencies from modules.dep, dependencies first', () => {
    const dep = [
      'kernel/drivers/virtio/virtio.ko:',
      'kernel/drivers/virtio/virtio_ring.ko:',
      'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/md/dm-mod.ko:',
      'kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko',
      'kernel/drivers/md/dm-snapshot.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko',
    ].join('\n')
    const order = resolveModules(dep, ['virtio_blk', 'dm_snapshot', 'ext4'])
    expect(order).toEqual([
      'kernel/drivers/virtio/virtio_ring.ko',
      'kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/block/virtio_blk.ko',
      'kernel/drivers/md/dm-mod.ko',
      'kernel/drivers/md/dm-bufio.ko',
      'kernel/drivers/md/dm-snapshot.ko',
    ])
  })

  it('parses sizes in binary units', () => {
    expect(parseSize('512M')).toBe(512 * 1024 * 1024)
    expect(parseSize('2G')).toBe(2 * 1024 ** 3)
    expect(parseSize('1.5g')).toBe(1.5 * 1024 ** 3)
  })
})
