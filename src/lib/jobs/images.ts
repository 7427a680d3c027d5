/**
 * The job folder box-job reads (limits, command, inputs, outputs, in/N) staged on the host,
 * and the two disks of a job without network, HTCondor style: the staged folder as a small
 * read-only ext4 image (`mke2fs -d`, no root, no loop device) and an empty output image
 * that the host reads back with debugfs (no mount) once the guest has unmounted it.
 */
import {copyFile, lstat, mkdir, readdir, readlink, stat, symlink, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError, ExitCode} from '../core/errors.js'
import {run} from '../core/exec.js'
import {shJoin} from '../core/shell-quote.js'
import {commandText, type JobSpec} from './spec.js'

/** Serial numbers the guest finds the disks by (box-agent's disk_with_serial). */
export const INPUT_SERIAL = 'box-job-in'
export const OUTPUT_SERIAL = 'box-job-out'

/** Files box-job leaves in its output folder (provisioners/box-job). */
export const GUEST_RESULT_FILES = ['status', 'stdout', 'stderr', 'out.tar', 'out.log'] as const

/**
 * Write the job folder: box-job's plain files and a copy of every input (files, folders and
 * symlinks as they are; a device, socket or fifo among the inputs is refused). Returns the
 * bytes of input data.
 */
export async function stageJob(spec: JobSpec, dir: string): Promise<number> {
  await mkdir(join(dir, 'in'), {recursive: true, mode: 0o755})
  const limits = [
    `user ${spec.user}`,
    `timeout ${Math.max(1, Math.ceil(spec.timeoutMs / 1000))}`,
    `output_limit ${spec.outputLimit}`,
    `nproc ${spec.nproc}`,
    `fsize ${spec.fileSizeLimit}`,
  ]
  await writeFile(join(dir, 'limits'), `${limits.join('\n')}\n`, {mode: 0o644})
  await writeFile(join(dir, 'command'), `${commandText(spec.command, shJoin)}\n`, {mode: 0o644})
  await writeFile(join(dir, 'inputs'), spec.inputs.map((input, index) => `${index} ${input.guest}\n`).join(''), {
    mode: 0o644,
  })
  await writeFile(join(dir, 'outputs'), spec.outputs.map((output) => `${output}\n`).join(''), {mode: 0o644})
  let bytes = 0
  for (const [index, input] of spec.inputs.entries()) {
    // The named path itself is followed (the user named it); links inside are copied as links.
    const top = await stat(input.host)
    bytes += await copyInput(input.host, join(dir, 'in', String(index)), top.isDirectory(), input.host)
  }
  return bytes
}

async function copyInput(source: string, dest: string, isDirectory: boolean, shown: string): Promise<number> {
  if (isDirectory) {
    await mkdir(dest, {mode: 0o755})
    let bytes = 0
    for (const entry of await readdir(source, {withFileTypes: true})) {
      const from = join(source, entry.name)
      const to = join(dest, entry.name)
      if (entry.isSymbolicLink()) await symlink(await readlink(from), to)
      else if (entry.isDirectory()) bytes += await copyInput(from, to, true, shown)
      else if (entry.isFile()) bytes += await copyRegular(from, to)
      else
        throw new BoxError(`input ${shown} holds ${from}, which is not a file, folder or symlink`, {
          exitCode: ExitCode.USAGE,
          suggestions: ['leave devices, sockets and fifos out of job inputs'],
        })
    }
    return bytes
  }
  const info = await stat(source)
  if (!info.isFile()) throw new BoxError(`input ${shown} is not a file or folder`, {exitCode: ExitCode.USAGE})
  return copyRegular(source, dest)
}

async function copyRegular(from: string, to: string): Promise<number> {
  await copyFile(from, to)
  return (await lstat(to)).size
}

/**
 * The size a job disk is made at: what it needs rounded up to a power of two, at least
 * 64 MiB. A worker restored from a ready state keeps the disks it was saved with, sizes
 * included (the guest learnt them at boot), so the sizes are part of the ready state's key:
 * rounding keeps the jobs of a batch on one or two ready states. The files are sparse.
 */
export function jobDiskBytes(needed: number): number {
  let size = 64 * 1024 * 1024
  while (size < needed) size *= 2
  return size
}

/** An ext4 image of `dir`, readable by everyone in the guest (files stay as staged). */
export async function makeInputImage(dir: string, image: string, inputBytes: number): Promise<void> {
  // Twice the data plus room for inodes and the journal-less metadata.
  await mke2fs(image, jobDiskBytes(inputBytes * 2 + 4 * 1024 * 1024), dir, 'box-job-in')
}

/** An empty ext4 image for stdout, stderr, status and out.tar. */
export async function makeOutputImage(
  image: string,
  outputLimit: number,
  outputsLimit: number,
  emptyDir: string,
): Promise<void> {
  await mkdir(emptyDir, {recursive: true})
  const size = 2 * (outputLimit + 1) + outputsLimit + 16 * 1024 * 1024
  await mke2fs(image, jobDiskBytes(size), emptyDir, 'box-job-out')
}

async function mke2fs(image: string, bytes: number, dir: string, label: string): Promise<void> {
  const kib = Math.ceil(bytes / 1024 / 4) * 4
  // No journal (a job's disk is written once) and no orphan_file: the guest's 6.1 kernel mounts it read-write.
  await run(
    'mke2fs',
    [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-O',
      '^has_journal,^orphan_file,^metadata_csum_seed',
      '-E',
      'root_owner=0:0',
      '-L',
      label,
      '-d',
      dir,
      image,
      `${kib}k`,
    ],
    {purpose: `making the job disk ${label}`},
  )
}

/**
 * Copy box-job's result files out of the output image with debugfs (no mount, no root).
 * Each lands in `dest` under its own fixed name, so nothing the guest named is used on the host.
 */
export async function readOutputImage(image: string, dest: string): Promise<string[]> {
  await mkdir(dest, {recursive: true})
  const {stdout} = await run('debugfs', ['-R', 'ls -p /', image], {purpose: 'listing the job output disk'})
  // Lines: /INODE/MODE/UID/GID/NAME/SIZE/ — only regular files (mode 100xxx) are taken.
  const present = new Set<string>()
  for (const line of stdout.split('\n')) {
    const fields = line.split('/')
    if (fields.length >= 7 && fields[2]!.startsWith('100')) present.add(fields[5]!)
  }
  const found = GUEST_RESULT_FILES.filter((name) => present.has(name))
  for (const name of found) {
    // Run in `dest` with a bare name: debugfs splits its command at spaces, which a path may hold.
    await run('debugfs', ['-R', `dump /${name} ${name}`, image], {
      cwd: dest,
      purpose: `reading ${name} from the job output disk`,
    })
  }
  return found
}
