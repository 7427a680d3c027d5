/**
 * Cloud images as boxes, without a guest that gets anywhere: `box add` of bare images
 * (qcow2, raw, and what it refuses), the NoCloud seed as xorriso writes it (read back with
 * xorriso), and the error of a cloud image whose ssh never comes, from a real QEMU that
 * finds nothing to boot. That last test starts QEMU: run this file under
 * `flock /tmp/box-qemu.lock`.
 */
import {mkdir, readdir, readFile, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {cloudSeedFiles, persistentMountScript, SEED_LABEL} from '../../src/lib/box/cloud-init.js'
import {parseBoxfile} from '../../src/lib/boxfile/load.js'
import {BoxError} from '../../src/lib/core/errors.js'
import {createProgress} from '../../src/lib/core/progress.js'
import {writeCloudSeed} from '../../src/lib/machine/cloud-seed.js'
import {CLOUD_INIT_SSH_TIMEOUT, upMachine} from '../../src/lib/machine/up.js'
import {boxesDir} from '../../src/lib/store/layout.js'
import {makeTempDir} from '../fixtures/boxes.js'
import {box, type CliEnv} from '../support/cli.js'

describe('cloud images as boxes', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let env: CliEnv
  /** A raw disk with an MBR partition table and nothing to boot. */
  let rawDisk: string

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-cloud-image-'))
    env = {cwd: join(dir, 'project'), dataDir: join(dir, 'data'), cacheDir: join(dir, 'cache')}
    await mkdir(env.cwd)
    rawDisk = join(dir, 'disk.img')
    await execa('truncate', ['-s', '64M', rawDisk])
    await execa('sfdisk', ['-q', rawDisk], {input: 'label: dos\n,,L\n'})
  })

  afterAll(async () => {
    await cleanup?.()
  })

  const metadataOf = async (name: string) => {
    const listed = await box(env, ['list', '--json'])
    expect(listed.exitCode, listed.stderr).toBe(0)
    const stored = (JSON.parse(listed.stdout) as Array<{name: string; path: string}>).find((b) => b.name === name)
    expect(stored, listed.stdout).toBeDefined()
    return JSON.parse(await readFile(join(stored!.path, 'metadata.json'), 'utf8'))
  }

  it('adds a raw disk image as a qcow2 cloud-init box', async () => {
    const added = await box(env, ['add', 'raw-cloud', rawDisk])
    expect(added.exitCode, added.stderr).toBe(0)
    const metadata = await metadataOf('raw-cloud')
    expect(metadata).toEqual({
      provider: 'qemu',
      format: 'qcow2',
      virtual_size: 1,
      box: {version: '0', user: 'box', kernel_args: '', cloud_init: true},
    })
    const listed = JSON.parse((await box(env, ['list', '--json'])).stdout) as Array<{name: string; path: string}>
    const info = await execa('qemu-img', [
      'info',
      '--output=json',
      join(listed.find((b) => b.name === 'raw-cloud')!.path, 'box.img'),
    ])
    expect(JSON.parse(info.stdout)).toMatchObject({format: 'qcow2', 'virtual-size': 64 * 1024 ** 2})
  })

  it('adds a qcow2 image as it is, under the version given', async () => {
    const qcow2 = join(dir, 'disk.qcow2')
    await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', rawDisk, qcow2])
    const added = await box(env, ['add', 'qcow2-cloud', qcow2, '--box-version', '1.2.0'])
    expect(added.exitCode, added.stderr).toBe(0)
    expect(await metadataOf('qcow2-cloud')).toMatchObject({box: {version: '1.2.0', cloud_init: true}})
  })

  it('refuses a raw image that is not a disk, and stores nothing', async () => {
    const notADisk = join(dir, 'blank.img')
    await execa('truncate', ['-s', '16M', notADisk])
    const before = await readdir(boxesDir(env.dataDir))
    const added = await box(env, ['add', 'blank', notADisk])
    expect(added.exitCode).toBe(2)
    expect(added.stderr).toMatch(/blank\.img is not a disk image: its first sectors hold no partition table/)
    expect(await readdir(boxesDir(env.dataDir))).toEqual(before)
  })

  it('refuses an overlay with a backing file', async () => {
    const overlay = join(dir, 'overlay.qcow2')
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', rawDisk, overlay])
    const added = await box(env, ['add', 'overlay', overlay])
    expect(added.exitCode).toBe(2)
    expect(added.stderr).toMatch(/overlay\.qcow2 is a qcow2 overlay on .*disk\.img, not a whole disk image/)
  })

  it('writes the seed as an ISO labelled cidata holding meta-data and user-data', async () => {
    const stateDir = join(dir, 'seed-machine')
    await mkdir(stateDir)
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(stateDir, 'key')])
    const input = {instanceId: 'box-1234', hostname: 'web-1', user: 'worker', persistent: true}
    const drive = await writeCloudSeed(stateDir, {...input, publicKeyFile: join(stateDir, 'key.pub')})
    expect(drive).toMatchObject({serial: 'box-cidata', readOnly: true})
    const pvd = await execa('xorriso', ['-indev', drive.file, '-pvd_info'], {all: true})
    expect(pvd.all).toMatch(new RegExp(`Volume Id +: ${SEED_LABEL}\\b`))
    const out = join(dir, 'seed-out')
    await execa('xorriso', ['-osirrox', 'on', '-indev', drive.file, '-extract', '/', out], {all: true})
    expect((await readdir(out)).sort()).toEqual(['meta-data', 'user-data'])
    const publicKey = (await readFile(join(stateDir, 'key.pub'), 'utf8')).trim()
    const hostKey = {
      privateKey: await readFile(join(stateDir, 'guest_host_ed25519_key'), 'utf8'),
      publicKey: await readFile(join(stateDir, 'guest_host_ed25519_key.pub'), 'utf8'),
    }
    expect((await stat(join(stateDir, 'guest_host_ed25519_key'))).mode & 0o777).toBe(0o600)
    expect((await stat(drive.file)).mode & 0o777).toBe(0o600)
    const expected = cloudSeedFiles({...input, publicKey, hostKey})
    expect(await readFile(join(out, 'user-data'), 'utf8')).toBe(expected['user-data'])
    const userData = JSON.parse(expected['user-data'].replace(/^#cloud-config\n/, ''))
    expect(userData.users).toEqual([
      expect.objectContaining({name: 'worker', ssh_authorized_keys: [publicKey], lock_passwd: true}),
    ])
    expect(userData.growpart).toEqual({mode: 'auto', devices: ['/']})
    expect(userData.bootcmd).toEqual([['sh', '-c', persistentMountScript()]])
    expect(JSON.parse(await readFile(join(out, 'meta-data'), 'utf8'))).toEqual({
      'instance-id': 'box-1234',
      'local-hostname': 'web-1',
    })
  })

  it('a cloud image whose ssh never comes: the error says cloud-init did not let box in and shows the serial tail', async () => {
    // QEMU boots the partitioned disk with nothing on it: no cloud-init ever runs.
    const project = join(dir, 'never')
    await mkdir(project)
    const file = join(project, 'Boxfile')
    const text = 'box: raw-cloud\nmemory: 256\ncpus: 1\n'
    await writeFile(file, text)
    const {machines} = await parseBoxfile(file, text)
    const context = {
      projectDir: project,
      dataDir: env.dataDir,
      cacheDir: env.cacheDir,
      progress: createProgress({silent: true}),
    }
    const error = await upMachine(context, machines[0]!, {sshTimeoutMs: 5000}).then(
      () => undefined,
      (error_: unknown) => error_,
    )
    expect(error).toBeInstanceOf(BoxError)
    expect((error as BoxError).message).toBe(`ssh did not answer within 5 s: ${CLOUD_INIT_SSH_TIMEOUT}`)
    // The serial tail (firmware that finds no boot loader prints nothing there: then it says so).
    expect((error as BoxError).detail).toMatch(/\S/)
    console.log(`serial tail shown: ${(error as BoxError).detail}`)
    expect((error as BoxError).suggestions.join('\n')).toMatch(/the whole serial log: .*serial\.log/)
    // The failed up stopped its QEMU again.
    const status = await box({...env, cwd: project}, ['status', '--json'])
    expect(JSON.parse(status.stdout)[0].state).toBe('poweroff')
  }, 120_000)
})
