/**
 * `box add` of a small local .box: what the HTTP code costs a command that never opens
 * a connection. Two builds of box, paired A B A B (BOX_BENCH_PAIRS, default 15), each run
 * into an empty store of its own: wall and CPU time (GNU time), medians and the ratio;
 * then, for each build, whether `got` (the HTTP client) was loaded at all, told by a
 * module resolve hook in the command's own process.
 *
 * Usage: BOX_BENCH_BEFORE=/path/to/other/checkout node --import tsx/esm bench/add-startup.ts
 *   BOX_BENCH_BEFORE: a checkout of box with dist/ built (e.g. `git archive REV | tar -x`,
 *   node_modules linked, `npm run build`); BOX_BENCH_AFTER defaults to this checkout.
 * The box is 64 KiB of image (the fixture the tests use), so start-up dominates.
 * The machine is shared: the load average is printed before and after.
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

import {execa} from 'execa'

import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {makeBoxFile} from '../test/fixtures/boxes.js'
import {loadAverages, median} from './stats.js'

const pairs = Number(process.env.BOX_BENCH_PAIRS ?? 15)
const before = process.env.BOX_BENCH_BEFORE
const after = process.env.BOX_BENCH_AFTER ?? PROJECT_ROOT
if (!before) throw new Error('set BOX_BENCH_BEFORE to a checkout of box with dist/ built')
const dir = await mkdtemp(join(tmpdir(), 'box-bench-add-startup-'))

/** One `box add` by `checkout`: wall and CPU seconds (user + system). */
async function addOnce(checkout: string, box: string, run: string): Promise<{wall: number; cpu: number}> {
  const dataDir = join(dir, `data-${run}`)
  const times = join(dir, 'time.txt')
  const start = performance.now()
  await execa(
    '/usr/bin/time',
    ['-f', '%U %S', '-o', times, join(checkout, 'bin', 'box'), 'add', 'small', box, '--no-convert'],
    {env: {...process.env, BOX_DATA_DIR: dataDir, BOX_CACHE_DIR: join(dir, 'cache')}, stdout: 'ignore'},
  )
  const wall = (performance.now() - start) / 1000
  const [user, system] = (await readFile(times, 'utf8')).trim().split('\n').at(-1)!.split(' ').map(Number)
  await rm(dataDir, {recursive: true, force: true})
  return {wall, cpu: user! + system!}
}

/** Modules under node_modules/got/ that `box add` of a local file resolves, by a resolve hook in its process. */
async function gotModulesLoaded(checkout: string, box: string): Promise<number> {
  const log = join(dir, 'resolved.txt')
  await writeFile(log, '')
  const hooks = join(dir, 'hooks.mjs')
  await writeFile(
    hooks,
    `import {appendFileSync} from 'node:fs'
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context)
  if (result.url.includes('/node_modules/got/')) appendFileSync(${JSON.stringify(log)}, result.url + '\\n')
  return result
}
`,
  )
  const register = join(dir, 'register.mjs')
  await writeFile(
    register,
    `import {register} from 'node:module'\nregister(${JSON.stringify(pathToFileURL(hooks).href)})\n`,
  )
  await execa(
    'node',
    ['--import', pathToFileURL(register).href, join(checkout, 'bin', 'run.js'), 'add', 'small', box, '--no-convert'],
    {
      env: {...process.env, BOX_DATA_DIR: join(dir, 'data-hook'), BOX_CACHE_DIR: join(dir, 'cache')},
      stdout: 'ignore',
    },
  )
  await rm(join(dir, 'data-hook'), {recursive: true, force: true})
  return (await readFile(log, 'utf8')).split('\n').filter(Boolean).length
}

try {
  console.log(`load before: ${loadAverages()}`)
  const box = await makeBoxFile(dir, {metadata: {provider: 'qemu'}, imageBytes: 64 * 1024})
  // A first run each, untimed: the page cache holds both builds from here on.
  await addOnce(before, box, 'warm-a')
  await addOnce(after, box, 'warm-b')
  const runs = {before: [] as Array<{wall: number; cpu: number}>, after: [] as Array<{wall: number; cpu: number}>}
  for (let i = 0; i < pairs; i++) {
    runs.before.push(await addOnce(before, box, `a${i}`))
    runs.after.push(await addOnce(after, box, `b${i}`))
  }
  const summary = (name: string, list: Array<{wall: number; cpu: number}>) =>
    `${name}: median wall ${median(list.map((r) => r.wall)).toFixed(3)} s, CPU ${median(list.map((r) => r.cpu)).toFixed(3)} s`
  console.log(`box add of a local ${box} (64 KiB image), ${pairs} pairs`)
  console.log(`  ${summary(`before (${before})`, runs.before)}`)
  console.log(`  ${summary(`after  (${after})`, runs.after)}`)
  const ratio = (key: 'wall' | 'cpu') => median(runs.after.map((r) => r[key])) / median(runs.before.map((r) => r[key]))
  console.log(`  after/before: wall ${ratio('wall').toFixed(2)}, CPU ${ratio('cpu').toFixed(2)}`)
  console.log(
    `  got modules resolved by box add of a local file: before ${await gotModulesLoaded(before, box)}, after ${await gotModulesLoaded(after, box)}`,
  )
  console.log(`load after: ${loadAverages()}`)
} finally {
  await rm(dir, {recursive: true, force: true})
}
