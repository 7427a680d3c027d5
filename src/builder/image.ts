/**
 * Stage "images": filesystem images made on the host without privileges or loop
 * devices (`mke2fs -d`): root.ext4 from the configured tree, and boot.ext4 from its
 * /boot plus box's grub.cfg. The builder VM then copies them into the real disk.
 */
import {lstat, mkdir, readdir, readlink, rename, rm, symlink, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError} from '../lib/core/errors.js'
import {run} from '../lib/core/exec.js'
import {GRUB_ENTRY, grubBootSelection} from '../lib/box/boot-choice.js'
import {kernelCommandLine, type BootChoice} from '../lib/box/resnap.js'
import {lvmLayout, parseSize, type RecipeFields} from './recipe.js'

export interface BootFiles {
  dir: string
  /** Kernel version the tree boots ("6.1.0-50-cloud-amd64"). */
  kernelVersion: string
  /** Absolute paths of the versioned kernel and initrd inside `dir`. */
  kernel: string
  initrd: string
}

/** Newest kernel version in a /boot directory (by Debian's version sort is overkill: one kernel per box). */
async function kernelVersions(bootDir: string): Promise<string[]> {
  const names = await readdir(bootDir)
  return names
    .filter((name) => name.startsWith('vmlinuz-'))
    .map((name) => name.slice('vmlinuz-'.length))
    .filter((version) => names.includes(`initrd.img-${version}`))
    .sort((a, b) => a.localeCompare(b, 'en', {numeric: true}))
}

/**
 * Move the tree's /boot contents into `bootDir` (the boot partition's content), leaving
 * an empty /boot mount point, with vmlinuz/initrd.img links and box's grub.cfg.
 */
export async function splitBoot(root: string, bootDir: string, recipe: RecipeFields): Promise<BootFiles> {
  const source = join(root, 'boot')
  await mkdir(bootDir, {recursive: true})
  for (const name of await readdir(source)) await rename(join(source, name), join(bootDir, name))
  const version = (await kernelVersions(bootDir)).at(-1)
  if (!version)
    throw new BoxError('the rootfs has no kernel and initrd in /boot', {
      suggestions: ['the recipe must install a linux-image-* package (its initramfs kind makes the initrd)'],
    })
  for (const [link, target] of [
    ['vmlinuz', `vmlinuz-${version}`],
    ['initrd.img', `initrd.img-${version}`],
  ] as const) {
    await rm(join(bootDir, link), {force: true})
    await symlink(target, join(bootDir, link))
  }
  // The root's /vmlinuz links point into /boot; kernel-img.conf now keeps them in /boot.
  for (const link of ['vmlinuz', 'vmlinuz.old', 'initrd.img', 'initrd.img.old']) {
    const path = join(root, link)
    if ((await lstat(path).catch(() => undefined))?.isSymbolicLink()) await rm(path)
  }
  await mkdir(join(bootDir, 'grub'), {recursive: true})
  await writeFile(join(bootDir, 'grub', 'grub.cfg'), grubConfig(recipe))
  return {
    dir: bootDir,
    kernelVersion: version,
    kernel: join(bootDir, `vmlinuz-${version}`),
    initrd: join(bootDir, `initrd.img-${version}`),
  }
}

/**
 * grub.cfg: the default entry boots the snapshot with resnap; `keep` boots it without
 * resnap and `origin` the origin (maintainers changing the base box). Same command
 * lines as direct kernel boot. A boot through the firmware (VirtualBox, and QEMU for a box
 * without a kernel of its own) picks the entry by the SMBIOS SKU (src/lib/box/boot-choice.ts).
 */
export function grubConfig(recipe: RecipeFields): string {
  const lvm = lvmLayout(recipe)
  const line = (choice: BootChoice) => kernelCommandLine(lvm, choice, recipe.kernel_args)
  return `# box: written by \`box build\` (${recipe.name} ${recipe.version}). /boot is its own partition (label boot).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
${grubBootSelection()}
menuentry '${recipe.name}: resnap (fresh ${lvm.snapshot} from ${lvm.root})' --id ${GRUB_ENTRY.resnap} {
  linux /vmlinuz ${line({resnap: true})}
  initrd /initrd.img
}

menuentry '${recipe.name}: keep ${lvm.snapshot} (no resnap)' --id ${GRUB_ENTRY.keep} {
  linux /vmlinuz ${line({resnap: false})}
  initrd /initrd.img
}

menuentry '${recipe.name}: origin ${lvm.vg}/${lvm.root} (change the base box)' --id ${GRUB_ENTRY.origin} {
  linux /vmlinuz ${line({resnap: false, base: true})}
  initrd /initrd.img
}
`
}

/** A populated ext4 image from a directory, no root or loop device needed (~4 s for 600 MB). */
export async function makeExt4Image(options: {
  sourceDir: string
  image: string
  label: string
  bytes: number
  signal?: AbortSignal
}): Promise<void> {
  const {sourceDir, image, label, bytes, signal} = options
  await rm(image, {force: true})
  await run(
    'mke2fs',
    [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-d',
      sourceDir,
      '-L',
      label,
      '-m',
      '1',
      '-E',
      'lazy_itable_init=0,lazy_journal_init=0',
      image,
      `${Math.floor(bytes / 1024)}k`,
    ],
    {
      purpose: `making the ${label} filesystem image`,
      cancelSignal: signal,
      suggestions: ['the recipe size may be too small for the files (root_size, boot_size)'],
    },
  )
}

export interface FilesystemImages {
  rootImage: string
  bootImage: string
}

/** root.ext4 (root LV size) and boot.ext4 (boot partition size). */
export async function makeImages(options: {
  root: string
  bootDir: string
  workDir: string
  recipe: RecipeFields
  signal?: AbortSignal
}): Promise<FilesystemImages> {
  const {root, bootDir, workDir, recipe, signal} = options
  const rootImage = join(workDir, 'root.ext4')
  const bootImage = join(workDir, 'boot.ext4')
  await makeExt4Image({
    sourceDir: root,
    image: rootImage,
    label: 'root',
    bytes: parseSize(recipe.lvm.root_size),
    signal,
  })
  await makeExt4Image({sourceDir: bootDir, image: bootImage, label: 'boot', bytes: parseSize(recipe.boot_size), signal})
  return {rootImage, bootImage}
}

/** Resolve `dir/name` through one level of symlink (vmlinuz → vmlinuz-VERSION). */
export async function resolveBootLink(dir: string, name: string): Promise<string> {
  const path = join(dir, name)
  const stat = await lstat(path)
  return stat.isSymbolicLink() ? join(dir, await readlink(path)) : path
}
