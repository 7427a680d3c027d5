import {mkdir, mkdtemp, readFile, rm, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {boxfileCachePath, loadProjectBoxfile} from '../../src/lib/machine/project.js'

let dir: string
let file: string
const load = (version = '1.0.0') => loadProjectBoxfile({cwd: dir, version})

/** Change what the cache holds, so a test can tell a cached answer from a parsed one. */
async function tamperCache(cpus: number): Promise<void> {
  const cache = boxfileCachePath(dir)
  const entry = JSON.parse(await readFile(cache, 'utf8'))
  entry.boxfile.machines[0].cpus = cpus
  await writeFile(cache, JSON.stringify(entry))
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'box-project-'))
  file = join(dir, 'Boxfile')
  await writeFile(join(dir, 'setup.sh'), 'echo hi\n')
  await writeFile(file, 'box: b\ncpus: 3\nprovisioners:\n  - {type: shell, path: setup.sh}\n')
})
afterEach(async () => {
  await rm(dir, {recursive: true, force: true})
})

describe('the resolved Boxfile cached in .box/', () => {
  it('answers from the cache while the Boxfile is unchanged', async () => {
    const first = await load()
    expect(first.machines[0]).toMatchObject({name: 'default', cpus: 3, provisioners: [{path: join(dir, 'setup.sh')}]})
    await tamperCache(7)
    expect((await load()).machines[0]!.cpus).toBe(7)
  })

  it('parses again when the Boxfile changes, even to the same size', async () => {
    await load()
    await writeFile(file, 'box: b\ncpus: 4\nprovisioners:\n  - {type: shell, path: setup.sh}\n')
    // A second edit within the file system's mtime resolution would keep the mtime: make it differ.
    await utimes(file, new Date(), new Date(Date.now() + 5000))
    expect((await load()).machines[0]!.cpus).toBe(4)
  })

  it('parses again for another box version', async () => {
    await load('1.0.0')
    await tamperCache(7)
    expect((await load('1.0.1')).machines[0]!.cpus).toBe(3)
  })

  it('reports a script that went away as the parser does, with file:line:col', async () => {
    await load()
    await rm(join(dir, 'setup.sh'))
    await expect(load()).rejects.toThrow(`${file}:4:25: provisioners.0.path: no such file: ${join(dir, 'setup.sh')}`)
  })

  it('reports Boxfile errors with their position, and never caches them', async () => {
    await writeFile(file, 'box: b\ncpus: many\n')
    await expect(load()).rejects.toThrow(`${file}:2:7: cpus: must be a whole number of CPUs, at least 1`)
    await expect(load()).rejects.toThrow(`${file}:2:7`)
  })

  it('ignores a cache file it cannot read', async () => {
    await mkdir(join(dir, '.box'), {recursive: true})
    await writeFile(boxfileCachePath(dir), '{not json')
    expect((await load()).machines[0]!.cpus).toBe(3)
  })
})
