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
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {copyFile, mkdir, mkdtemp, readFile, rename, rm, stat, statfs, writeFile} from 'node:fs/promises'
import {basename, dirname, join, resolve} from 'node:path'

import {writeBoxArchive, type Compression} from '../box/archive.js'
import {BoxMetadataSchema, type BoxMetadata, type LvmLayout} from '../box/metadata.js'
import type {ResolvedMachine} from '../boxfile/boxfile.js'
import {parseCatalogText} from '../store/catalog.js'
import {copyImageRange, dumpExtFile, imageRangeSpec, listExtDirectory, lvRangesOnPv, parseMbr, readImageRange, readLvmOnDisk, zeroImageRanges, type ExtentRange} from '../box/disk-image.js'
import {execa} from 'execa'

import {BoxError, ExitCode, tail} from '../core/errors.js'
import {run, spawn, toBoxError} from '../core/exec.js'
import {PROJECT_ROOT} from '../core/paths.js'
import {haltMachine, lockMachine, machineDir, providerFor, readRecord, sshTarget, type MachineContext, type MachineRecord} from './machine.js'
import {formatBytes, type Progress} from '../core/progress.js'
import {sshRun} from './ssh.js'
import {compareVersions, isVersion} from '../core/versions.js'
import {instanceFiles} from '../../providers/qemu/instance.js'

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
  kernel?: {from: 'image' | 'source-box'; file?: string; changed: boolean}
  catalog?: string
  ms: number
}

/** The newest kernel in /boot is the one grub boots; direct boot must use the same. */
const KERNEL_PATTERN = /^vmlinuz-(.+)$/

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
  const version = options.version ?? nextVersion(record.box.version)
  if (!isVersion(version)) throw new BoxError(`"${version}" is not a box version (such as 1.2.3)`, {exitCode: ExitCode.USAGE})
  const output = resolve(options.output ?? `${record.box.name.replaceAll('/', '-')}-${version}.box`)
  await refuseExistingOutput(output, options.force ?? false)
  const include = await checkInputs(options)

  const provider = providerFor(machine.provider, context.cacheDir)
  const state = await provider.state({stateDir})
  if (state === 'running') {
    if (!options.halt) {
      throw new BoxError(`machine ${machine.name} is running: package a halted machine (its disk must not change while it is read)`, {
        exitCode: ExitCode.USAGE,
        suggestions: [`halt it first: box halt ${machine.name}`, `or let package do it: box package ${machine.name} --halt`],
      })
    }
    await trimAndHalt(context, machine, record, progress)
  } else if (state === 'aborted') {
    progress.warn(`${machine.name}: QEMU died without a clean shutdown; the filesystems will be checked at the next boot of the new box`)
    // What a halt leaves behind, done now (the provider settles a disk left mid-snapshot).
    await provider.halt({stateDir}, {force: true, timeoutMs: 0})
  }

  const release = await lockMachine(stateDir, machine.name)
  if ((await provider.state({stateDir})) === 'running') {
    await release()
    throw new BoxError(`machine ${machine.name} was started while package was getting ready`, {suggestions: [`halt it, then package again: box halt ${machine.name}`]})
  }
  const workDir = await mkdtemp(join(dirname(output), '.box-package-'))
  try {
    const disk = instanceFiles(stateDir).overlay
    const sizes = await measureDisk(disk)
    await checkFreeSpace(dirname(output), sizes.required * 2 + 64 * 1024 * 1024)

    const lvm = sourceMetadata.box?.lvm
    const layout = lvm ? await readLvmOnDisk(disk, 'qcow2') : undefined
    const rangesOf = (lv: string | undefined): ExtentRange[] => (layout && lvm && lv ? lvRangesOnPv(layout.metadata, lvm.vg, lv, layout.pvUuid) ?? [] : []).map((range) => ({...range, offset: range.offset + layout!.pvOffset}))
    const originChanged = layout ? await overlayTouches(disk, rangesOf(lvm?.root)) : await overlayHasData(disk)
    progress.info(
      originChanged
        ? `${machine.name}: the origin was changed (booted with --base): packaging the changed origin`
        : `${machine.name}: the origin is as ${record.box.name} ${record.box.version} shipped it: the snapshot's changes are not packaged (change the origin with \`box up --base\`)`,
    )

    // A throwaway overlay takes the zeroing; the machine's own disk stays as it is.
    const scrubbed = join(workDir, 'scrub.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', disk, scrubbed], {purpose: 'preparing the disk for packaging'})
    const dropped = [...rangesOf(lvm?.snapshot), ...rangesOf(lvm?.swap).map(skipSwapSignature)].filter((range) => range.size > 0)
    await zeroImageRanges(scrubbed, dropped)
    if (layout && lvm) {
      await restorePersistent(scrubbed, record, lvm, rangesOf(lvm.persistent), progress)
      // Only when `up` put the machine key into the root filesystem (boxes whose sshd reads ~/.ssh):
      // keys in /persistent never reach the package, which ships the source box's /persistent.
      const keyInRoot = !record.authorizedKeysFile?.startsWith('/persistent/')
      if (originChanged && keyInRoot) await resetLoginKeys(scrubbed, rangesOf(lvm.root), record.user, workDir)
    } else if (originChanged) {
      progress.warn(`${record.box.name} has no LVM layout box knows: the disk is packaged as the machine left it, its ssh keys included (put ${join(PROJECT_ROOT, 'static', 'insecure_key.pub')} back as the login user's authorized_keys before halting)`)
    }

    const image = join(workDir, 'box.img')
    await flattenDisk(scrubbed, image, sizes.virtual, progress, signal)
    await rm(scrubbed, {force: true})
    const imageSize = (await stat(image)).size

    const kernel = sourceMetadata.box?.kernel ? await shipKernel(image, record, sourceMetadata, workDir, progress, signal) : undefined
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
        onProgress: (done, total) => compressing.update(`${formatBytes(done)} of ${formatBytes(total)} (${total ? Math.floor((done / total) * 100) : 100} %)`),
      })
      compressing.done(formatBytes(written.size))
    } catch (error) {
      compressing.fail()
      throw signal?.aborted ? signal.reason : error
    }

    const catalog = options.catalog
      ? await updateCatalog({...options.catalog, boxName: options.catalog.boxName ?? record.box.name, version, sha256: written.sha256})
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

/** "0.1.0" → "0.1.1": the last number goes up; a version without one gets ".1". */
export function nextVersion(version: string): string {
  const match = /^(.*?)(\d+)([^\d]*)$/.exec(version)
  if (!match) return `${version}.1`
  return `${match[1]}${Number(match[2]) + 1}${match[3]}`
}

async function readSourceMetadata(record: MachineRecord): Promise<BoxMetadata> {
  const file = join(record.box.path, 'metadata.json')
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    throw new BoxError(`the box this machine was made from (${record.box.name} ${record.box.version}) is no longer installed: ${file} is missing`, {
      cause: error,
      suggestions: [`add it again: box add ${record.box.name} …`],
    })
  }
  return BoxMetadataSchema.parse(JSON.parse(text))
}

async function refuseExistingOutput(output: string, force: boolean): Promise<void> {
  const parent = await stat(dirname(output)).catch(() => undefined)
  if (!parent?.isDirectory()) throw new BoxError(`cannot write ${output}: ${dirname(output)} is not a directory`, {exitCode: ExitCode.USAGE})
  const existing = await stat(output).catch(() => undefined)
  if (!existing) return
  if (!existing.isFile()) throw new BoxError(`${output} exists and is not a file`, {exitCode: ExitCode.USAGE})
  if (!force) {
    throw new BoxError(`${output} already exists`, {exitCode: ExitCode.USAGE, suggestions: ['replace it with --force, or choose another --output']})
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
  if (duplicate) throw new BoxError(`two --include files are named ${duplicate}: they would overwrite each other in include/`, {exitCode: ExitCode.USAGE})
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
async function trimAndHalt(context: MachineContext, machine: ResolvedMachine, record: MachineRecord, progress: Progress): Promise<void> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const stage = progress.stage(`${machine.name}: trimming filesystems and halting`)
  try {
    const target = sshTarget(stateDir, record, providerFor(machine.provider, context.cacheDir))
    await sshRun(target, ['sudo', '-n', 'sh', '-c', 'fstrim -av || true; sync'], {timeoutMs: 300_000, purpose: 'trimming the filesystems'}).catch((error: unknown) => {
      progress.warn(`${machine.name}: fstrim failed (${(error as Error).message}); freed blocks may be packaged`)
    })
    // The guest powers itself off (cleaner than ACPI, which a busy TCG guest may miss); halt then waits for QEMU to exit.
    await sshRun(target, ['sudo', '-n', 'systemctl', '--no-block', 'poweroff'], {timeoutMs: 30_000}).catch(() => undefined)
    const how = await haltMachine(context, machine, {timeoutMs: 90_000})
    if (how === 'forced') progress.warn(`${machine.name}: the guest did not power off in time and was stopped by force`)
    stage.done(how)
  } catch (error) {
    stage.fail()
    throw error
  }
}

interface DiskSizes {
  virtual: number
  /** Bytes a standalone qcow2 of the chain needs (qemu-img measure). */
  required: number
}

async function measureDisk(disk: string): Promise<DiskSizes> {
  const exists = await stat(disk).catch(() => undefined)
  if (!exists) throw new BoxError(`the machine's disk ${disk} is missing`, {suggestions: ['destroy the machine and create it again: box destroy, box up']})
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', disk], {purpose: 'reading the machine disk'})).stdout) as {'virtual-size': number}
  const measured = JSON.parse((await run('qemu-img', ['measure', '--output=json', '-O', 'qcow2', disk], {purpose: 'measuring the machine disk'})).stdout) as {required: number}
  return {virtual: info['virtual-size'], required: measured.required}
}

/** Refuse before starting when the output's filesystem cannot hold the flattened image and the archive. */
export async function checkFreeSpace(dir: string, needed: number): Promise<void> {
  const fs = await statfs(dir)
  const free = fs.bavail * fs.bsize
  if (free < needed) {
    throw new BoxError(`not enough free space in ${dir}: packaging needs up to ${formatBytes(needed)} (the flattened disk and the archive), ${formatBytes(free)} is free`, {
      suggestions: ['free some space, or write the box elsewhere with --output'],
    })
  }
}

interface MapEntry {
  start: number
  length: number
  depth: number
  present: boolean
}

/** Whether the machine's own layers (its overlay and its snapshots' layers: all above the box image) hold any cluster inside `ranges`. */
async function overlayTouches(disk: string, ranges: ExtentRange[]): Promise<boolean> {
  const map = JSON.parse((await run('qemu-img', ['map', '--output=json', disk], {purpose: 'reading the machine disk'})).stdout) as MapEntry[]
  const chain = JSON.parse((await run('qemu-img', ['info', '--backing-chain', '--output=json', disk], {purpose: 'reading the machine disk'})).stdout) as unknown[]
  const boxDepth = chain.length - 1
  return map.some((entry) => entry.depth < boxDepth && entry.present && ranges.some((range) => entry.start < range.offset + range.size && range.offset < entry.start + entry.length))
}

async function overlayHasData(disk: string): Promise<boolean> {
  return overlayTouches(disk, [{offset: 0, size: Number.MAX_SAFE_INTEGER}])
}

/**
 * /persistent is the machine's own state (its ssh host key, login keys, setup answers):
 * a new box ships the source box's persistent volume, block for block, so every
 * machine made from it gets its own host key and nothing of the maintainer's.
 */
async function restorePersistent(scrubbed: string, record: MachineRecord, lvm: LvmLayout, ranges: ExtentRange[], progress: Progress): Promise<void> {
  const sourceImage = join(record.box.path, 'box.img')
  const source = await readLvmOnDisk(sourceImage, 'qcow2').catch(() => undefined)
  const sourceRanges = source ? (lvRangesOnPv(source.metadata, lvm.vg, lvm.persistent, source.pvUuid) ?? []).map((range) => ({...range, offset: range.offset + source.pvOffset})) : []
  const same = ranges.length === 1 && sourceRanges.length === 1 && ranges[0]!.offset === sourceRanges[0]!.offset && ranges[0]!.size === sourceRanges[0]!.size
  if (!same) {
    progress.warn(`${lvm.vg}/${lvm.persistent} is not where the source box has it: /persistent is packaged as the machine left it (its ssh host key included)`)
    return
  }
  const {offset, size} = ranges[0]!
  await run('qemu-img', ['convert', '-n', imageRangeSpec(sourceImage, 'qcow2', offset, size), imageRangeSpec(scrubbed, 'qcow2', offset, size)], {purpose: 'restoring the source box\'s /persistent'})
}

/**
 * \`box up\` replaced the insecure key by the machine's own key in the login user's
 * authorized_keys — in the origin, when it was booted with --base. A box must ship the
 * documented insecure key again (as Vagrant boxes do) and never the maintainer's key:
 * the root filesystem is copied out, its journal replayed by e2fsck, the file replaced
 * with debugfs, and the filesystem written back into the throwaway overlay.
 */
async function resetLoginKeys(scrubbed: string, ranges: ExtentRange[], user: string, workDir: string): Promise<void> {
  if (ranges.length !== 1) throw new BoxError('the root volume is split into several segments: box cannot reset its login keys')
  const {offset, size} = ranges[0]!
  const rootImage = join(workDir, 'root.raw')
  await copyImageRange(scrubbed, 'qcow2', offset, size, rootImage)
  try {
    const fsck = await execa('e2fsck', ['-y', rootImage], {reject: false, stdin: 'ignore'})
    // 0: clean, 1: errors fixed (a replayed journal); anything else is a damaged root.
    if ((fsck.exitCode ?? 8) > 1) throw new BoxError(`the origin's root filesystem is damaged (e2fsck exit ${fsck.exitCode})`, {detail: tail(`${fsck.stdout}\n${fsck.stderr}`), suggestions: ['boot it with `box up --base`, repair it, halt it cleanly, then package again']})
    const passwd = (await run('debugfs', ['-R', 'cat /etc/passwd', rootImage], {purpose: 'reading /etc/passwd of the origin'})).stdout
    const fields = passwd.split('\n').map((line) => line.split(':')).find((entry) => entry[0] === user)
    if (!fields || fields.length < 7) throw new BoxError(`the login user ${user} is not in the origin's /etc/passwd`)
    const [uid, gid, home] = [fields[2]!, fields[3]!, fields[5]!]
    if (!/^\d+$/.test(uid) || !/^\d+$/.test(gid) || !/^\/[A-Za-z0-9._/-]*$/.test(home)) throw new BoxError(`unusual passwd entry for ${user}: ${fields.join(':')}`)
    await copyFile(join(PROJECT_ROOT, 'static', 'insecure_key.pub'), join(workDir, 'insecure_key.pub'))
    const sshDir = `${home.replace(/\/$/, '')}/.ssh`
    // debugfs requests are words, not shell: the names were checked above. Missing files make rm/mkdir complain harmlessly.
    const requests = [
      `mkdir ${sshDir}`,
      `sif ${sshDir} mode 040700`,
      `sif ${sshDir} uid ${uid}`,
      `sif ${sshDir} gid ${gid}`,
      `cd ${sshDir}`,
      'rm authorized_keys',
      'write insecure_key.pub authorized_keys',
      'sif authorized_keys mode 0100600',
      `sif authorized_keys uid ${uid}`,
      `sif authorized_keys gid ${gid}`,
    ]
    await writeFile(join(workDir, 'debugfs.requests'), `${requests.join('\n')}\n`)
    await run('debugfs', ['-w', '-f', 'debugfs.requests', rootImage], {cwd: workDir, purpose: 'putting the insecure key back'})
    const check = (await run('debugfs', ['-R', `cat ${sshDir}/authorized_keys`, rootImage], {purpose: 'checking the login keys'})).stdout
    const insecure = (await readFile(join(workDir, 'insecure_key.pub'), 'utf8')).trim()
    if (check.trim() !== insecure) throw new BoxError(`could not put the insecure key back into ${sshDir}/authorized_keys of the origin`)
    await run('qemu-img', ['convert', '-n', '-f', 'raw', rootImage, imageRangeSpec(scrubbed, 'qcow2', offset, size)], {purpose: 'writing the origin back'})
  } finally {
    await rm(rootImage, {force: true})
  }
}

/** Swap's first page holds its signature (mkswap's work); the rest is scratch. */
function skipSwapSignature(range: ExtentRange): ExtentRange {
  const page = 4096
  return {offset: range.offset + page, size: Math.max(0, range.size - page)}
}

/** overlay + backing chain → one standalone qcow2; zero and unallocated clusters are left out. */
async function flattenDisk(source: string, image: string, virtualSize: number, progress: Progress, signal?: AbortSignal): Promise<void> {
  const stage = progress.stage(`flattening the disk (${formatBytes(virtualSize)} virtual)`)
  const args = ['convert', '-p', '-O', 'qcow2', '-W', source, image]
  const child = spawn('qemu-img', args, {cancelSignal: signal, stdin: 'ignore', buffer: {stdout: false}})
  child.stdout?.on('data', (chunk: Buffer) => {
    // -p redraws "(12.34/100%)" in place.
    const matches = [...chunk.toString().matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)]
    const last = matches.at(-1)
    if (last) stage.update(`${Number(last[1]).toFixed(0)} %`)
  })
  try {
    await child
    stage.done(formatBytes((await stat(image)).size))
  } catch (error) {
    stage.fail()
    if (signal?.aborted) throw signal.reason
    throw toBoxError('qemu-img', args, error, 'flattening the disk')
  }
}

/**
 * Direct kernel boot must use the kernel grub would boot: the newest in the image's
 * /boot (a maintainer may have upgraded it in the origin). Read it from the /boot
 * partition; when that cannot be read, ship the source box's kernel and say so.
 */
async function shipKernel(
  image: string,
  record: MachineRecord,
  metadata: BoxMetadata,
  workDir: string,
  progress: Progress,
  signal?: AbortSignal,
): Promise<PackageResult['kernel']> {
  const kernelName = metadata.box!.kernel!
  const initrdName = metadata.box!.initrd
  const fromSource = async (why: string): Promise<PackageResult['kernel']> => {
    progress.warn(`${why}; shipping the source box's kernel${initrdName ? ' and initrd' : ''}`)
    await copyFile(join(record.box.path, kernelName), join(workDir, kernelName))
    if (initrdName) await copyFile(join(record.box.path, initrdName), join(workDir, initrdName))
    return {from: 'source-box', changed: false}
  }
  try {
    const partitions = parseMbr(await readImageRange(image, 'qcow2', 0, 512))
    const boot = partitions.find((partition) => partition.bootable && partition.type === 0x83) ?? partitions.find((partition) => partition.type === 0x83)
    if (!boot) return await fromSource('the disk has no /boot partition box can read')
    const bootImage = join(workDir, 'boot.raw')
    await copyImageRange(image, 'qcow2', boot.offset, boot.size, bootImage, signal)
    try {
      const entries = await listExtDirectory(bootImage, '/')
      const kernels = entries
        .map((entry) => ({entry, version: KERNEL_PATTERN.exec(entry.name)?.[1]}))
        .filter((kernel): kernel is {entry: typeof kernel.entry; version: string} => kernel.version !== undefined && (kernel.entry.mode & 0o170000) === 0o100000)
        .filter((kernel) => !initrdName || entries.some((entry) => entry.name === `initrd.img-${kernel.version}`))
        .sort((a, b) => compareKernelVersions(a.version, b.version))
      const newest = kernels.at(-1)
      if (!newest) return await fromSource('no kernel with an initrd found in the image\'s /boot')
      await dumpExtFile(bootImage, `/${newest.entry.name}`, workDir, kernelName)
      if (initrdName) await dumpExtFile(bootImage, `/initrd.img-${newest.version}`, workDir, initrdName)
      const changed = (await sha256File(join(workDir, kernelName))) !== (await sha256File(join(record.box.path, kernelName)).catch(() => ''))
      if (changed) progress.info(`the kernel changed in the origin: shipping ${newest.entry.name} from the image's /boot for direct boot`)
      return {from: 'image', file: newest.entry.name, changed}
    } finally {
      await rm(bootImage, {force: true})
    }
  } catch (error) {
    if (signal?.aborted) throw signal.reason
    return fromSource(`cannot read /boot from the image (${(error as Error).message})`)
  }
}

/** Kernel versions as `sort -V` orders them ("6.1.0-28-cloud-amd64" < "6.1.0-31-cloud-amd64"). */
export function compareKernelVersions(a: string, b: string): number {
  const parts = (text: string) => text.split(/(\d+)/).filter(Boolean)
  const left = parts(a)
  const right = parts(b)
  for (let i = 0; i < Math.max(left.length, right.length); i++) {
    const x = left[i]
    const y = right[i]
    if (x === undefined) return -1
    if (y === undefined) return 1
    if (x === y) continue
    const numeric = /^\d+$/.test(x) && /^\d+$/.test(y)
    return numeric ? Number(x) - Number(y) : x < y ? -1 : 1
  }
  return 0
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  return hash.digest('hex')
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
    `# Written by \`box package\` from ${record.box.name} ${record.box.version}.
Vagrant.configure("2") do |config|
  config.ssh.username = "${record.user.replace(/[^A-Za-z0-9._-]/g, '')}"
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
`,
  )
}

/** A catalog as JSON: only the keys this file edits are typed. */
interface CatalogJson {
  name: string
  versions: Array<{version: string; providers?: Array<{name: string; [key: string]: unknown}>; [key: string]: unknown}>
  [key: string]: unknown
}

export interface CatalogUpdate {
  file: string
  url: string
  boxName: string
  version: string
  sha256: string
  /** Provider name in the entry: vagrant-libvirt's, which box's QEMU provider also takes. */
  provider?: string
}

/**
 * Add or update `version` in a Vagrant-format catalog (created when missing): the
 * provider's url and sha256 are replaced, other providers and versions are kept, and
 * versions stay sorted newest first. Written atomically.
 */
export async function updateCatalog(update: CatalogUpdate): Promise<string> {
  const file = resolve(update.file)
  const provider = update.provider ?? 'libvirt'
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined
    throw new BoxError(`cannot read the catalog ${file}: ${error.message}`, {cause: error})
  })
  // Validate with the catalog schema, but edit the JSON as written so unknown keys survive untouched.
  if (text !== undefined) parseCatalogText(text, file)
  const catalog = (text === undefined ? {name: update.boxName, versions: []} : JSON.parse(text)) as CatalogJson
  let entry = catalog.versions.find((candidate) => candidate.version === update.version)
  if (!entry) {
    entry = {version: update.version, providers: []}
    catalog.versions.push(entry)
  }
  entry.providers = [...(entry.providers ?? []).filter((candidate) => candidate.name !== provider), {name: provider, url: update.url, checksum_type: 'sha256', checksum: update.sha256}]
  catalog.versions.sort((a, b) => compareVersions(b.version, a.version))
  const partial = `${file}.partial`
  await writeFile(partial, `${JSON.stringify(catalog, null, 2)}\n`)
  await rename(partial, file)
  return file
}
