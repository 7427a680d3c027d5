/**
 * Stage "rootfs": a debootstrap'ed Debian tree, cached under <cacheDir>/rootfs/<hash>
 * where the hash covers only suite, mirror and packages (and the kinds' packages: a
 * dracut or thin tree is the plain tree, copied, with those installed by apt).
 */
import {existsSync} from 'node:fs'
import {mkdir, readdir, readFile, rename} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError, tail} from '../lib/core/errors.js'
import {run, spawn, toBoxError} from '../lib/core/exec.js'
import type {Stage} from '../lib/core/progress.js'
import {removeTree} from './mounts.js'
import {debootstrapPackages, kindPackages, rootfsHash, type RootfsInputs} from './recipe.js'

export const FALLBACK_MIRROR = 'http://deb.debian.org/debian'

/**
 * The mirror the host's own apt uses for Debian (so a build uses the same proxy/mirror
 * as apt does), else deb.debian.org.
 */
export async function defaultMirror(): Promise<string> {
  const uris: string[] = []
  const legacy = await readFile('/etc/apt/sources.list', 'utf8').catch(() => '')
  for (const line of legacy.split('\n')) {
    const match = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line)
    if (match && !match[2]!.includes('security')) uris.push(match[1]!)
  }
  const dir = '/etc/apt/sources.list.d'
  const files = (await readdir(dir).catch(() => [] as string[])).filter((name) => name.endsWith('.sources')).sort()
  for (const name of files) {
    const text = await readFile(join(dir, name), 'utf8').catch(() => '')
    for (const paragraph of text.split(/\n\s*\n/)) {
      const uri = /^URIs:\s*(\S+)/m.exec(paragraph)?.[1]
      const suites = /^Suites:\s*(.+)$/m.exec(paragraph)?.[1] ?? ''
      if (uri && !suites.includes('security')) uris.push(uri)
    }
  }
  const debian = uris.find((uri) => /^https?:\/\//.test(uri) && /\/debian\/?$/.test(uri))
  return (debian ?? FALLBACK_MIRROR).replace(/\/+$/, '')
}

/** Fail early and clearly when the mirror cannot serve the suite (debootstrap's own error is cryptic). */
export async function checkMirror(mirror: string, suite: string, signal?: AbortSignal): Promise<void> {
  const url = `${mirror.replace(/\/+$/, '')}/dists/${suite}/Release`
  const timeout = AbortSignal.timeout(20_000)
  try {
    const response = await fetch(url, {method: 'HEAD', signal: signal ? AbortSignal.any([signal, timeout]) : timeout})
    if (!response.ok) throw new Error(`HTTP ${response.status}`)
  } catch (error) {
    signal?.throwIfAborted()
    throw new BoxError(`Debian mirror unreachable: ${url}: ${(error as Error).message}`, {
      cause: error,
      suggestions: ['check the network, or pass another mirror with --mirror URL (or `mirror:` in the recipe)'],
    })
  }
}

export interface RootfsOptions {
  recipe: RootfsInputs
  mirror: string
  cacheDir: string
  stage?: Stage
  signal?: AbortSignal
}

export interface RootfsResult {
  path: string
  hash: string
  /** True when an earlier build's tree was reused. */
  cached: boolean
  /** The kinds' packages apt installed in a copy of the plain tree (a new tree of another kind). */
  added?: string[]
}

export function rootfsCachePath(cacheDir: string, hash: string): string {
  return join(cacheDir, 'rootfs', hash)
}

/**
 * The tree the recipe needs, made in a temp dir next to the cache entry and renamed into
 * place (atomic): debootstrap for a plain tree; for other kinds, a copy of the plain tree
 * (made first if it is not cached) with the kinds' packages installed by apt.
 */
export async function ensureRootfs(options: RootfsOptions): Promise<RootfsResult> {
  const {recipe, mirror, cacheDir, stage, signal} = options
  const hash = rootfsHash(recipe, mirror)
  const path = rootfsCachePath(cacheDir, hash)
  if (existsSync(join(path, 'etc', 'os-release'))) return {path, hash, cached: true}

  const extra = kindPackages(recipe)
  const plain =
    extra.length > 0
      ? await ensureRootfs({...options, recipe: {...recipe, initramfs: 'initramfs-tools', snapshot: 'classic'}})
      : undefined
  await mkdir(join(cacheDir, 'rootfs'), {recursive: true})
  const temp = `${path}.tmp-${process.pid}-${Date.now()}`
  try {
    if (plain) {
      stage?.update(`copying the plain tree, then installing ${extra.join(', ')} (apt)`)
      await run('cp', ['-a', '--reflink=auto', plain.path, temp], {
        purpose: 'copying the plain rootfs',
        cancelSignal: signal,
      })
      await installKindPackages(temp, extra, signal)
    } else {
      await debootstrap(recipe, mirror, temp, stage, signal)
    }
  } catch (error) {
    await removeTree(temp)
    throw error
  }
  try {
    await rename(temp, path)
  } catch (error) {
    // Another build finished the same tree first: use theirs.
    await removeTree(temp)
    if (!existsSync(join(path, 'etc', 'os-release'))) throw error
  }
  return {path, hash, cached: false, ...(plain ? {added: extra} : {})}
}

async function debootstrap(
  recipe: RootfsInputs,
  mirror: string,
  temp: string,
  stage?: Stage,
  signal?: AbortSignal,
): Promise<void> {
  await checkMirror(mirror, recipe.suite, signal)
  const args = [
    '--variant=minbase',
    `--include=${debootstrapPackages(recipe).join(',')}`,
    '--components=main',
    recipe.suite,
    temp,
    mirror,
  ]
  try {
    const child = spawn('debootstrap', args, {
      cancelSignal: signal,
      stdin: 'ignore',
      all: true,
      buffer: {all: true},
      env: {DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C'},
    })
    let packages = 0
    for await (const line of child.iterable({from: 'all'})) {
      const text = String(line)
      if (/^I: (Retrieving|Extracting|Unpacking|Configuring) /.test(text)) {
        packages++
        stage?.update(`${text.slice(3)} (${packages} steps)`)
      }
    }
    await child
  } catch (error) {
    const log = await readFile(join(temp, 'debootstrap', 'debootstrap.log'), 'utf8').catch(() => '')
    signal?.throwIfAborted()
    const failure = toBoxError('debootstrap', args, error, `debootstrap of ${recipe.suite} from ${mirror}`, [
      'check that the mirror serves this suite and every package in the recipe exists there (--mirror URL to use another)',
    ])
    throw new BoxError(failure.message, {
      cause: error,
      suggestions: failure.suggestions,
      detail: log ? tail(log) : failure.detail,
    })
  }
}

/**
 * apt installs the kinds' packages in the copied tree, from the mirror debootstrap wrote
 * into its sources.list. dracut's removes initramfs-tools (it conflicts with it and provides
 * linux-initramfs-tool for the kernel); the initrd their triggers make is replaced in the
 * configure stage.
 */
async function installKindPackages(root: string, packages: string[], signal?: AbortSignal): Promise<void> {
  const env = {DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C', PATH: '/usr/sbin:/usr/bin:/sbin:/bin'}
  const apt = async (args: string[], purpose: string) =>
    run('chroot', [root, 'apt-get', '-q', ...args], {purpose, cancelSignal: signal, env, stdin: 'ignore'})
  await apt(['update'], 'apt-get update in the rootfs')
  await apt(
    ['install', '-y', '--no-install-recommends', ...packages],
    `installing ${packages.join(', ')} in the rootfs`,
  )
}
