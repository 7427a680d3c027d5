/**
 * A box recipe (boxes/<name>/recipe.yaml): what goes into the rootfs, the disk layout
 * and the users. Validated with zod; every error names file:line:col. Names that end up
 * in guest scripts, grub.cfg or LVM are restricted by regex here, so nothing later has
 * to quote them.
 */
import {createHash} from 'node:crypto'
import {access, readFile} from 'node:fs/promises'
import {isAbsolute, join, resolve} from 'node:path'
import {z} from 'zod'

import type {LvmLayout} from '../lib/box/metadata.js'
import {configError, loadYamlFile, type LoadedYaml} from '../lib/core/config-file.js'
import {BoxError, ExitCode} from '../lib/core/errors.js'

const MiB = 1024 * 1024
const SIZE_RE = /^(\d+(?:\.\d+)?)([KMGT])$/i
const UNIT: Record<string, number> = {K: 1024, M: MiB, G: 1024 * MiB, T: 1024 * 1024 * MiB}

/** "512M" / "2G" → bytes (binary units, as lvcreate and mke2fs read them). */
export function parseSize(size: string): number {
  const match = SIZE_RE.exec(size)
  if (!match) throw new Error(`not a size: ${size}`)
  return Math.round(Number(match[1]) * UNIT[match[2]!.toUpperCase()]!)
}

const size = z.string().regex(SIZE_RE, 'a size such as 512M or 2G')
/** LVM names: device-mapper and our initramfs script accept these without quoting. */
const lvmName = z
  .string()
  .regex(/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}$/, 'an LVM name ([A-Za-z0-9_.+-], not starting with - or .)')
const userName = z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'a user name ([a-z_][a-z0-9_-]*)')
const packageName = z.string().regex(/^[a-z0-9][a-z0-9+.-]+$/, 'a Debian package name')

/**
 * How the box's initramfs resnaps: Debian's initramfs-tools with box's local-top script
 * (initramfs/scripts, initramfs/hooks), or dracut with box's module (initramfs/dracut/90resnap).
 */
export const INITRAMFS_KINDS = ['initramfs-tools', 'dracut'] as const
export type InitramfsKind = (typeof INITRAMFS_KINDS)[number]
/**
 * What root_snap is: a classic LVM snapshot of the origin (a copy-on-write area of
 * `snapshot_size`, invalidated when it fills up), or a thin snapshot in a thin pool that
 * holds root too (no size of its own; the pool's `pool_size` bounds both).
 */
export const SNAPSHOT_KINDS = ['classic', 'thin'] as const
export type SnapshotKind = (typeof SNAPSHOT_KINDS)[number]

/** The Debian package of each initramfs kind: the builder installs it (a recipe's packages name neither). */
export const INITRAMFS_PACKAGE: Record<InitramfsKind, string> = {'initramfs-tools': 'initramfs-tools', dracut: 'dracut'}
/** thin_check and its initramfs hook: LVM runs it when it activates a thin pool. */
export const THIN_PACKAGE = 'thin-provisioning-tools'

export const RecipeSchema = z.strictObject({
  name: z.string().regex(/^[a-z0-9][a-z0-9._-]*$/, 'a box name ([a-z0-9._-])'),
  version: z.string().regex(/^\d+(\.\d+)*([-+][0-9A-Za-z.-]+)?$/, 'a version such as 1.0.0'),
  suite: z.string().regex(/^[a-z][a-z0-9-]*$/, 'a Debian suite such as bookworm'),
  /** Debian mirror; default: the host's own apt source when it is Debian, else deb.debian.org. */
  mirror: z.url({protocol: /^https?$/}).optional(),
  packages: z.array(packageName).min(1),
  /** The initramfs generator and its resnap hook; its package is installed by the builder. */
  initramfs: z.enum(INITRAMFS_KINDS, {error: `one of ${INITRAMFS_KINDS.join(', ')}`}).default('initramfs-tools'),
  /** The kind of snapshot root_snap is (lvm.snapshot names it). */
  snapshot: z.enum(SNAPSHOT_KINDS, {error: `one of ${SNAPSHOT_KINDS.join(', ')}`}).default('classic'),
  hostname: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'a host name')
    .default('box'),
  disk_size: size,
  boot_size: size,
  lvm: z.strictObject({
    vg: lvmName,
    root: lvmName,
    root_size: size,
    snapshot: lvmName,
    /** Classic snapshots only: the copy-on-write area for one boot's changes to /. */
    snapshot_size: size.optional(),
    /** Thin snapshots only: the thin pool holding root and root_snap, and its size. */
    pool: lvmName.optional(),
    pool_size: size.optional(),
    persistent: lvmName,
    persistent_size: size,
    swap: lvmName.optional(),
    swap_size: size.optional(),
  }),
  users: z
    .array(
      z.strictObject({
        name: userName,
        sudo: z.enum(['nopasswd', 'none']).default('none'),
        /** Public key files, relative to the recipe directory. */
        authorized_keys: z.array(z.string().min(1)).default([]),
      }),
    )
    .min(1),
  /** Extra kernel arguments (grub and direct boot). Written into grub.cfg, hence the narrow alphabet. */
  kernel_args: z
    .string()
    .regex(/^[A-Za-z0-9_.,=:/ +-]*$/, 'kernel arguments ([A-Za-z0-9_.,=:/ +-] only)')
    .default(''),
})
export type RecipeFields = z.infer<typeof RecipeSchema>

export interface Recipe extends RecipeFields {
  /** Directory holding recipe.yaml. */
  dir: string
  file: string
  /** Absolute paths of each user's authorized key files, in users order. */
  authorizedKeyFiles: string[][]
}

export const RECIPE_FILE = 'recipe.yaml'

/** Fixed overheads of the disk layout: MBR gap, LVM metadata and extent rounding (4 MiB per LV). */
const LAYOUT_OVERHEAD = 1 * MiB + 1 * MiB + 4 * 4 * MiB
/** The pool metadata LV builds make (build-disk's lvcreate --poolmetadatasize), far more than a root's few GiB need. */
export const THIN_METADATA_SIZE = '16M'

/** Load and check boxes/<name>/recipe.yaml; throws a BoxError naming file:line:col. */
export async function loadRecipe(recipeDir: string): Promise<Recipe> {
  const dir = resolve(recipeDir)
  const file = join(dir, RECIPE_FILE)
  try {
    await access(dir)
  } catch {
    throw new BoxError(`recipe directory not found: ${recipeDir}`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['pass a directory holding recipe.yaml, e.g. boxes/debian-bookworm'],
    })
  }
  const loaded = await loadYamlFile(file, RecipeSchema, 'recipe')
  checkLayout(loaded)
  const authorizedKeyFiles: string[][] = []
  for (const [u, user] of loaded.value.users.entries()) {
    const files: string[] = []
    for (const [k, key] of user.authorized_keys.entries()) {
      const path = isAbsolute(key) ? key : join(dir, key)
      const text = await readFile(path, 'utf8').catch(() => undefined)
      if (text === undefined)
        throw configError(loaded, ['users', u, 'authorized_keys', k], `cannot read ${path}`, 'recipe')
      if (!/^(ssh-|ecdsa-|sk-)\S+ \S+/m.test(text))
        throw configError(loaded, ['users', u, 'authorized_keys', k], `${path} is not an OpenSSH public key`, 'recipe')
      files.push(path)
    }
    authorizedKeyFiles.push(files)
  }
  return {...loaded.value, dir, file, authorizedKeyFiles}
}

/** Semantic checks the schema cannot express: LV names distinct, swap size with swap, everything fits. */
export function checkLayout(loaded: LoadedYaml<RecipeFields>): void {
  const {initramfs, packages} = loaded.value
  for (const [index, name] of packages.entries()) {
    const kind = INITRAMFS_KINDS.find((other) => other !== initramfs && INITRAMFS_PACKAGE[other] === name)
    if (kind)
      throw configError(
        loaded,
        ['packages', index],
        `${name} is the initramfs of \`initramfs: ${kind}\`, and this recipe says \`initramfs: ${initramfs}\` (the builder installs its package itself)`,
        'recipe',
      )
  }
  const {lvm, snapshot} = loaded.value
  const names = [lvm.root, lvm.snapshot, lvm.pool, lvm.persistent, lvm.swap].filter(Boolean)
  if (new Set(names).size !== names.length)
    throw configError(loaded, ['lvm'], 'root, snapshot, pool, persistent and swap need distinct names', 'recipe')
  if (snapshot === 'thin') {
    if (initramfs === 'dracut')
      throw configError(
        loaded,
        ['snapshot'],
        'thin snapshots are resnapped by the initramfs-tools script only: say `initramfs: initramfs-tools`, or `snapshot: classic` with dracut',
        'recipe',
      )
    if (lvm.snapshot_size)
      throw configError(
        loaded,
        ['lvm', 'snapshot_size'],
        'a thin snapshot has no size of its own (it shares the pool): remove snapshot_size, or say `snapshot: classic`',
        'recipe',
      )
    if (!lvm.pool || !lvm.pool_size)
      throw configError(
        loaded,
        ['lvm'],
        '`snapshot: thin` needs pool and pool_size (the thin pool root_snap lives in)',
        'recipe',
      )
  } else {
    if (!lvm.snapshot_size)
      throw configError(loaded, ['lvm'], '`snapshot: classic` needs snapshot_size (its copy-on-write area)', 'recipe')
    const thinKey = lvm.pool ? 'pool' : lvm.pool_size ? 'pool_size' : undefined
    if (thinKey) throw configError(loaded, ['lvm', thinKey], `${thinKey} is for \`snapshot: thin\` only`, 'recipe')
  }
  if (lvm.swap && !lvm.swap_size) throw configError(loaded, ['lvm', 'swap'], 'swap needs swap_size', 'recipe')
  if (!lvm.swap && lvm.swap_size) throw configError(loaded, ['lvm', 'swap_size'], 'swap_size without swap', 'recipe')
  const boot = parseSize(loaded.value.boot_size)
  if (boot < 64 * MiB)
    throw configError(loaded, ['boot_size'], 'at least 64M is needed for the kernel and initrd', 'recipe')
  const root = parseSize(lvm.root_size)
  if (root < 512 * MiB)
    throw configError(loaded, ['lvm', 'root_size'], 'at least 512M is needed for the root filesystem', 'recipe')
  // root can hold root_size of data and one boot's changes can rewrite all of it: a pool of
  // twice that never runs out, so the snapshot's writes never fail for want of space.
  if (snapshot === 'thin' && parseSize(lvm.pool_size!) < 2 * root)
    throw configError(
      loaded,
      ['lvm', 'pool_size'],
      `${lvm.pool_size} is less than twice root_size (${lvm.root_size}): root and one boot's changes to / can each fill root_size, so a smaller pool could run out`,
      'recipe',
    )
  // Thin: root and root_snap live in the pool, which also needs its metadata LV and LVM's spare copy of it.
  const rootAndSnapshot =
    snapshot === 'thin'
      ? parseSize(lvm.pool_size!) + 2 * parseSize(THIN_METADATA_SIZE)
      : root + parseSize(lvm.snapshot_size!)
  const needed =
    boot +
    rootAndSnapshot +
    parseSize(lvm.persistent_size) +
    (lvm.swap_size ? parseSize(lvm.swap_size) : 0) +
    LAYOUT_OVERHEAD
  const disk = parseSize(loaded.value.disk_size)
  if (needed > disk) {
    const parts = snapshot === 'thin' ? 'boot + pool (and its metadata)' : 'boot + root + snapshot'
    throw configError(
      loaded,
      ['disk_size'],
      `${loaded.value.disk_size} is too small: ${parts} + persistent + swap need ${Math.ceil(needed / MiB)} MiB`,
      'recipe',
    )
  }
}

/** The layout as metadata.json and kernelCommandLine take it: the snapshot's size (classic) or its pool (thin). */
export function lvmLayout(recipe: RecipeFields): LvmLayout {
  const {vg, root, snapshot, snapshot_size, pool, persistent, swap} = recipe.lvm
  const snapshotPlace = recipe.snapshot === 'thin' ? {pool: pool!} : {snapshot_size: snapshot_size!}
  return {vg, root, snapshot, ...snapshotPlace, persistent, ...(swap ? {swap} : {})}
}

/**
 * What debootstrap installs: the recipe's packages and initramfs-tools, whatever the kind. The
 * kernel package depends on `initramfs-tools | linux-initramfs-tool`, debootstrap's resolver
 * always takes the first alternative (`--exclude` does not stop it), and dracut conflicts with
 * initramfs-tools: a dracut tree is switched over by apt afterwards (rootfs.ts).
 */
export function debootstrapPackages(recipe: Pick<RecipeFields, 'packages'>): string[] {
  return [...new Set([...recipe.packages, INITRAMFS_PACKAGE['initramfs-tools']])]
}

/** What the rootfs stage reads of a recipe. */
export type RootfsInputs = Pick<RecipeFields, 'suite' | 'packages' | 'initramfs' | 'snapshot'>

/**
 * The packages the recipe's kinds need besides its own: another initramfs than
 * initramfs-tools, thin_check for a thin pool. apt installs them in a copy of the plain
 * tree (rootfs.ts), so every kind shares one debootstrap.
 */
export function kindPackages(recipe: Pick<RecipeFields, 'initramfs' | 'snapshot'>): string[] {
  return [
    ...(recipe.initramfs !== 'initramfs-tools' ? [INITRAMFS_PACKAGE[recipe.initramfs]] : []),
    ...(recipe.snapshot === 'thin' ? [THIN_PACKAGE] : []),
  ]
}

/**
 * Hash of what the rootfs stage depends on (suite, mirror, packages, the kinds' packages) —
 * a change elsewhere in the recipe reuses the cached tree.
 */
export function rootfsHash(recipe: RootfsInputs, mirror: string): string {
  const kinds = kindPackages(recipe)
  const input = {
    stage: 'rootfs/debootstrap-minbase/1',
    suite: recipe.suite,
    mirror: mirror.replace(/\/+$/, ''),
    packages: debootstrapPackages(recipe).sort(),
    // Only when there are some: the hash of a plain tree stays what it was.
    ...(kinds.length > 0 ? {kind_packages: kinds} : {}),
  }
  return createHash('sha256').update(JSON.stringify(input)).digest('hex').slice(0, 16)
}
