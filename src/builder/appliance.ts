/**
 * Stage "disk": the LVM layout cannot be made on the host (no device-mapper here), so
 * a builder appliance VM does it: the rootfs's own kernel, a busybox initramfs with just
 * the virtio/dm modules, the new disk as vda and the filesystem images as vdb/vdc.
 * The guest-side scripts are shipped files (initramfs/builder/); parameters travel as
 * one-value files, never as interpolated shell code.
 */
import {createWriteStream} from 'node:fs'
import {copyFile, mkdir, readFile, writeFile} from 'node:fs/promises'
import {basename, join} from 'node:path'

import {BoxError, tail} from '../lib/core/errors.js'
import {run, spawn} from '../lib/core/exec.js'
import {formatDuration} from '../lib/core/progress.js'
import type {Stage} from '../lib/core/progress.js'
import {projectFile, THIN_MODULES} from './configure.js'
import {parseSize, THIN_METADATA_SIZE, type RecipeFields} from './recipe.js'

/** Modules the builder needs (the disk and device-mapper); ext4 is built into Debian's cloud kernel. */
export const BUILDER_MODULES = ['virtio_pci', 'virtio_blk', 'dm_mod', 'dm_snapshot']

const EXIT_MARKER = /BOX-BUILDER-EXIT=(\d+)/
const STEP_MARKER = /BOX-STEP: (.*)/

/**
 * Module files to load, dependencies first, from the kernel's modules.dep
 * (paths relative to /lib/modules/VERSION).
 */
export function resolveModules(modulesDep: string, wanted: readonly string[]): string[] {
  const deps = new Map<string, string[]>()
  const byName = new Map<string, string>()
  for (const line of modulesDep.split('\n')) {
    const [file, rest] = line.split(':')
    if (!file || rest === undefined) continue
    deps.set(file, rest.trim().split(/\s+/).filter(Boolean))
    byName.set(moduleName(file), file)
  }
  const order: string[] = []
  const visit = (file: string) => {
    if (order.includes(file)) return
    for (const dep of deps.get(file) ?? []) visit(dep)
    order.push(file)
  }
  for (const name of wanted) {
    const file = byName.get(name.replaceAll('-', '_'))
    // Not in modules.dep: built into the kernel, nothing to load.
    if (file) visit(file)
  }
  return order
}

function moduleName(file: string): string {
  return basename(file)
    .replace(/\.ko(\.(xz|zst|gz))?$/, '')
    .replaceAll('-', '_')
}

/** sfdisk input: a bootable /boot partition, then the rest as one LVM PV. */
export function sfdiskLayout(recipe: RecipeFields): string {
  const bootMiB = Math.floor(parseSize(recipe.boot_size) / (1024 * 1024))
  return `label: dos\n\nsize=${bootMiB}MiB, type=83, bootable\ntype=8e\n`
}

/** One-value parameter files for build-disk (all values were validated by the recipe schema). */
export function builderParams(recipe: RecipeFields): Record<string, string> {
  const {lvm} = recipe
  return {
    vg: lvm.vg,
    root: lvm.root,
    root_size: lvm.root_size,
    snapshot: lvm.snapshot,
    snapshot_kind: recipe.snapshot,
    snapshot_size: lvm.snapshot_size ?? '',
    pool: lvm.pool ?? '',
    pool_size: lvm.pool_size ?? '',
    pool_metadata_size: THIN_METADATA_SIZE,
    persistent: lvm.persistent,
    persistent_size: lvm.persistent_size,
    swap: lvm.swap ?? '',
    swap_size: lvm.swap_size ?? '',
    sfdisk: sfdiskLayout(recipe),
  }
}

export interface ApplianceInitrdOptions {
  /** The configured rootfs (its /lib/modules supplies the modules). */
  root: string
  kernelVersion: string
  recipe: RecipeFields
  workDir: string
  signal?: AbortSignal
}

/** An uncompressed newc cpio: static busybox, /init, modules, build-disk and its parameters. */
export async function makeApplianceInitrd(options: ApplianceInitrdOptions): Promise<string> {
  const {root, kernelVersion, recipe, workDir, signal} = options
  const tree = join(workDir, 'appliance-initrd')
  const modulesDir = join(root, 'lib', 'modules', kernelVersion)
  const modules = resolveModules(await readFile(join(modulesDir, 'modules.dep'), 'utf8'), [
    ...BUILDER_MODULES,
    ...(recipe.snapshot === 'thin' ? THIN_MODULES : []),
  ])
  const busybox = await findBusybox()
  await mkdir(join(tree, 'bin'), {recursive: true})
  await mkdir(join(tree, 'lib', 'modules'), {recursive: true})
  await mkdir(join(tree, 'builder', 'params'), {recursive: true})
  await copyFile(busybox, join(tree, 'bin', 'busybox'))
  await copyFile(projectFile('initramfs', 'builder', 'init'), join(tree, 'init'))
  await copyFile(projectFile('initramfs', 'builder', 'build-disk'), join(tree, 'builder', 'build-disk'))
  for (const module of modules) await copyFile(join(modulesDir, module), join(tree, 'lib', 'modules', basename(module)))
  await writeFile(join(tree, 'modules.order'), modules.map((module) => `${basename(module)}\n`).join(''))
  for (const [name, value] of Object.entries(builderParams(recipe)))
    await writeFile(join(tree, 'builder', 'params', name), value)
  await run('chmod', ['0755', join(tree, 'bin', 'busybox'), join(tree, 'init'), join(tree, 'builder', 'build-disk')])

  const initrd = join(workDir, 'appliance-initrd.cpio')
  const {stdout: files} = await run('find', ['.', '-mindepth', '1'], {cwd: tree})
  await run('cpio', ['--quiet', '-o', '-H', 'newc', '-R', '0:0', '-O', initrd], {
    cwd: tree,
    input: `${files}\n`,
    purpose: 'packing the builder initramfs',
    cancelSignal: signal,
  })
  return initrd
}

async function findBusybox(): Promise<string> {
  for (const path of ['/bin/busybox', '/usr/bin/busybox']) {
    const {stdout} = await run('file', ['-L', path]).catch(() => ({stdout: ''}))
    if (stdout.includes('statically linked') || stdout.includes('static-pie')) return path
  }
  // `file` may be missing: trust busybox-static's path.
  const {existsSync} = await import('node:fs')
  if (existsSync('/bin/busybox')) return '/bin/busybox'
  throw new BoxError('a static busybox is needed for the builder VM', {
    suggestions: ['install it: sudo apt-get install busybox-static'],
  })
}

export interface RunApplianceOptions {
  kernel: string
  initrd: string
  /** The new box disk (qcow2, created here). */
  disk: string
  diskBytes: number
  rootImage: string
  bootImage: string
  /** Serial console log (the stage's log). */
  log: string
  /** QEMU accelerator; KVM guests hang on some hosts, so the builder defaults to TCG. */
  accel?: string
  timeoutMs?: number
  stage?: Stage
  signal?: AbortSignal
}

export function applianceQemuArgs(
  options: Pick<RunApplianceOptions, 'kernel' | 'initrd' | 'disk' | 'rootImage' | 'bootImage' | 'accel'>,
): string[] {
  return [
    '-accel',
    options.accel ?? 'tcg',
    '-m',
    '768',
    '-smp',
    '2',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    '-kernel',
    options.kernel,
    '-initrd',
    options.initrd,
    '-append',
    'console=ttyS0,115200 quiet panic=-1 rdinit=/init',
    '-drive',
    `file=${options.disk},if=virtio,format=qcow2,cache=unsafe,discard=unmap`,
    '-drive',
    `file=${options.rootImage},if=virtio,format=raw,readonly=on`,
    '-drive',
    `file=${options.bootImage},if=virtio,format=raw,readonly=on`,
    '-nic',
    'none',
  ]
}

/** Boot the builder VM; resolves when build-disk succeeded, else a BoxError with the log's tail. */
export async function runAppliance(options: RunApplianceOptions): Promise<void> {
  const {disk, diskBytes, log, stage, signal} = options
  const timeoutMs = options.timeoutMs ?? 20 * 60_000
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(diskBytes)], {purpose: 'creating the box disk'})
  const logStream = createWriteStream(log)
  let output = ''
  let exitStatus: number | undefined
  let lastStep = 'booting'
  const child = spawn('qemu-system-x86_64', applianceQemuArgs(options), {
    cancelSignal: signal,
    timeout: timeoutMs,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    all: true,
    buffer: false,
    forceKillAfterDelay: 3000,
  })
  let partialLine = ''
  child.all?.on('data', (chunk: Buffer) => {
    const text = chunk.toString()
    logStream.write(chunk)
    output = (output + text).slice(-200_000)
    // Chunks split lines anywhere: keep the unfinished tail for the next chunk.
    const lines = (partialLine + text).split('\n')
    partialLine = lines.pop() ?? ''
    for (const line of lines) {
      const step = STEP_MARKER.exec(line)
      if (step) {
        lastStep = step[1]!.trim()
        stage?.update(lastStep)
      }
      const exit = EXIT_MARKER.exec(line)
      if (exit) exitStatus = Number(exit[1])
    }
  })
  const started = Date.now()
  try {
    await child
  } catch (error) {
    signal?.throwIfAborted()
    const e = error as {timedOut?: boolean; code?: string}
    if (e.code === 'ENOENT')
      throw await run('qemu-system-x86_64', ['--version']).then(
        () => error,
        (missing: unknown) => missing,
      )
    const why = e.timedOut ? `timed out after ${formatDuration(timeoutMs)}` : 'QEMU failed'
    throw new BoxError(`builder VM ${why} at step "${lastStep}"`, {
      cause: error,
      detail: tail(output, 25),
      suggestions: [`full serial log: ${log}`],
    })
  } finally {
    await new Promise((done) => logStream.end(done))
  }
  if (exitStatus !== 0) {
    const what =
      exitStatus === undefined ? 'stopped without reporting a result' : `failed with exit status ${exitStatus}`
    throw new BoxError(`builder VM ${what} at step "${lastStep}" (after ${formatDuration(Date.now() - started)})`, {
      detail: tail(output, 25),
      suggestions: [`full serial log: ${log}`],
    })
  }
}
