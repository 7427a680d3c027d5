/**
 * The built box's cache key (fullRecipeHash) follows what lands in the image: a guest payload
 * file or any module the builder reaches by import changes it; a command, a provider the builder
 * does not use, a test or a document does not. Run on a copy of the tree (src/ and dist/), so
 * edits never touch the checkout.
 */
import {appendFile, cp, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, relative} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {builderModules, fullRecipeHash} from '../../src/builder/index.js'
import {loadRecipe} from '../../src/builder/recipe.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

const MIRROR = 'http://deb.debian.org/debian'

let root: string

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'box-cache-key-'))
  for (const dir of ['src', 'dist', 'initramfs', 'provisioners', 'static', 'boxes', 'test', 'README.md']) {
    await cp(join(PROJECT_ROOT, dir), join(root, dir), {recursive: true}).catch((error: NodeJS.ErrnoException) => {
      throw new Error(
        error.code === 'ENOENT' && dir === 'dist' ? 'dist/ is missing: run `npm run build` first' : error.message,
      )
    })
  }
})
afterAll(async () => {
  await rm(root, {recursive: true, force: true})
})

async function key(): Promise<string> {
  return fullRecipeHash(await loadRecipe(join(root, 'boxes', 'debian-bookworm')), MIRROR, root)
}

/** The key after appending a line to `path` (relative to the copy), with the file restored after. */
async function keyWithEdit(path: string): Promise<string> {
  const file = join(root, path)
  const original = await readFile(file)
  await appendFile(file, '\n# edited\n')
  try {
    return await key()
  } finally {
    await writeFile(file, original)
  }
}

/** The module (under `base`) that holds the guest agent's protocol version, wherever the layout puts it. */
async function agentProtocolModule(base: 'src' | 'dist'): Promise<string> {
  for (const file of await builderModules(root)) {
    if ((await readFile(file, 'utf8')).includes('export const AGENT_PROTOCOL')) return relative(root, file)
  }
  throw new Error(`no module reachable from ${base}/builder exports AGENT_PROTOCOL`)
}

describe('box cache key from src/', () => {
  it('is stable for an unchanged tree', async () => {
    expect(await key()).toBe(await key())
  })

  it('changes with a guest payload file and with a module the builder imports', async () => {
    const before = await key()
    for (const path of [
      'provisioners/box-agent',
      'initramfs/hooks/resnap',
      'src/builder/configure.ts',
      'src/lib/core/errors.ts', // reached through every builder module
      await agentProtocolModule('src'), // the guest contract the image is built against
    ]) {
      expect(await keyWithEdit(path), path).not.toBe(before)
    }
  })

  it('does not change with files that do not reach the image', async () => {
    const before = await key()
    for (const path of [
      'src/commands/up.ts',
      'src/commands/build.ts', // imports the builder, but the builder does not import it
      'src/providers/virtualbox/index.ts',
      'test/unit/recipe.test.ts',
      'README.md',
      'dist/lib/core/errors.js', // src/ is the truth while it exists: bin/box and the tests agree
    ]) {
      expect(await keyWithEdit(path), path).toBe(before)
    }
  })

  it('follows static, multi-line, dynamic and re-export imports, and not `import type` (erased)', async () => {
    const entry = join(root, 'src', 'builder', 'index.ts')
    const original = await readFile(entry, 'utf8')
    const probes = ['typed', 'named', 'multiline', 'dynamic', 'reexport']
    for (const name of probes)
      await writeFile(join(root, 'src', 'lib', 'core', `probe-${name}.ts`), `export type T = 1\nexport const v = 1\n`)
    await writeFile(
      entry,
      [
        `import type {T} from '../lib/core/probe-typed.js'`,
        `export type {T as Local}`, // a type-only statement right before an import must not hide it
        `import {v} from '../lib/core/probe-named.js'`,
        `import {\n  v as w,\n} from '../lib/core/probe-multiline.js'`,
        `const lazy = () => import('../lib/core/probe-dynamic.js')`,
        `export {v as u} from '../lib/core/probe-reexport.js'`,
        original,
      ].join('\n'),
    )
    try {
      const modules = (await builderModules(root)).map((file) => relative(root, file))
      const reached = probes.filter((name) => modules.includes(`src/lib/core/probe-${name}.ts`))
      expect(reached).toEqual(['named', 'multiline', 'dynamic', 'reexport'])
      expect(modules).toContain('src/lib/core/errors.ts')
      expect(modules).not.toContain('src/commands/build.ts')
    } finally {
      await writeFile(entry, original)
      for (const name of probes) await rm(join(root, 'src', 'lib', 'core', `probe-${name}.ts`))
    }
  })
})

describe('box cache key from dist/ (an installed box, no src/)', () => {
  let srcModules: string[]

  beforeAll(async () => {
    srcModules = (await builderModules(root)).map((file) => relative(join(root, 'src'), file).replace(/\.ts$/, ''))
    await rm(join(root, 'src'), {recursive: true})
  })

  it('reaches the same modules as from src/', async () => {
    const distModules = (await builderModules(root)).map((file) =>
      relative(join(root, 'dist'), file).replace(/\.js$/, ''),
    )
    expect(distModules).toEqual(srcModules)
  })

  it('changes with a built module the builder imports, not with a built command', async () => {
    const before = await key()
    expect(await keyWithEdit('dist/lib/core/errors.js')).not.toBe(before)
    expect(await keyWithEdit(await agentProtocolModule('dist'))).not.toBe(before)
    expect(await keyWithEdit('dist/commands/up.js')).toBe(before)
  })
})
