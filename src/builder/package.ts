/**
 * Stage "package": the Vagrant-format .box — metadata.json (Vagrant's keys for the
 * libvirt provider plus box's own `box` key), box.img (qcow2, zero clusters dropped),
 * a Vagrantfile, and the kernel and initrd for direct boot — as a zstd tar written to
 * `<output>.partial` and renamed into place (lib/box/archive.ts).
 */
import {copyFile, mkdir, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {writeBoxArchive, type WrittenBoxArchive} from '../lib/box/archive.js'
import type {BoxMetadata} from '../lib/box/metadata.js'
import {vagrantfileText} from '../lib/box/vagrantfile.js'
import {acquireLock} from '../lib/core/lock.js'
import {BoxError} from '../lib/core/errors.js'
import {run} from '../lib/core/exec.js'
import {AGENT_PROTOCOL} from '../lib/box/agent-protocol.js'
import {formatBytes, type Stage} from '../lib/core/progress.js'
import {lvmLayout, parseSize, type RecipeFields} from './recipe.js'

export const BOX_ENTRIES = ['metadata.json', 'Vagrantfile', 'box.img', 'vmlinuz', 'initrd.img'] as const

export function boxMetadata(recipe: RecipeFields, recipeHash: string): BoxMetadata {
  return {
    provider: 'libvirt',
    format: 'qcow2',
    // vagrant-libvirt reads virtual_size in GB (whole GiB).
    virtual_size: Math.ceil(parseSize(recipe.disk_size) / 1024 ** 3),
    box: {
      version: recipe.version,
      user: recipe.users[0]!.name,
      kernel: 'vmlinuz',
      initrd: 'initrd.img',
      kernel_args: recipe.kernel_args,
      lvm: lvmLayout(recipe),
      initramfs: recipe.initramfs,
      snapshot: recipe.snapshot,
      recipe_hash: recipeHash,
      agent: AGENT_PROTOCOL,
    },
  }
}

export function vagrantfile(recipe: RecipeFields): string {
  const user = recipe.users[0]!.name
  return vagrantfileText({
    origin: `Written by \`box build\` for ${recipe.name} ${recipe.version}.`,
    notes: [
      `Vagrant logs in as "${user}" with its own insecure key, which the image trusts in`,
      '~/.ssh/authorized_keys (kept in /persistent, so it survives resnap), and replaces it on',
      'first up. No config.ssh.private_key_path: with one set, Vagrant neither replaces the key',
      'nor uses the one it generated.',
    ],
    username: user,
  })
}

export interface PackageOptions {
  recipe: RecipeFields
  recipeHash: string
  disk: string
  kernel: string
  initrd: string
  workDir: string
  output: string
  stage?: Stage
  signal?: AbortSignal
}

export async function packageBox(options: PackageOptions): Promise<WrittenBoxArchive> {
  const {recipe, recipeHash, disk, kernel, initrd, workDir, output, stage, signal} = options
  const dir = join(workDir, 'package')
  await mkdir(dir, {recursive: true})
  stage?.update('compacting the disk image')
  // convert writes only allocated, non-zero clusters: the sparse qcow2 the box ships.
  await run('qemu-img', ['convert', '-O', 'qcow2', disk, join(dir, 'box.img')], {
    purpose: 'compacting the disk image',
    cancelSignal: signal,
  })
  await writeFile(join(dir, 'metadata.json'), `${JSON.stringify(boxMetadata(recipe, recipeHash), null, 2)}\n`)
  await writeFile(join(dir, 'Vagrantfile'), vagrantfile(recipe))
  await copyFile(kernel, join(dir, 'vmlinuz'))
  await copyFile(initrd, join(dir, 'initrd.img'))
  const written = await writeBoxArchive({
    sourceDir: dir,
    entries: [...BOX_ENTRIES],
    output,
    compression: 'zstd',
    signal,
    onProgress: (done, total) => stage?.update(`compressing ${formatBytes(done)} of ${formatBytes(total)}`),
  })
  await rm(dir, {recursive: true, force: true})
  return written
}

/** `<output>.lock`: two builds never write the same box at once (a dead owner's lock is taken over). */
export async function lockOutput(output: string): Promise<() => Promise<void>> {
  return acquireLock(`${output}.lock`, {
    busy: (pid) =>
      new BoxError(`another build (pid ${pid}) is writing ${output}`, {
        suggestions: ['wait for it to finish, or choose another --output'],
      }),
  })
}
