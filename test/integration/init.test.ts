import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

/** `box init` and `box validate` as users run them: the built CLI in a temp project directory. */

const BIN = join(PROJECT_ROOT, 'bin', 'run.js')
let dir: string

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'box-init-'))
})
afterEach(async () => {
  await rm(dir, {recursive: true, force: true})
})

function box(args: string[], cwd = dir, env: Record<string, string> = {}) {
  const {BOX_BOXFILE: _ignored, ...inherited} = process.env
  return execa('node', [BIN, ...args], {
    cwd,
    reject: false,
    env: {...inherited, NO_COLOR: '1', ...env},
    extendEnv: false,
  })
}

describe('box init', () => {
  it('writes a commented Boxfile with the worker defaults that box validate accepts', async () => {
    const init = await box(['init', 'org/worker', '--box-url', 'https://example.org/worker.json'])
    expect(init.exitCode).toBe(0)
    expect(init.stdout).toContain(`Wrote ${join(dir, 'Boxfile')}`)
    const text = await readFile(join(dir, 'Boxfile'), 'utf8')
    expect(text).toMatch(/^# /)
    expect(text).toMatch(/^box: org\/worker$/m)
    expect(text).toMatch(/^box_url: "https:\/\/example.org\/worker.json"$/m)
    expect(text).toMatch(/^resnap: always$/m)

    const validate = await box(['validate'])
    expect(validate.stderr).not.toContain('Error')
    expect(validate.stdout.trim()).toBe('Boxfile is valid: 1 machine(s): default')
    expect(validate.exitCode).toBe(0)
  })

  it('uses the reference box when given none', async () => {
    expect((await box(['init'])).exitCode).toBe(0)
    expect(await readFile(join(dir, 'Boxfile'), 'utf8')).toMatch(/^box: debian-bookworm$/m)
  })

  it('refuses to overwrite a Boxfile unless --force', async () => {
    await writeFile(join(dir, 'Boxfile'), 'box: mine\n')
    const refused = await box(['init', 'other'])
    expect(refused.exitCode).toBe(2)
    expect(refused.stderr).toContain(`${join(dir, 'Boxfile')} already exists; not overwriting it`)
    expect(refused.stderr).toContain('box init --force')
    expect(await readFile(join(dir, 'Boxfile'), 'utf8')).toBe('box: mine\n')

    const forced = await box(['init', 'other', '--force', '--minimal'])
    expect(forced.exitCode).toBe(0)
    expect(await readFile(join(dir, 'Boxfile'), 'utf8')).toBe('box: other\n')
  })

  it('rejects a bad box name and --box-url without a name, writing nothing', async () => {
    const badName = await box(['init', 'two words'])
    expect(badName.exitCode).toBe(2)
    expect(badName.stderr).toContain('invalid box name "two words"')
    const noName = await box(['init', '--box-url', 'x.box'])
    expect(noName.exitCode).toBe(2)
    expect(noName.stderr).toContain('--box-url needs a BOX name')
    await expect(readFile(join(dir, 'Boxfile'))).rejects.toThrow(/ENOENT/)
  })

  it('writes to BOX_BOXFILE when it is set', async () => {
    expect((await box(['init', 'w', '--minimal'], dir, {BOX_BOXFILE: 'Boxfile.workers'})).exitCode).toBe(0)
    expect(await readFile(join(dir, 'Boxfile.workers'), 'utf8')).toBe('box: w\n')
    const validate = await box(['validate'], dir, {BOX_BOXFILE: 'Boxfile.workers'})
    expect(validate.stdout.trim()).toBe('Boxfile is valid: 1 machine(s): default')
  })
})

describe('box validate', () => {
  it('lists the machines of a valid Boxfile, from a subdirectory too, and as JSON', async () => {
    await writeFile(
      join(dir, 'Boxfile'),
      ['box: b', 'machines:', '  worker:', '    memory: 2G', '  director:', ''].join('\n'),
    )
    await mkdir(join(dir, 'sub'))
    const validate = await box(['validate'], join(dir, 'sub'))
    expect(validate.exitCode).toBe(0)
    expect(validate.stdout.trim()).toBe('Boxfile is valid: 2 machine(s): worker, director')

    const json = await box(['validate', '--json'])
    expect(json.exitCode).toBe(0)
    const result = JSON.parse(json.stdout)
    expect(result).toMatchObject({valid: true, file: join(dir, 'Boxfile')})
    expect(result.machines.map((m: {name: string; memoryMiB: number}) => [m.name, m.memoryMiB])).toEqual([
      ['worker', 2048],
      ['director', 1024],
    ])
  })

  it('exits 2 and prints every problem as file:line:col: field: message', async () => {
    const file = join(dir, 'Boxfile')
    await writeFile(
      file,
      ['box: b', 'provider: libvirt', 'forwarded_ports:', '  - {guest: 80, host: 99999}', ''].join('\n'),
    )
    const validate = await box(['validate'])
    expect(validate.exitCode).toBe(2)
    expect(validate.stdout).toBe('')
    expect(validate.stderr).toContain(`Error: invalid Boxfile ${file}:`)
    expect(validate.stderr).toContain(`${file}:2:11: provider: must be one of: qemu, virtualbox`)
    expect(validate.stderr).toContain(`${file}:4:23: forwarded_ports.0.host: must be a port number 1-65535`)

    const json = await box(['validate', '--json'])
    expect(json.exitCode).toBe(2)
    expect(JSON.parse(json.stdout).error).toMatchObject({
      exitCode: 2,
      message: expect.stringContaining(`${file}:2:11: provider:`),
    })
  })

  it('exits 2 and says how to create a Boxfile when there is none', async () => {
    const validate = await box(['validate'])
    expect(validate.exitCode).toBe(2)
    expect(validate.stderr).toContain(`no Boxfile found in ${dir} or its parents; create one with: box init BOX`)
  })
})
