/**
 * `box package`: a halted machine's disk → a new .box (the maintainer's loop: boot the
 * origin with `up --base`, change it, halt, package, publish).
 *
 * The machine's overlay and its backing chain are flattened into one standalone qcow2
 * by `qemu-img convert` (it skips unallocated and all-zero clusters, so blocks the guest
 * trimmed are not shipped). Before that, on a throwaway overlay on top of the machine's
 * disk (the machine itself is never touched), the root snapshot's copy-on-write area is
 * zeroed: a dm-snapshot whose header is zero is a new, empty snapshot — exactly what
 * `lvcreate` or a resnap boot makes — so the last boot's changes, which resnap would
 * throw away anyway, are not shipped, and a box made from a `--base` boot never carries
 * a snapshot that is stale against its changed origin. Swap (after its signature page)
 * is zeroed for the same reason.
 */
import {copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {basename, dirname, join, resolve} from 'node:path'

import {writeBoxArchive, type Compression} from '../box/archive.js'
import {BoxMetadataSchema, type BoxMetadata} from '../box/metadata.js'
import {vagrantfileText} from '../box/vagrantfile.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {lvRangesOnPv, readLvmOnDisk, zeroImageRanges, type ExtentRange} from '../box/disk-image.js'

import {BoxError, ExitCode} from '../core/errors.js'
import {run} from '../core/exec.js'
import {checkFreeSpace, readJsonWithSchema} from '../core/fs.js'
import {PROJECT_ROOT} from '../core/paths.js'
import {lockMachine, machineDir, readRecord, type MachineContext, type MachineRecord} from './context.js'
import {haltMachine} from './halt.js'
import {sshTarget} from './ssh-session.js'
import {providerFor} from '../../providers/index.js'
import {formatBytes, type Progress} from '../core/progress.js'
import {sshRun} from './ssh.js'
import type {Provider} from '../../providers/provider.js'
import {isVersion} from '../core/versions.js'
import {updateCatalog} from '../store/catalog-update.js'
import {shipKernel, type ShippedKernel} from './package-kernel.js'
import {
  flattenDisk,
  measureDisk,
  overlayHasData,
  overlayTouches,
  resetLoginKeys,
  restorePersistent,
  skipSwapSignature,
} from './package-scrub.js'

export interface CatalogEntryOptions {
  /** The catalog JSON to create or update. */
  file: string
  /** Where the .box will be downloadable (written as the provider's url). */
  url: string
  /** The box name for a new catalog (default: the source box's name). */
  boxName?: string
}

export interface PackageOptions {
  context: MachineContext
  machine: ResolvedMachine
  /** The .box to write (default: ./<box>-<version>.box). */
  output?: string
  /** Extra files shipped under include/ (Vagrant's `package --include`). */
  include?: string[]
  /** A JSON file shipped as info.json (shown by `vagrant box list -i`). */
  info?: string
  compression?: Extract<Compression, 'zstd' | 'gzip'>
  /** Version of the new box (default: the source box's, last number + 1). */
  version?: string
  /** Halt a running machine first (after trimming its filesystems). */
  halt?: boolean
  /** Replace an existing output file. */
  force?: boolean
  catalog?: CatalogEntryOptions
}

export interface PackageResult {
  output: string
  sha256: string
  /** Bytes of the .box. */
  size: number
  version: string
  /** The box the machine was made from. */
  source: {name: string; version: string}
  /** Whether the machine changed the origin (booted with --base) since it was created. */
  originChanged: boolean
  /** The disk's virtual size and the flattened qcow2's size, bytes. */
  virtualSize: number
  imageSize: number
  /** Bytes of snapshot copy-on-write area and swap left out. */
  droppedBytes: number
  /** Where the kernel and initrd came from: the image's /boot, or the source box (unchanged or unreadable /boot). */
  kernel?: ShippedKernel
  catalog?: string
  ms: number
}

export async function packageMachine(options: PackageOptions): Promise<PackageResult> {
  const started = Date.now()
  const {context, machine} = options
  const {progress, signal} = context
  const stateDir = machineDir(context.projectDir, machine.name)
  const record = await readRecord(stateDir)
  if (!record) {
    throw new BoxError(`machine ${machine.name} has never been created: there is nothing to package`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`create it, change it and halt it first: box up --base ${machine.name}`],
    })
  }
  const sourceMetadata = await readSourceMetadata(record)
  // The scrub finds root, root_snap and persistent by their extents on the PV; thin volumes
  // have none of their own (they live in the pool's data LV, block by block).
  if (sourceMetadata.box?.lvm?.pool)
    throw new BoxError(
      `machine ${machine.name} runs a thin-snapshot box (${record.box.name}): box package cannot package one yet`,
      {
        exitCode: ExitCode.USAGE,
        suggestions: ['change its recipe and build it again: box build RECIPE_DIR (docs/building.md)'],
      },
    )
  const version = options.version ?? nextVersion(record.box.version)
  if (!isVersion(version))
    throw new BoxError(`"${version}" is not a box version (such as 1.2.3)`, {exitCode: ExitCode.USAGE})
  const output = resolve(options.output ?? `${record.box.name.replaceAll('/', '-')}-${version}.box`)
  await refuseExistingOutput(output, options.force ?? false)
  const include = await checkInputs(options)

  const provider = providerFor(machine.provider, context.cacheDir)
  const state = await provider.state({stateDir})
  if (state === 'running') {
    if (!options.halt) {
      throw new BoxError(
        `machine ${machine.name} is running: package a halted machine (its disk must not change while it is read)`,
        {
          exitCode: ExitCode.USAGE,
          suggestions: [
            `halt it first: box halt ${machine.name}`,
            `or let package do it: box package ${machine.name} --halt`,
          ],
        },
      )
    }
    await trimAndHalt(context, machine, record, progress)
  } else if (state === 'aborted') {
    progress.warn(
      `${machine.name}: QEMU died without a clean shutdown; the filesystems will be checked at the next boot of the new box`,
    )
    // What a halt leaves behind, done now (the provider settles a disk left mid-snapshot).
    await provider.halt({stateDir}, {force: true, timeoutMs: 0})
  }

  const release = await lockMachine(stateDir, machine.name)
  if ((await provider.state({stateDir})) === 'running') {
    await release()
    throw new BoxError(`machine ${machine.name} was started while package was getting ready`, {
      suggestions: [`halt it, then package again: box halt ${machine.name}`],
    })
  }
  const workDir = await mkdtemp(join(dirname(output), '.box-package-'))
  try {
    const disk = packagedDiskOf(provider, stateDir, machine.name)
    const sizes = await measureDisk(disk)
    await checkPackageSpace(dirname(output), sizes.required * 2 + 64 * 1024 * 1024)

    const lvm = sourceMetadata.box?.lvm
    const layout = lvm ? await readLvmOnDisk(disk, 'qcow2') : undefined
    const rangesOf = (lv: string | undefined): ExtentRange[] =>
      (layout && lvm && lv ? (lvRangesOnPv(layout.metadata, lvm.vg, lv, layout.pvUuid) ?? []) : []).map((range) => ({
        ...range,
        offset: range.offset + layout!.pvOffset,
      }))
    const originChanged = layout ? await overlayTouches(disk, rangesOf(lvm?.root)) : await overlayHasData(disk)
    progress.info(
      originChanged
        ? `${machine.name}: the origin was changed (booted with --base): packaging the changed origin`
        : `${machine.name}: the origin is as ${record.box.name} ${record.box.version} shipped it: the snapshot's changes are not packaged (change the origin with \`box up --base\`)`,
    )

    // A throwaway overlay takes the zeroing; the machine's own disk stays as it is.
    const scrubbed = join(workDir, 'scrub.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', disk, scrubbed], {
      purpose: 'preparing the disk for packaging',
    })
    const dropped = [...rangesOf(lvm?.snapshot), ...rangesOf(lvm?.swap).map(skipSwapSignature)].filter(
      (range) => range.size > 0,
    )
    await zeroImageRanges(scrubbed, dropped)
    if (layout && lvm) {
      await restorePersistent(scrubbed, record.box.path, lvm, rangesOf(lvm.persistent), progress)
      // Only when `up` put the machine key into the root filesystem (boxes whose sshd reads ~/.ssh):
      // keys in /persistent never reach the package, which ships the source box's /persistent.
      const keyInRoot = !record.authorizedKeysFile?.startsWith('/persistent/')
      if (originChanged && keyInRoot) await resetLoginKeys(scrubbed, rangesOf(lvm.root), record.user, workDir)
    } else if (originChanged) {
      progress.warn(
        `${record.box.name} has no LVM layout box knows: the disk is packaged as the machine left it, its ssh keys included (put ${join(PROJECT_ROOT, 'static', 'insecure_key.pub')} back as the login user's authorized_keys before halting)`,
      )
    }

    const image = join(workDir, 'box.img')
    await flattenDisk(scrubbed, image, sizes.virtual, progress, signal)
    await rm(scrubbed, {force: true})
    const imageSize = (await stat(image)).size

    const kernel = sourceMetadata.box?.kernel
      ? await shipKernel(image, record, sourceMetadata, workDir, progress, signal)
      : undefined
    const metadata: BoxMetadata = {
      ...sourceMetadata,
      provider: 'libvirt',
      format: 'qcow2',
      // vagrant-libvirt reads virtual_size in GB (whole GiB).
      virtual_size: Math.ceil(sizes.virtual / 1024 ** 3),
      ...(sourceMetadata.box ? {box: {...sourceMetadata.box, version}} : {}),
    }
    await writeFile(join(workDir, 'metadata.json'), `${JSON.stringify(metadata, null, 2)}\n`)
    await writeVagrantfile(record, join(workDir, 'Vagrantfile'))
    const entries = ['metadata.json', 'Vagrantfile']
    if (options.info) {
      await copyFile(options.info, join(workDir, 'info.json'))
      entries.push('info.json')
    }
    entries.push('box.img')
    if (sourceMetadata.box?.kernel) entries.push(sourceMetadata.box.kernel)
    if (sourceMetadata.box?.initrd) entries.push(sourceMetadata.box.initrd)
    if (include.length > 0) {
      await mkdir(join(workDir, 'include'))
      for (const file of include) await copyFile(file, join(workDir, 'include', basename(file)))
      entries.push('include')
    }

    const compressing = progress.stage(`${machine.name}: compressing (${options.compression ?? 'zstd'})`)
    let written
    try {
      written = await writeBoxArchive({
        sourceDir: workDir,
        entries,
        output,
        compression: options.compression ?? 'zstd',
        signal,
        onProgress: (done, total) =>
          compressing.update(
            `${formatBytes(done)} of ${formatBytes(total)} (${total ? Math.floor((done / total) * 100) : 100} %)`,
          ),
      })
      compressing.done(formatBytes(written.size))
    } catch (error) {
      compressing.fail()
      throw signal?.aborted ? signal.reason : error
    }

    const catalog = options.catalog
      ? await updateCatalog({
          ...options.catalog,
          boxName: options.catalog.boxName ?? record.box.name,
          version,
          sha256: written.sha256,
        })
      : undefined
    return {
      output,
      sha256: written.sha256,
      size: written.size,
      version,
      source: {name: record.box.name, version: record.box.version},
      originChanged,
      virtualSize: sizes.virtual,
      imageSize,
      droppedBytes: dropped.reduce((sum, range) => sum + range.size, 0),
      kernel,
      catalog,
      ms: Date.now() - started,
    }
  } finally {
    await rm(workDir, {recursive: true, force: true})
    await release()
  }
}

/** The machine disk packaging reads; only providers with a qcow2 chain (QEMU) have one. */
function packagedDiskOf(provider: Provider, stateDir: string, name: string): string {
  if (!provider.packagedDisk) {
    throw new BoxError(
      `box package cannot package ${provider.name} machines (${name}): it reads a QEMU machine's qcow2 disk`,
      {
        exitCode: ExitCode.USAGE,
        suggestions: ['package a machine whose Boxfile says provider: qemu'],
      },
    )
  }
  return provider.packagedDisk({stateDir}).path
}

/** "0.1.0" → "0.1.1": the last number goes up; a version without one gets ".1". */
export function nextVersion(version: string): string {
  const match = /^(.*?)(\d+)([^\d]*)$/.exec(version)
  if (!match) return `${version}.1`
  return `${match[1]}${Number(match[2]) + 1}${match[3]}`
}

async function readSourceMetadata(record: MachineRecord): Promise<BoxMetadata> {
  const file = join(record.box.path, 'metadata.json')
  return readJsonWithSchema(file, BoxMetadataSchema, `metadata of ${record.box.name} ${record.box.version}`, {
    ifMissing: () => {
      throw new BoxError(
        `the box this machine was made from (${record.box.name} ${record.box.version}) is no longer installed: ${file} is missing`,
        {
          suggestions: [`add it again: box add ${record.box.name} …`],
        },
      )
    },
  })
}

async function refuseExistingOutput(output: string, force: boolean): Promise<void> {
  const parent = await stat(dirname(output)).catch(() => undefined)
  if (!parent?.isDirectory())
    throw new BoxError(`cannot write ${output}: ${dirname(output)} is not a directory`, {exitCode: ExitCode.USAGE})
  const existing = await stat(output).catch(() => undefined)
  if (!existing) return
  if (!existing.isFile()) throw new BoxError(`${output} exists and is not a file`, {exitCode: ExitCode.USAGE})
  if (!force) {
    throw new BoxError(`${output} already exists`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['replace it with --force, or choose another --output'],
    })
  }
}

/** --include and --info files must exist (checked before any long work). */
async function checkInputs(options: PackageOptions): Promise<string[]> {
  const files = (options.include ?? []).map((file) => resolve(file))
  for (const file of [...files, ...(options.info ? [resolve(options.info)] : [])]) {
    const info = await stat(file).catch(() => undefined)
    if (!info?.isFile()) throw new BoxError(`file not found: ${file}`, {exitCode: ExitCode.USAGE})
  }
  const names = files.map((file) => basename(file))
  const duplicate = names.find((name, index) => names.indexOf(name) !== index)
  if (duplicate)
    throw new BoxError(`two --include files are named ${duplicate}: they would overwrite each other in include/`, {
      exitCode: ExitCode.USAGE,
    })
  if (options.info) {
    try {
      JSON.parse(await readFile(resolve(options.info), 'utf8'))
    } catch (error) {
      throw new BoxError(`${options.info} is not valid JSON: ${(error as Error).message}`, {exitCode: ExitCode.USAGE})
    }
  }
  return files
}

/**
 * Give freed blocks back before halting: fstrim sends discards down to the qcow2
 * (the drive has discard=unmap), so convert ships nothing for them. Best effort: a
 * filesystem on a device without discard (a dm-snapshot) just reports it.
 */
async function trimAndHalt(
  context: MachineContext,
  machine: ResolvedMachine,
  record: MachineRecord,
  progress: Progress,
): Promise<void> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const stage = progress.stage(`${machine.name}: trimming filesystems and halting`)
  try {
    const target = sshTarget(stateDir, record, providerFor(machine.provider, context.cacheDir))
    await sshRun(target, ['sudo', '-n', 'sh', '-c', 'fstrim -av || true; sync'], {
      timeoutMs: 300_000,
      purpose: 'trimming the filesystems',
    }).catch((error: unknown) => {
      progress.warn(`${machine.name}: fstrim failed (${(error as Error).message}); freed blocks may be packaged`)
    })
    // The guest powers itself off (cleaner than ACPI, which a busy TCG guest may miss); halt then waits for QEMU to exit.
    await sshRun(target, ['sudo', '-n', 'systemctl', '--no-block', 'poweroff'], {timeoutMs: 30_000}).catch(
      () => undefined,
    )
    const how = await haltMachine(context, machine, {timeoutMs: 90_000})
    if (how === 'forced') progress.warn(`${machine.name}: the guest did not power off in time and was stopped by force`)
    // Gone before halt asked it to stop: QEMU died (killed, or the host ran out of memory) mid-way.
    if (how === 'not-running')
      progress.warn(
        `${machine.name}: QEMU died before the guest halted cleanly; the filesystems will be checked at the next boot of the new box`,
      )
    stage.done(how)
  } catch (error) {
    stage.fail()
    throw error
  }
}

/** Refuse before starting when the output's filesystem cannot hold the flattened image and the archive. */
async function checkPackageSpace(dir: string, needed: number): Promise<void> {
  await checkFreeSpace(dir, needed, {
    needs: 'packaging (the flattened disk and the archive)',
    suggestions: ['free some space, or write the box elsewhere with --output'],
  })
}

/** The source box's Vagrantfile when it has one (its settings still apply), else a minimal one. */
async function writeVagrantfile(record: MachineRecord, dest: string): Promise<void> {
  const source = join(record.box.path, 'Vagrantfile')
  if (await stat(source).catch(() => undefined)) {
    await copyFile(source, dest)
    return
  }
  await writeFile(
    dest,
    vagrantfileText({
      origin: `Written by \`box package\` from ${record.box.name} ${record.box.version}.`,
      username: record.user,
    }),
  )
}
