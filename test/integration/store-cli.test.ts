/**
 * `box add`, `box list`, `box remove` as users run them: the built CLI (dist/, which
 * `npm test` builds first) in a child process with BOX_DATA_DIR pointing at a temp dir.
 */
import {mkdir, readdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {registerMachine} from '../../src/lib/store/machine-index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'

let dir: string
let dataDir: string
let cleanup: () => Promise<void>

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-cli-'))
  dataDir = join(dir, 'data')
})
afterEach(async () => {
  await cleanup()
})

/** BOX_TEST_CLI may point at another build's bin/run.js (a private copy while others rebuild dist/). */
const CLI = process.env.BOX_TEST_CLI ?? join(PROJECT_ROOT, 'bin', 'run.js')

async function box(...args: string[]) {
  return boxWithInput(undefined, ...args)
}

async function boxWithInput(input: string | undefined, ...args: string[]) {
  const result = await execa('node', [CLI, ...args], {
    reject: false,
    env: {BOX_DATA_DIR: dataDir, BOX_CACHE_DIR: join(dir, 'cache'), NO_COLOR: '1'},
    ...(input === undefined ? {stdin: 'ignore' as const} : {input}),
    timeout: 60_000,
  })
  return {exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr)}
}

/** `box list --json`, parsed; fails the test with box's stderr when the command fails. */
async function listJson(): Promise<Array<Record<string, unknown>>> {
  const result = await box('list', '--json')
  expect(result.exitCode, result.stderr).toBe(0)
  return JSON.parse(result.stdout) as Array<Record<string, unknown>>
}

describe('box add / list / remove', () => {
  it('an empty store says how to add a box; --json gives []', async () => {
    const plain = await box('list')
    expect(plain.exitCode, plain.stderr).toBe(0)
    expect(plain.stdout.trim()).toBe('There are no boxes installed. Add one with: box add NAME FILE')
    const json = await box('list', '--json')
    expect(json.exitCode, json.stderr).toBe(0)
    expect(JSON.parse(json.stdout)).toEqual([])
  })

  it('adds, lists (table and --json), refuses a duplicate, removes', async () => {
    const file = await makeBoxFile(dir, {
      metadata: {provider: 'qemu', format: 'qcow2', box: {version: '1.2.0', user: 'box'}},
      compression: 'zstd',
    })

    const added = await box('add', 'org/worker', file)
    expect(added.exitCode, added.stderr).toBe(0)
    expect(added.stdout).toMatch(/^Added box org\/worker 1\.2\.0 \(qemu\), \d+(\.\d)? KB$/m)
    expect(added.stderr).toMatch(/Extracting org\/worker/)
    // A local file gets no byte counter (it showed "0 B of 117 MB" and nothing more).
    expect(added.stderr).not.toMatch(/ of \d/)
    expect(added.stderr).toMatch(/✔ Extracting org\/worker \(\d/)

    const addedJson = await box('add', 'other', file, '--box-version', '0.1', '--json')
    expect(addedJson.exitCode, addedJson.stderr).toBe(0)
    expect(JSON.parse(addedJson.stdout)).toMatchObject({name: 'other', version: '0.1', provider: 'qemu'})

    const table = await box('list')
    expect(table.exitCode, table.stderr).toBe(0)
    const lines = table.stdout.trim().split('\n')
    expect(lines[0]).toMatch(/^NAME\s+VERSION\s+PROVIDER\s+SIZE$/)
    expect(lines.slice(1).map((line) => line.split(/\s+/).slice(0, 3))).toEqual([
      ['org/worker', '1.2.0', 'qemu'],
      ['other', '0.1', 'qemu'],
    ])

    const listed = await listJson()
    expect(listed.map((entry) => entry.name)).toEqual(['org/worker', 'other'])
    expect(listed[0]).toMatchObject({
      version: '1.2.0',
      provider: 'qemu',
      path: join(dataDir, 'boxes', 'org-VAGRANTSLASH-worker', '1.2.0', 'qemu'),
    })
    expect(listed[0].size).toBeGreaterThan(0)

    const duplicate = await box('add', 'org/worker', file)
    expect(duplicate.exitCode, duplicate.stderr).toBe(1)
    expect(duplicate.stderr).toContain('Error: box org/worker 1.2.0 (qemu) is already installed')
    expect(duplicate.stderr).toContain('--force')
    const forced = await box('add', 'org/worker', file, '--force')
    expect(forced.exitCode, forced.stderr).toBe(0)

    const removed = await box('remove', 'org/worker')
    expect(removed.exitCode, removed.stderr).toBe(0)
    expect(removed.stdout.trim()).toBe('Removed box org/worker 1.2.0 (qemu)')
    expect((await listJson()).map((entry) => entry.name)).toEqual(['other'])
  })

  it('bad input: missing file, bad name, not a box, missing argument', async () => {
    const missing = await box('add', 'x', join(dir, 'nope.box'))
    expect(missing.exitCode, missing.stderr).toBe(2)
    // The message is the source resolver's (a path may also be a catalog or a URL).
    expect(missing.stderr).toContain(join(dir, 'nope.box'))

    const file = await makeBoxFile(dir)
    const badName = await box('add', '../escape', file)
    expect(badName.exitCode, badName.stderr).toBe(2)
    expect(badName.stderr).toContain('invalid box name "../escape"')

    const noMetadata = await makeBoxFile(dir, {metadata: null})
    const notABox = await box('add', 'x', noMetadata)
    expect(notABox.exitCode, notABox.stderr).toBe(2)
    expect(notABox.stderr).toContain('it has no metadata.json')

    const jsonError = await box('add', 'x', noMetadata, '--json')
    expect(jsonError.exitCode, jsonError.stderr).toBe(2)
    expect(JSON.parse(jsonError.stdout).error.message).toContain('it has no metadata.json')

    expect((await box('add', 'x')).exitCode).not.toBe(0)
    expect(await readdir(join(dataDir, 'boxes'))).toEqual([])
  })

  it('never takes a missing argument from piped stdin (it may be a password or a script)', async () => {
    const file = await makeBoxFile(dir)
    expect((await box('add', 'demo', file)).exitCode).toBe(0)
    const removal = await boxWithInput('demo\n', 'remove')
    expect(removal.exitCode).toBe(2)
    expect(removal.stderr).toMatch(/Missing 1 required arg/)
    expect((await listJson()).map((entry) => entry.name)).toEqual(['demo'])
  })

  it('remove is refused while a machine uses the box, naming the machine', async () => {
    const file = await makeBoxFile(dir)
    const added = await box('add', 'worker', file, '--box-version', '3')
    expect(added.exitCode, added.stderr).toBe(0)
    const projectDir = join(dir, 'project')
    const stateDir = join(projectDir, '.box', 'default')
    await mkdir(stateDir, {recursive: true})
    await registerMachine(dataDir, {
      id: 'abc123',
      name: 'default',
      projectDir,
      stateDir,
      provider: 'qemu',
      box: {name: 'worker', version: '3', provider: 'qemu'},
    })

    const refused = await box('remove', 'worker')
    expect(refused.exitCode, refused.stderr).toBe(1)
    expect(refused.stderr).toContain('Error: cannot remove worker: a machine uses it')
    expect(refused.stderr).toContain(`default in ${projectDir} (id abc123) uses worker 3 (qemu)`)
    expect(await listJson()).toHaveLength(1)

    const notInstalled = await box('remove', 'ghost')
    expect(notInstalled.exitCode, notInstalled.stderr).toBe(2)
    expect(notInstalled.stderr).toContain('box ghost is not installed')
  })

  it('Ctrl-C during add exits 130 and leaves nothing in the store', async () => {
    // 1 GiB of zeros: a tiny zstd file whose extraction takes a few seconds.
    const source = join(dir, 'src')
    await mkdir(source)
    await writeFile(join(source, 'metadata.json'), '{"provider":"qemu"}')
    await writeFile(join(source, 'box.img'), 'disk')
    await execa('truncate', ['-s', '1G', join(source, 'big.img')])
    const file = join(dir, 'slow.box')
    await execa('tar', ['--zstd', '-cf', file, '-C', source, 'metadata.json', 'box.img', 'big.img'])

    const child = execa('node', [CLI, 'add', 'slow', file], {
      reject: false,
      env: {BOX_DATA_DIR: dataDir, NO_COLOR: '1'},
      stdin: 'ignore',
    })
    let stderr = ''
    await new Promise<void>((started, failed) => {
      child.stderr?.on('data', (chunk: Buffer) => {
        stderr += String(chunk)
        if (stderr.includes('Extracting slow')) started()
      })
      child.once('exit', () => failed(new Error(`box add ended before extracting:\n${stderr}`)))
    })
    child.kill('SIGINT')
    const result = await child
    expect(result.exitCode, String(result.stderr)).toBe(130)
    expect(String(result.stderr)).toContain('interrupted (SIGINT)')
    expect(await readdir(join(dataDir, 'boxes'))).toEqual([])
  })

  it('two adds of the same box at once: one installs it, the other says it is installed; one copy, no scratch left', async () => {
    const file = await makeBoxFile(dir, {imageBytes: 8 * 1024 * 1024})
    const results = await Promise.all([box('add', 'twice', file), box('add', 'twice', file)])
    const codes = results.map((result) => result.exitCode).sort()
    expect(codes, results.map((result) => result.stderr).join('\n')).toEqual([0, 1])
    const loser = results.find((result) => result.exitCode === 1)!
    expect(loser.stderr).toMatch(/box twice 0 \(qemu\) is already installed/)
    expect(await listJson()).toEqual([expect.objectContaining({name: 'twice', version: '0', provider: 'qemu'})])
    expect(await readdir(join(dataDir, 'boxes'))).toEqual(['twice'])
  })

  it.runIf(process.getuid?.() === 0)(
    "the store's disk full during add: a box too big is refused before writing, a disk that fills mid-way is reported; nothing left",
    async () => {
      await mkdir(dataDir)
      await execa('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', dataDir])
      try {
        const free = async () => Number((await execa('df', ['--output=avail', '-B1', dataDir])).stdout.split('\n')[1])
        const freeBefore = await free()
        // Bigger than the disk: the sizes in the tar headers say so before a byte is written.
        const big = await makeBoxFile(dir, {imageBytes: 6 * 1024 * 1024})
        const tooBig = await box('add', 'big', big)
        expect(tooBig.exitCode).toBe(1)
        expect(tooBig.stderr).toMatch(/more than the .* left free in/)
        expect(await readdir(join(dataDir, 'boxes'))).toEqual([])
        // Small in bytes, big on the disk: 2000 one-byte files take a 4 KiB page each, and the disk fills while writing.
        const source = join(dir, 'many')
        await mkdir(join(source, 'files'), {recursive: true})
        await writeFile(join(source, 'metadata.json'), '{"provider":"qemu"}')
        await writeFile(join(source, 'box.img'), 'disk')
        await Promise.all(Array.from({length: 2000}, (_, i) => writeFile(join(source, 'files', `f${i}`), 'x')))
        const many = join(dir, 'many.box')
        await execa('tar', ['-czf', many, '-C', source, 'metadata.json', 'box.img', 'files'])
        const filled = await box('add', 'many', many)
        expect(filled.exitCode).toBe(1)
        expect(filled.stderr).toMatch(/no space left on the device/)
        expect(filled.stderr).not.toMatch(/bug in box/i)
        expect(await readdir(join(dataDir, 'boxes'))).toEqual([])
        expect(await free()).toBe(freeBefore)
      } finally {
        await execa('umount', [dataDir], {reject: false})
      }
    },
  )

  it('remove with several versions needs --box-version or --all', async () => {
    const file = await makeBoxFile(dir)
    for (const version of ['1', '2']) {
      const added = await box('add', 'multi', file, '--box-version', version)
      expect(added.exitCode, added.stderr).toBe(0)
    }
    const ambiguous = await box('remove', 'multi')
    expect(ambiguous.exitCode, ambiguous.stderr).toBe(2)
    expect(ambiguous.stderr).toContain('multi has 2 matching versions/providers installed')
    const all = await box('remove', 'multi', '--all', '--json')
    expect(all.exitCode, all.stderr).toBe(0)
    expect(JSON.parse(all.stdout).map((entry: {version: string}) => entry.version)).toEqual(['2', '1'])
  })
})
