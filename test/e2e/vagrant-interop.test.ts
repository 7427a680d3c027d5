import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {TCG_CPU} from '../../src/providers/qemu/accel.js'
import {testCacheDir} from '../support/cache.js'

/**
 * The other direction: Debian's vagrant + vagrant-libvirt boot the box `box build` writes,
 * with no edits. libvirtd runs in its own network namespace (scripts/libvirt-netns, which
 * .ci/run may have started already) and so does vagrant. One guest, under TCG: Vagrant
 * logs in with its insecure key and replaces it, the replacement holds across a resnap
 * boot (halt + up), and the published insecure keys (Vagrant's and box's) open nothing.
 */

const NETNS = join(PROJECT_ROOT, 'scripts', 'libvirt-netns')
/** vagrant up under TCG on a busy 2-core host: 73–97 s when quiet, several minutes under load. */
const UP_TIMEOUT = 900_000

/** Vagrant's published insecure private key, as Debian's vagrant package ships it. */
async function vagrantInsecureKey(): Promise<string> {
  const gems = '/usr/share/rubygems-integration/all/gems'
  const vagrantGem = (await readdir(gems)).find((name) => /^vagrant-\d/.test(name))
  if (!vagrantGem)
    throw new Error(`Debian's vagrant is not installed (no ${gems}/vagrant-*): run scripts/install-host-deps`)
  return join(gems, vagrantGem, 'keys', 'vagrant')
}

describe('vagrant up of a box built by box (vagrant-libvirt, libvirtd in a network namespace)', () => {
  let root: string
  let project: string
  let env: Record<string, string>
  let startedLibvirt = false
  let created = false

  const netns = (args: string[], timeout = 120_000) =>
    execa(NETNS, args, {cwd: project, env, reject: false, timeout, stdin: 'ignore', all: true})
  const vagrant = (args: string[], timeout = 300_000) => netns(['exec', 'vagrant', ...args], timeout)
  const vssh = async (command: string): Promise<string> => {
    const result = await vagrant(['ssh', '-c', command])
    expect(result.exitCode, result.all).toBe(0)
    return result.stdout.trim()
  }
  /** One login as the box's user with exactly this key, from inside the namespace. */
  const loginWith = async (key: string, host: string) => {
    const copy = join(root, 'try-key')
    await writeFile(copy, await readFile(key), {mode: 0o600})
    const options = [
      'BatchMode=yes',
      'IdentitiesOnly=yes',
      'StrictHostKeyChecking=no',
      'UserKnownHostsFile=/dev/null',
      'LogLevel=ERROR',
      'ConnectTimeout=30',
    ]
    const result = await netns([
      'exec',
      'ssh',
      ...options.flatMap((option) => ['-o', option]),
      '-i',
      copy,
      `box@${host}`,
      'true',
    ])
    await rm(copy, {force: true})
    return result.exitCode
  }

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    root = await mkdtemp(join(tmpdir(), 'box-vagrant-'))
    project = join(root, 'project')
    await mkdir(project)
    await mkdir(join(root, 'home'))
    env = {
      VAGRANT_HOME: join(root, 'vagrant-home'),
      HOME: join(root, 'home'),
      VAGRANT_CHECKPOINT_DISABLE: '1',
      VAGRANT_DEFAULT_PROVIDER: 'libvirt',
    }
    if ((await netns(['status'])).exitCode !== 0) {
      const started = await netns(['start'])
      expect(started.exitCode, started.all).toBe(0)
      startedLibvirt = true
    }
    const vagrantfile = await netns(['vagrantfile', 'box-interop', TCG_CPU])
    expect(vagrantfile.exitCode, vagrantfile.all).toBe(0)
    await writeFile(join(project, 'Vagrantfile'), `${vagrantfile.stdout}\n`)
    const added = await vagrant(['box', 'add', '--name', 'box-interop', boxFile])
    expect(added.exitCode, added.all).toBe(0)
  }, UP_TIMEOUT)

  afterAll(async () => {
    if (created) await vagrant(['destroy', '-f'])
    if (root) {
      await vagrant(['box', 'remove', '--force', '--all', 'box-interop'])
      // The box's image, uploaded into libvirt's pool by vagrant-libvirt.
      const volumes = await netns(['exec', 'virsh', '-q', 'vol-list', 'default'])
      for (const line of volumes.stdout.split('\n')) {
        const name = line.trim().split(/\s+/)[0]
        if (name?.startsWith('box-interop_vagrant_box_image'))
          await netns(['exec', 'virsh', '-q', 'vol-delete', '--pool', 'default', name])
      }
    }
    if (startedLibvirt) await netns(['stop'])
    if (root) await rm(root, {recursive: true, force: true})
  }, 300_000)

  it(
    'vagrant up logs in, replaces the insecure key, and boots the resnap snapshot',
    async () => {
      created = true
      const up = await vagrant(['up', '--provider', 'libvirt'], UP_TIMEOUT)
      expect(up.exitCode, up.all).toBe(0)
      expect(up.stdout).toContain('Vagrant insecure key detected')
      expect(up.stdout).toContain('Key inserted!')
      expect(await vssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root_snap')

      // What works now is the key Vagrant generated, not a published one.
      const host = /^\s*HostName\s+(\S+)$/m.exec((await vagrant(['ssh-config'])).stdout)?.[1]
      expect(host).toMatch(/^192\.168\.121\.\d+$/)
      expect(await loginWith(join(project, '.vagrant', 'machines', 'default', 'libvirt', 'private_key'), host!)).toBe(0)
      expect(await loginWith(await vagrantInsecureKey(), host!)).toBe(255)
      expect(await loginWith(join(PROJECT_ROOT, 'static', 'insecure_key'), host!)).toBe(255)
    },
    UP_TIMEOUT,
  )

  it(
    'halt + up is a resnap boot: / is fresh, the replaced key still logs in, no key inserted again',
    async () => {
      await vssh('touch ~/resnap-marker && test -e ~/resnap-marker')
      const halt = await vagrant(['halt'])
      expect(halt.exitCode, halt.all).toBe(0)
      const up = await vagrant(['up'], UP_TIMEOUT)
      expect(up.exitCode, up.all).toBe(0)
      expect(up.stdout).not.toContain('Vagrant insecure key detected')
      expect(await vssh('test ! -e ~/resnap-marker && findmnt -no SOURCE /')).toBe('/dev/mapper/box-root_snap')
      expect((await vagrant(['ssh', '-c', 'true'])).exitCode).toBe(0)
    },
    UP_TIMEOUT,
  )

  it('vagrant destroy -f removes the machine', async () => {
    const destroyed = await vagrant(['destroy', '-f'])
    expect(destroyed.exitCode, destroyed.all).toBe(0)
    created = false
    expect((await vagrant(['status'])).stdout).toMatch(/default\s+not created/)
  }, 300_000)
})
