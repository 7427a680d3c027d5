/**
 * `box upload` and `box download`: files and folders copied as a tar stream over the
 * machine's ssh master connection (ssh's -C does nothing on a shared connection, so
 * --compress is gzip at both ends). Both sides write into a fresh temporary folder next to
 * the destination and rename into place: an interrupted copy leaves nothing half-written.
 *
 * What comes from the guest is not trusted: the stream is saved, every entry is checked
 * with box's own tar reader (names inside the copied folder, no `..`, no absolute names, no
 * entry under a symlink of the stream, no devices, hard links only to entries of the copy),
 * and only then is it extracted by tar, into that empty folder, without owners.
 */
import {createReadStream, createWriteStream} from 'node:fs'
import {lstat, mkdir, mkdtemp, rename, rm} from 'node:fs/promises'
import {basename, dirname, join, posix, resolve} from 'node:path'
import {pipeline} from 'node:stream/promises'
import {createGunzip, createGzip} from 'node:zlib'

import {TarReader, type TarEntry} from '../box/tar-reader.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {run, spawn, toBoxError} from '../core/exec.js'
import {formatBytes, type Progress} from '../core/progress.js'
import {oneMachine} from './port.js'
import {loadProjectBoxfile, openProject, type OpenProjectOptions} from './project.js'
import {hostKeyError, sshArgs, type SshTarget} from './ssh.js'
import {runningMachineTarget} from './ssh-session.js'

export interface TransferOptions {
  machine: string
  target: SshTarget
  /** A path, or `-` for box's stdin (upload) or stdout (download). */
  source: string
  destination?: string
  compress: boolean
  progress: Progress
  signal?: AbortSignal
}

export interface TransferResult {
  /** Where the copy is now (a guest path for uploads, a host path for downloads; `-` for stdout). */
  destination: string
  bytes?: number
}

/** Guest exit codes of the scripts below that carry a message for the user (on stderr). */
const GUEST_REFUSED = new Set([3, 4, 5])

// `~` in a guest path means the login user's home (the words reach the guest quoted).
// eslint-disable-next-line no-template-curly-in-string -- shell parameter expansion, not a JS template
const GUEST_HOME = 'case $p in "~") p=$HOME;; "~/"*) p=$HOME/${p#"~/"};; esac'

/** Guest side of an upload: $1 destination, $2 the copy's name in the stream (`-`: raw bytes), $3 `-z` or ''. */
const UPLOAD_SCRIPT = `set -eu
p=$1; base=$2; z=$3
${GUEST_HOME}
if [ -d "$p" ]; then
  [ "$base" != - ] || { echo "$p is a folder in the guest: name the file to write" >&2; exit 5; }
  dir=$p; name=$base
else
  dir=$(dirname -- "$p"); name=$(basename -- "$p")
fi
[ -d "$dir" ] || { echo "no such folder in the guest: $dir" >&2; exit 3; }
target=\${dir%/}/$name
if [ -d "$target" ] && [ ! -L "$target" ]; then echo "$target already exists in the guest as a folder: remove it first or name another destination" >&2; exit 4; fi
tmp=$(mktemp -d "\${dir%/}/.box-upload.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if [ "$base" = - ]; then
  base=.stdin
  if [ -n "$z" ]; then gzip -dc > "$tmp/$base"; else cat > "$tmp/$base"; fi
else
  tar -x $z -f - -C "$tmp" --no-same-owner
fi
mv -f -T "$tmp/$base" "$target"
printf '%s\\n' "$target"
`

/** Guest side of a download: $1 source, $2 `-z` or '', $3 `raw` for the bare bytes of a file. */
const DOWNLOAD_SCRIPT = `set -eu
p=$1; z=$2; raw=$3
${GUEST_HOME}
[ -e "$p" ] || [ -L "$p" ] || { echo "no such file or folder in the guest: $p" >&2; exit 3; }
if [ -n "$raw" ]; then
  [ ! -d "$p" ] || { echo "$p is a folder in the guest: only a file can go to stdout; name a destination folder instead of -" >&2; exit 4; }
  if [ -n "$z" ]; then exec gzip -c -- "$p"; else exec cat -- "$p"; fi
fi
cd -- "$(dirname -- "$p")"
exec tar -c $z -f - -- "$(basename -- "$p")"
`

async function upload(options: TransferOptions): Promise<TransferResult> {
  const {source, target, compress} = options
  const z = compress ? '-z' : ''
  const fromStdin = source === '-'
  const base = await checkUploadSource(source, options.destination, options.machine)
  const destination = options.destination ?? '.'
  const stage = options.progress.stage(`${options.machine}: upload ${source} → ${destination}`)
  const ssh = spawn('ssh', sshArgs(target, ['sh', '-c', UPLOAD_SCRIPT, 'sh', destination, base, z]), {
    reject: false,
    stdin: fromStdin && !compress ? 'inherit' : 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    cancelSignal: options.signal,
  })
  let feeder: Promise<unknown> = Promise.resolve()
  if (fromStdin && compress) feeder = pipeline(process.stdin, createGzip(), ssh.stdin!)
  else if (!fromStdin) {
    const tar = spawn(
      'tar',
      ['-c', ...(compress ? ['-z'] : []), '-f', '-', '-C', dirname(resolve(source)), '--', base],
      {reject: false, stdin: 'ignore', stdout: 'pipe', stderr: 'pipe', cancelSignal: options.signal},
    )
    feeder = Promise.all([pipeline(tar.stdout!, ssh.stdin!), tar]).then(([, result]) => {
      if (result.exitCode !== 0) throw toBoxError('tar', ['-c', source], result, `reading ${source}`)
    })
  }
  const [fed, result] = await Promise.allSettled([feeder, ssh])
  if (result.status === 'rejected') throw result.reason
  const {exitCode, stderr, stdout} = result.value
  if (exitCode !== 0) {
    stage.fail()
    if (exitCode !== undefined && GUEST_REFUSED.has(exitCode))
      throw new BoxError(`upload to ${options.machine} refused: ${String(stderr).trim()}`)
    // Before the feeder's error: a refused host key leaves tar writing into a closed pipe.
    const refusedKey = hostKeyError(target, result.value)
    if (refusedKey) throw refusedKey
    if (fed.status === 'rejected') throw fed.reason
    throw toBoxError('ssh', [], result.value, `upload of ${source} to ${options.machine}`)
  }
  if (fed.status === 'rejected') {
    stage.fail()
    throw fed.reason
  }
  const written = String(stdout).trim()
  stage.done(written)
  return {destination: written}
}

/** The upload's name in the stream (`-` for stdin); a clear error for a source that does not exist, checked before the guest is reached. */
async function checkUploadSource(source: string, destination: string | undefined, machine: string): Promise<string> {
  if (source === '-') {
    if (destination === undefined)
      throw new BoxError('box upload - needs a destination: the guest path to write stdin to', {
        exitCode: ExitCode.USAGE,
        suggestions: [`box upload ${machine} - /tmp/file`],
      })
    return '-'
  }
  if (!(await lstat(source).catch(() => undefined)))
    throw new BoxError(`upload source ${source} does not exist`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['name a file or folder on this host'],
    })
  return basename(resolve(source))
}

async function download(options: TransferOptions): Promise<TransferResult> {
  const {source, target, compress} = options
  const z = compress ? '-z' : ''
  const base = posix.basename(source)
  if (source === '-' || ['', '.', '..', '/'].includes(base)) {
    throw new BoxError(`box download needs a file or folder of the guest, not "${source}"`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`box download ${options.machine} /etc/hostname .`],
    })
  }
  const guest = (raw: boolean) => sshArgs(target, ['sh', '-c', DOWNLOAD_SCRIPT, 'sh', source, z, raw ? 'raw' : ''])
  const refused = (result: {exitCode?: number; stderr?: unknown}) =>
    result.exitCode !== undefined && GUEST_REFUSED.has(result.exitCode)
      ? new BoxError(`download from ${options.machine} refused: ${String(result.stderr).trim()}`)
      : (hostKeyError(target, result) ?? toBoxError('ssh', [], result, `download of ${source} from ${options.machine}`))

  if (options.destination === '-') {
    const ssh = spawn('ssh', guest(true), {
      reject: false,
      stdin: 'ignore',
      stdout: compress ? 'pipe' : 'inherit',
      stderr: 'pipe',
      cancelSignal: options.signal,
    })
    const [piped, result] = await Promise.allSettled([
      compress ? pipeline(ssh.stdout!, createGunzip(), process.stdout, {end: false}) : Promise.resolve(),
      ssh,
    ])
    if (result.status === 'rejected') throw result.reason
    if (result.value.exitCode !== 0) throw refused(result.value)
    if (piped.status === 'rejected')
      throw new BoxError(`the gzip stream from ${options.machine} is damaged`, {cause: piped.reason})
    return {destination: '-'}
  }

  const {folder, final} = await downloadTarget(options.destination ?? '.', base)
  const stage = options.progress.stage(`${options.machine}: download ${source} → ${final}`)
  const work = await mkdtemp(join(folder, '.box-download-'))
  try {
    const stream = join(work, compress ? 'stream.tar.gz' : 'stream.tar')
    const ssh = spawn('ssh', guest(false), {
      reject: false,
      stdin: 'ignore',
      stdout: 'pipe',
      stderr: 'pipe',
      cancelSignal: options.signal,
    })
    const [saved, result] = await Promise.allSettled([
      pipeline(ssh.stdout!, createWriteStream(stream, {mode: 0o600})),
      ssh,
    ])
    if (result.status === 'rejected') throw result.reason
    if (result.value.exitCode !== 0) throw refused(result.value)
    if (saved.status === 'rejected') throw saved.reason
    const bytes = await checkDownloadStream(stream, base, compress, options.machine)
    const out = join(work, 'out')
    await mkdir(out)
    await run(
      'tar',
      ['-x', ...(compress ? ['-z'] : []), '-f', stream, '-C', out, '--no-same-owner', '--no-overwrite-dir'],
      {purpose: `unpacking ${source}`},
    )
    // Checked again just before: the destination may have changed while the copy ran.
    await downloadTarget(options.destination ?? '.', base)
    await rename(join(out, base), final)
    stage.done(formatBytes(bytes))
    return {destination: final, bytes}
  } catch (error) {
    stage.fail()
    throw error
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}

/**
 * Where a download goes: into `destination` when it is a folder, else `destination` is the
 * copy's new name. Never through a symlink: not a destination that is one, not a copy that
 * would replace one; an existing folder is not replaced.
 */
async function downloadTarget(destination: string, base: string): Promise<{folder: string; final: string}> {
  const info = await lstat(destination).catch(() => undefined)
  if (info?.isSymbolicLink()) throw symlinkRefused(destination)
  const [folder, final] = info?.isDirectory()
    ? [destination, join(destination, base)]
    : [dirname(destination), destination]
  const folderInfo = await lstat(folder).catch(() => undefined)
  if (!folderInfo?.isDirectory())
    throw new BoxError(`download destination folder ${folder} does not exist`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`create it first: mkdir -p ${folder}`],
    })
  const existing = await lstat(final).catch(() => undefined)
  if (existing?.isSymbolicLink()) throw symlinkRefused(final)
  if (existing?.isDirectory())
    throw new BoxError(`${final} already exists as a folder`, {
      suggestions: ['remove it first, or name another destination'],
    })
  return {folder, final}
}

function symlinkRefused(path: string): BoxError {
  return new BoxError(`download destination ${path} is a symlink: box does not write through symlinks`, {
    suggestions: ['name the real folder or file it points to'],
  })
}

/** Every entry of the saved stream, checked before anything is extracted; resolves to the bytes of file data. */
async function checkDownloadStream(file: string, base: string, compressed: boolean, machine: string): Promise<number> {
  const input = createReadStream(file)
  const reader = new TarReader(compressed ? input.pipe(createGunzip()) : input)
  const symlinks = new Set<string>()
  let bytes = 0
  try {
    for (let entry = await reader.next(); entry; entry = await reader.next()) {
      const parts = entryParts(entry.name, base, machine)
      for (let i = 1; i < parts.length; i++) {
        if (symlinks.has(parts.slice(0, i).join('/')))
          throw unsafe(machine, entry, 'it would be written through a symlink of the copy')
      }
      switch (entry.type) {
        case 'file':
          bytes += entry.size
          break
        case 'directory':
          break
        case 'symlink':
          symlinks.add(parts.join('/'))
          break
        case 'link': {
          const target = entryParts(entry.linkname, base, machine)
          for (let i = 1; i <= target.length; i++) {
            if (symlinks.has(target.slice(0, i).join('/')))
              throw unsafe(machine, entry, 'it is a hard link through a symlink of the copy')
          }
          break
        }
        default:
          throw unsafe(machine, entry, `its type (${entry.type}) is not a file, folder or link`)
      }
    }
  } finally {
    input.destroy()
  }
  return bytes
}

/** An entry's name as parts; refused unless it is the copy itself or inside it. */
function entryParts(name: string, base: string, machine: string): string[] {
  const parts = name.split('/').filter((part) => part !== '' && part !== '.')
  if (name.startsWith('/') || parts.includes('..') || parts[0] !== base) {
    throw new BoxError(`download from ${machine} refused: the stream holds "${name}", outside ${base}`, {
      suggestions: ['nothing was written; the guest sent a tar stream box did not ask for'],
    })
  }
  return parts
}

function unsafe(machine: string, entry: TarEntry, why: string): BoxError {
  return new BoxError(`download from ${machine} refused: "${entry.name}": ${why}`, {
    suggestions: ['nothing was written'],
  })
}

/**
 * `[NAME] SOURCE [DESTINATION]`: with three words the first is the machine; with two, it is
 * the machine when the Boxfile has a machine of that name (else SOURCE DESTINATION).
 */
function transferWords(
  words: readonly string[],
  machineNames: readonly string[],
  command: string,
): {names: string[]; source: string; destination?: string} {
  const usage = () =>
    new BoxError(`box ${command} takes [NAME] SOURCE [DESTINATION]`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`box ${command} --help`],
    })
  if (words.length === 0 || words.length > 3) throw usage()
  const named = words.length === 3 || (words.length === 2 && machineNames.includes(words[0]!))
  const [source, destination] = named ? words.slice(1) : words
  return {names: named ? [words[0]!] : [], source: source!, destination}
}

export interface CopyFilesOptions extends Omit<OpenProjectOptions, 'names'> {
  /** The command line's words: `[NAME] SOURCE [DESTINATION]`. */
  words: readonly string[]
  compress: boolean
}

/** `box upload` / `box download`: the machine and paths from the words, then the copy. */
export async function copyFiles(direction: 'upload' | 'download', options: CopyFilesOptions): Promise<TransferResult> {
  const {machines: all} = await loadProjectBoxfile({version: options.version, cwd: options.cwd})
  const words = transferWords(
    options.words,
    all.map((m) => m.name),
    direction,
  )
  const {machines, context} = await openProject({...options, names: words.names})
  const machine = oneMachine(machines, direction)
  // A missing source is said before the machine is reached (it may not even be running).
  if (direction === 'upload') await checkUploadSource(words.source, words.destination, machine.name)
  const copy = direction === 'upload' ? upload : download
  return copy({
    machine: machine.name,
    target: await runningMachineTarget(context, machine),
    source: words.source,
    destination: words.destination,
    compress: options.compress,
    progress: context.progress,
    signal: context.signal,
  })
}
