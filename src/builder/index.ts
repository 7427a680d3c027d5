/**
 * box build: recipe → rootfs (cached) → configure → filesystem images → builder VM
 * (LVM layout, grub) → .box. Each stage is shown with progress and timed; the whole
 * box is cached by a hash of everything that goes into it (ensureBox).
 */
import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, readdir, readFile, stat} from 'node:fs/promises'
import {dirname, join, relative, resolve} from 'node:path'

import {BoxError, ExitCode} from '../lib/core/errors.js'
import {findOnPath, missingProgramError} from '../lib/core/exec.js'
import {checkFreeSpace, freeSpace} from '../lib/core/fs.js'
import {defaultCacheDir, PROJECT_ROOT} from '../lib/core/paths.js'
import {createProgress, formatBytes, type Progress, type Stage} from '../lib/core/progress.js'
import {makeApplianceInitrd, runAppliance} from './appliance.js'
import {configureRootfs, copyRootfs} from './configure.js'
import {makeImages, resolveBootLink, splitBoot} from './image.js'
import {removeTree} from './mounts.js'
import {lockOutput, packageBox} from './package.js'
import {loadRecipe, parseSize, RECIPE_FILE, rootfsHash, type Recipe} from './recipe.js'
import {defaultMirror, ensureRootfs, rootfsCachePath} from './rootfs.js'

export {loadRecipe, parseSize, rootfsHash, type Recipe} from './recipe.js'

export interface BuildBoxOptions {
  recipeDir: string
  /** The .box to write (default: ./<name>-<version>.box). */
  output?: string
  /** Where the rootfs cache and temp files live (default: box's cache dir). */
  cacheDir?: string
  /** Debian mirror (default: the recipe's, else the host's apt source, else deb.debian.org). */
  mirror?: string
  /** Replace an existing output file. */
  force?: boolean
  /** QEMU accelerator for the builder VM (default: $BOX_ACCEL, else tcg). */
  accel?: string
  progress?: Progress
  signal?: AbortSignal
}

export interface StageTiming {
  stage: string
  ms: number
  /** The stage's result came from the cache. */
  cached?: boolean
}

export interface BuildResult {
  output: string
  sha256: string
  size: number
  recipeHash: string
  rootfsHash: string
  timings: StageTiming[]
}

/** Host programs the build runs (each missing one is named with its package). */
export const BUILD_TOOLS = [
  'debootstrap',
  'chroot',
  'mke2fs',
  'qemu-img',
  'qemu-system-x86_64',
  'cpio',
  'busybox',
  'zstd',
]

/** A debootstrapped worker tree is ~600 MB; the build holds about five copies' worth at its peak. */
const ROOTFS_ESTIMATE = 700 * 1024 * 1024

export async function buildBox(options: BuildBoxOptions): Promise<BuildResult> {
  const progress = options.progress ?? createProgress({silent: true})
  const {signal} = options
  const cacheDir = resolve(options.cacheDir ?? defaultCacheDir())
  const recipe = await loadRecipe(options.recipeDir)
  const mirror = (options.mirror ?? recipe.mirror ?? (await defaultMirror())).replace(/\/+$/, '')
  const output = resolve(options.output ?? `${recipe.name}-${recipe.version}.box`)
  const recipeHash = await fullRecipeHash(recipe, mirror)

  await checkHost()
  await checkOutput(output, options.force ?? false)
  await mkdir(cacheDir, {recursive: true})
  const release = await lockOutput(output)
  const timings: StageTiming[] = []
  const timed = async <T>(
    name: string,
    work: (stage: Stage) => Promise<T>,
    summary?: (result: T) => string | undefined,
  ): Promise<T> => {
    signal?.throwIfAborted()
    const stage = progress.stage(name)
    const started = Date.now()
    try {
      const result = await work(stage)
      const text = summary?.(result)
      timings.push({stage: name, ms: Date.now() - started, ...(text === 'cached' ? {cached: true} : {})})
      stage.done(text)
      return result
    } catch (error) {
      stage.fail(signal?.aborted ? 'interrupted' : 'failed')
      throw error
    }
  }

  let workDir: string | undefined
  try {
    const rootfs = await timed(
      'rootfs',
      async (stage) => {
        const cachedAlready = existsSync(
          join(rootfsCachePath(cacheDir, rootfsHash(recipe, mirror)), 'etc', 'os-release'),
        )
        await checkBuildSpace(cacheDir, output, cachedAlready)
        return ensureRootfs({recipe, mirror, cacheDir, stage, signal})
      },
      (result) =>
        result.cached
          ? 'cached'
          : result.added
            ? `the plain tree with ${result.added.join(', ')} (apt)`
            : `debootstrap ${recipe.suite} from ${mirror}`,
    )
    await mkdir(join(cacheDir, 'tmp'), {recursive: true})
    workDir = await mkdtemp(join(cacheDir, 'tmp', 'build-'))
    const root = join(workDir, 'rootfs')
    const bootDir = join(workDir, 'boot')

    await timed('configure', async (stage) => {
      stage.update('copying the cached rootfs')
      await copyRootfs(rootfs.path, root, signal)
      await configureRootfs({recipe, root, stage, signal})
    })

    const {images, boot} = await timed(
      'images',
      async (stage) => {
        stage.update('root.ext4 and boot.ext4 (mke2fs -d)')
        const boot = await splitBoot(root, bootDir, recipe)
        const images = await makeImages({root, bootDir, workDir: workDir!, recipe, signal})
        return {images, boot}
      },
      ({boot}) => `kernel ${boot.kernelVersion}`,
    )

    const disk = join(workDir, 'disk.qcow2')
    await timed('disk (builder VM)', async (stage) => {
      const initrd = await makeApplianceInitrd({
        root,
        kernelVersion: boot.kernelVersion,
        recipe,
        workDir: workDir!,
        signal,
      })
      // The tree is in the images now; free its space before the disk grows.
      await removeTree(root)
      await runAppliance({
        kernel: boot.kernel,
        initrd,
        disk,
        diskBytes: parseSize(recipe.disk_size),
        rootImage: images.rootImage,
        bootImage: images.bootImage,
        log: join(workDir!, 'builder-serial.log'),
        accel: options.accel ?? process.env.BOX_ACCEL ?? 'tcg',
        stage,
        signal,
      })
    })

    const written = await timed(
      'package',
      async (stage) =>
        packageBox({
          recipe,
          recipeHash,
          disk,
          kernel: await resolveBootLink(bootDir, 'vmlinuz'),
          initrd: await resolveBootLink(bootDir, 'initrd.img'),
          workDir: workDir!,
          output,
          stage,
          signal,
        }),
      (box) => `${formatBytes(box.size)}, sha256 ${box.sha256.slice(0, 12)}…`,
    )
    return {output, sha256: written.sha256, size: written.size, recipeHash, rootfsHash: rootfs.hash, timings}
  } finally {
    if (workDir)
      await removeTree(workDir).catch((error: unknown) =>
        progress.warn(`could not remove ${workDir}: ${(error as Error).message}`),
      )
    await release()
  }
}

export interface EnsureBoxOptions {
  /** Default: box's cache dir. Tests pass process.env.BOX_TEST_CACHE ?? `${defaultCacheDir()}-test`. */
  cacheDir?: string
  mirror?: string
  accel?: string
  progress?: Progress
  signal?: AbortSignal
}

export interface EnsuredBox {
  path: string
  recipeHash: string
  /** False when the cached box was reused. */
  built: boolean
  build?: BuildResult
}

/** The built box for a recipe, from `<cacheDir>/boxes/<fullRecipeHash>.box`; builds only when missing. */
export async function ensureBox(recipeDir: string, options: EnsureBoxOptions = {}): Promise<EnsuredBox> {
  const cacheDir = resolve(options.cacheDir ?? defaultCacheDir())
  const recipe = await loadRecipe(recipeDir)
  const mirror = (options.mirror ?? recipe.mirror ?? (await defaultMirror())).replace(/\/+$/, '')
  const recipeHash = await fullRecipeHash(recipe, mirror)
  const path = join(cacheDir, 'boxes', `${recipeHash}.box`)
  if (existsSync(path)) return {path, recipeHash, built: false}
  await mkdir(dirname(path), {recursive: true})
  const build = await buildBox({
    recipeDir,
    output: path,
    cacheDir,
    mirror,
    force: true,
    accel: options.accel,
    progress: options.progress,
    signal: options.signal,
  })
  return {path, recipeHash, built: true, build}
}

/** Folders of guest files the builder installs into the image (scripts, units, initramfs hooks, the published insecure keys in static/). */
const GUEST_PAYLOAD_DIRS = ['initramfs', 'provisioners', 'static']

/**
 * Hash of everything a built box depends on, taken from what lands in the image rather than a
 * list of names: the recipe (and its mirror) with the key files it names, every file of the
 * guest payload folders, and the builder's code as the modules reachable by import from
 * builder/index — whatever the builder imports (the agent's constants, archive code…) can change
 * the image. The code is read from src/ when the tree has it, else from dist/ (an installed
 * CLI), so the tests and bin/box agree on the key for one checkout. `root` is the project root.
 */
export async function fullRecipeHash(recipe: Recipe, mirror: string, root: string = PROJECT_ROOT): Promise<string> {
  const hash = createHash('sha256')
  const add = (name: string, content: string | Buffer) => {
    hash.update(`${name}\0${content.length}\0`)
    hash.update(content)
  }
  add('recipe', await readFile(join(recipe.dir, RECIPE_FILE)))
  add('mirror', mirror)
  for (const file of recipe.authorizedKeyFiles.flat()) add(`key:${relative(recipe.dir, file)}`, await readFile(file))
  for (const dir of GUEST_PAYLOAD_DIRS) {
    for (const file of await listFiles(join(root, dir))) add(relative(root, file), await readFile(file))
  }
  for (const file of await builderModules(root)) add(relative(root, file), await readFile(file))
  return hash.digest('hex').slice(0, 16)
}

/** The builder's code: builder/index and every project module it reaches by import, sorted. */
export async function builderModules(root: string = PROJECT_ROOT): Promise<string[]> {
  const fromSource = existsSync(join(root, 'src', 'builder', 'index.ts'))
  const base = join(root, fromSource ? 'src' : 'dist')
  const entry = join(base, 'builder', fromSource ? 'index.ts' : 'index.js')
  const seen = new Set<string>()
  const pending = [entry]
  while (pending.length > 0) {
    const file = pending.pop()!
    if (seen.has(file)) continue
    seen.add(file)
    const text = await readFile(file, 'utf8').catch(() => {
      throw new BoxError(`cannot read ${file}, which the builder imports`, {
        suggestions: ['run `npm run build` (or reinstall box)'],
      })
    })
    for (const specifier of relativeImports(text, fromSource)) {
      let target = resolve(dirname(file), specifier)
      if (fromSource && target.endsWith('.js')) target = target.replace(/\.js$/, '.ts')
      if (!relative(base, target).startsWith('..')) pending.push(target)
    }
  }
  return [...seen].sort()
}

/**
 * Relative specifiers of a module's static, dynamic and side-effect imports and re-exports. A
 * TypeScript `import type` / `export type` is skipped: it is erased and lands nowhere. A match
 * inside a comment only adds a file to the key, never drops one.
 */
function relativeImports(text: string, typescript: boolean): string[] {
  const specifiers: string[] = []
  const patterns = [
    // The clause between the keyword and `from` may span lines but never another statement.
    /\b(?:import|export)(\s+type\b)?(?:(?!\b(?:import|export)\b)[^;'"`()=])*?\bfrom\s*['"](\.[^'"]*)['"]/g,
    /\bimport\s*\(\s*()['"](\.[^'"]*)['"]\s*\)/g,
    /^\s*import\s*()['"](\.[^'"]*)['"]/gm,
  ]
  for (const pattern of patterns) {
    for (const [, typeOnly, specifier] of text.matchAll(pattern)) {
      if (!(typescript && typeOnly)) specifiers.push(specifier)
    }
  }
  return specifiers
}

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, {withFileTypes: true}).catch(() => [])
  const files: string[] = []
  for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) files.push(...(await listFiles(path)))
    else if (entry.isFile()) files.push(path)
  }
  return files
}

async function checkHost(): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new BoxError('box build needs root (debootstrap and chroot)', {
      exitCode: ExitCode.USAGE,
      suggestions: ['run it with sudo'],
    })
  }
  for (const tool of BUILD_TOOLS) {
    if (!(await findOnPath(tool))) throw missingProgramError(tool)
  }
}

async function checkOutput(output: string, force: boolean): Promise<void> {
  const dir = dirname(output)
  const dirStat = await stat(dir).catch(() => undefined)
  if (!dirStat?.isDirectory()) throw new BoxError(`output directory does not exist: ${dir}`, {exitCode: ExitCode.USAGE})
  if (existsSync(output) && !force) {
    throw new BoxError(`${output} already exists`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['pass --force to replace it, or choose another --output'],
    })
  }
}

/** Refuse to start when the cache or output filesystem cannot hold the build (a half-full disk fails late and messily). */
async function checkBuildSpace(cacheDir: string, output: string, rootfsCached: boolean): Promise<void> {
  const [cache, out] = await Promise.all([freeSpace(cacheDir), freeSpace(dirname(output))])
  const boxEstimate = ROOTFS_ESTIMATE / 2
  const sameDevice = cache.device === out.device
  const check = {
    needs: 'the build',
    suggestions: ['free some space, or set BOX_CACHE_DIR (and --output) to a larger filesystem'],
  }
  await checkFreeSpace(cacheDir, ROOTFS_ESTIMATE * (rootfsCached ? 4 : 5) + (sameDevice ? boxEstimate : 0), check)
  if (!sameDevice) await checkFreeSpace(dirname(output), boxEstimate, check)
}
