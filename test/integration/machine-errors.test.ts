import {mkdir, open, readdir, rm, symlink, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {writeBoxArchive} from '../../src/lib/box/archive.js'
import {findOnPath} from '../../src/lib/core/exec.js'
import {makeTempDir} from '../fixtures/boxes.js'
import {box, type CliEnv} from '../support/cli.js'

/** The machine commands' bad input, none of which needs a guest to boot. */
describe('machine commands: bad input', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let env: CliEnv

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-machine-errors-'))
    env = {cwd: join(dir, 'project'), dataDir: join(dir, 'data'), cacheDir: join(dir, 'cache')}
    await mkdir(env.cwd)
    // A small but real box: a qcow2 image and Vagrant libvirt metadata.
    const source = join(dir, 'source')
    await mkdir(source)
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(source, 'box.img'), '64M'])
    await writeFile(
      join(source, 'metadata.json'),
      JSON.stringify({provider: 'libvirt', format: 'qcow2', virtual_size: 1}),
    )
    await writeBoxArchive({
      sourceDir: source,
      entries: ['metadata.json', 'box.img'],
      output: join(dir, 'tiny.box'),
      compression: 'gzip',
    })
    expect((await box(env, ['add', 'tiny', join(dir, 'tiny.box')])).exitCode).toBe(0)
  })

  afterAll(async () => {
    await cleanup?.()
  })

  it('no Boxfile: exit 2, says how to make one', async () => {
    const result = await box(env, ['up'])
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toMatch(/no Boxfile found in .*; create one with: box init BOX/)
  })

  it('an unknown machine name lists the known ones', async () => {
    await writeFile(join(env.cwd, 'Boxfile'), 'box: tiny\nmachines:\n  web: {}\n  db: {}\n')
    const result = await box(env, ['status', 'cache'])
    expect(result.exitCode).not.toBe(0)
    expect(result.stderr).toMatch(/cache/)
    expect(result.stderr).toMatch(/web/)
    expect(result.stderr).toMatch(/db/)
  })

  it('a box that is not installed: says how to add it', async () => {
    await writeFile(join(env.cwd, 'Boxfile'), 'box: absent\n')
    const result = await box(env, ['up'])
    expect(result.exitCode).toBe(1)
    expect(result.stderr).toMatch(/box absent is not installed/)
    expect(result.stderr).toMatch(/box add absent/)
  })

  it('ssh and provision on a machine never started say to start it', async () => {
    await writeFile(join(env.cwd, 'Boxfile'), 'box: tiny\n')
    for (const command of [
      ['ssh', '-c', 'true'],
      ['provision'],
      ['rsync'],
      ['port'],
      ['upload', 'Boxfile'],
      ['download', '/etc/hostname'],
    ]) {
      const result = await box(env, command)
      expect(result.exitCode, command.join(' ')).toBe(1)
      expect(result.stderr).toMatch(/machine default is not running[\s\S]*box up/)
    }
  })

  it('box ssh and box status say the same through their fast path as through oclif', async () => {
    // --no-color is not a fast-path flag: the same command then runs through oclif.
    const both = async (boxfile: string | undefined, args: string[]) => {
      if (boxfile === undefined) await rm(join(env.cwd, 'Boxfile'), {force: true})
      else await writeFile(join(env.cwd, 'Boxfile'), boxfile)
      const [fast, oclif] = [await box(env, args), await box(env, [...args, '--no-color'])]
      expect({exitCode: fast.exitCode, stdout: fast.stdout, stderr: fast.stderr}, args.join(' ')).toEqual({
        exitCode: oclif.exitCode,
        stdout: oclif.stdout,
        stderr: oclif.stderr,
      })
      return fast
    }
    expect((await both(undefined, ['status'])).exitCode).toBe(2)
    expect((await both(undefined, ['status', '--json'])).stdout).toMatch(/"message": "no Boxfile found/)
    expect((await both('box: tiny\nmachines:\n  web: {}\n  db: {}\n', ['status', 'db', 'web'])).stdout).toMatch(
      /^db +not_created\nweb +not_created$/,
    )
    expect(JSON.parse((await both('box: tiny\n', ['status', '--json'])).stdout)).toEqual([
      expect.objectContaining({name: 'default', state: 'not_created'}),
    ])
    expect((await both('box: tiny\nmachines:\n  web: {}\n  db: {}\n', ['ssh', '-c', 'true'])).stderr).toMatch(
      /box ssh needs one machine/,
    )
    expect((await both('box: tiny\n', ['ssh', '--', 'true'])).stderr).toMatch(/machine default is not running/)
    expect((await both('box: tiny\nmemory: lots\n', ['status'])).stderr).toMatch(/Boxfile:2:9/)
    await writeFile(join(env.cwd, 'Boxfile'), 'box: tiny\n') // as the tests below expect
  })

  it('port, upload and download: one machine, real words, a source that exists', async () => {
    await writeFile(join(env.cwd, 'Boxfile'), 'box: tiny\nmachines:\n  web: {}\n  db: {}\n')
    for (const command of [['port'], ['upload', 'Boxfile'], ['download', '/etc/hostname']]) {
      const result = await box(env, command)
      expect(result.exitCode, command.join(' ')).toBe(2)
      expect(result.stderr).toMatch(new RegExp(`box ${command[0]} needs one machine; this Boxfile has web, db`))
    }
    expect((await box(env, ['port', 'cache'])).stderr).toMatch(/unknown machine "cache"/)
    expect((await box(env, ['port', 'web', '--guest', '0'])).exitCode).toBe(2)
    const tooMany = await box(env, ['upload', 'web', 'a', 'b', 'c'])
    expect(tooMany.exitCode).toBe(2)
    await writeFile(join(env.cwd, 'Boxfile'), 'box: tiny\n')
    // The source is checked before the machine is reached: a missing one is named, whatever state the machine is in.
    const missing = await box(env, ['upload', 'no-such-file', '/tmp/'])
    expect(missing.exitCode).toBe(2)
    expect(missing.stderr).toMatch(/upload source no-such-file does not exist/)
    const stdinWithoutDestination = await box(env, ['upload', '-'])
    expect(stdinWithoutDestination.exitCode).toBe(2)
    expect(stdinWithoutDestination.stderr).toMatch(/box upload - needs a destination/)
  })

  it('destroy without -f and without a terminal refuses instead of hanging', async () => {
    const result = await box(env, ['destroy'])
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toMatch(/pass -f/)
  })

  it('qemu missing: names the Debian package to install, and leaves no machine running', async () => {
    // A PATH with every tool box needs except the QEMU system emulator.
    const bin = join(dir, 'bin')
    await mkdir(bin)
    for (const tool of ['node', 'qemu-img', 'ssh', 'ssh-keygen'])
      await symlink((await findOnPath(tool))!, join(bin, tool))
    const result = await execa(join(bin, 'node'), [join(process.cwd(), 'bin', 'run.js'), 'up'], {
      cwd: env.cwd,
      reject: false,
      stdin: 'ignore',
      env: {PATH: bin, BOX_DATA_DIR: env.dataDir, BOX_CACHE_DIR: join(dir, 'empty-cache')},
      extendEnv: false,
    })
    expect(result.exitCode).toBe(1)
    expect(result.stderr).toMatch(/qemu-system-x86_64 is not installed/)
    expect(result.stderr).toMatch(/apt-get install qemu-system-x86/)
    expect(JSON.parse((await box(env, ['status', '--json'])).stdout)[0].state).toBe('poweroff')
  })

  it('a corrupt qcow2 in the store: up names the image and how to replace the box, and makes no machine', async () => {
    expect((await box(env, ['add', 'broken', join(dir, 'tiny.box')])).exitCode).toBe(0)
    const image = join(env.dataDir, 'boxes', 'broken', '0', 'libvirt', 'box.img')
    // A bad copy or a disk error: the header's first sector overwritten.
    const handle = await open(image, 'r+')
    await handle.write(Buffer.alloc(512, 0x5a), 0, 512, 0)
    await handle.close()
    const project = join(dir, 'broken-project')
    await mkdir(project)
    await writeFile(join(project, 'Boxfile'), 'box: broken\n')
    const here = {...env, cwd: project}
    const result = await box(here, ['up'])
    expect(result.exitCode).toBe(1)
    expect(result.stderr).toContain(image)
    expect(result.stderr).toMatch(/cannot be read: it is damaged or not a qcow2 image/)
    expect(result.stderr).toContain('box add --force')
    expect(JSON.parse((await box(here, ['status', '--json'])).stdout)[0].state).toBe('not_created')
    const {stdout} = await execa('ps', ['-eo', 'args='])
    expect(stdout).not.toContain(project)
  })

  it.runIf(process.getuid?.() === 0)(
    "the project's disk full during up: a clear error, no QEMU, no half-made machine",
    async () => {
      const project = join(dir, 'full-project')
      await mkdir(project)
      await execa('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', project])
      try {
        await writeFile(join(project, 'Boxfile'), 'box: tiny\n')
        const here = {...env, cwd: project}
        const result = await box(here, ['up'])
        expect(result.exitCode).toBe(1)
        expect(result.stderr).toMatch(/no space left on device/i)
        expect(result.stderr).not.toMatch(/bug in box/i)
        const {stdout} = await execa('ps', ['-eo', 'args='])
        expect(stdout).not.toContain(project)
        const status = await box(here, ['status', '--json'])
        expect(status.exitCode, status.stderr).toBe(0)
        expect(JSON.parse(status.stdout)[0].state).toMatch(/^(not_created|poweroff)$/)
        // No disk and no record left to be taken for a machine (the key pair may stay, for the next up).
        const left = await readdir(join(project, '.box', 'machines', 'default')).catch(() => [])
        expect(left).not.toContain('disk.qcow2')
        expect(left).not.toContain('machine.json')
      } finally {
        await execa('umount', [project], {reject: false})
      }
    },
  )
})
