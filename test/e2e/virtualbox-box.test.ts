/**
 * The real proof for a Vagrant VirtualBox box under QEMU: the reference box's disk shipped
 * as a VirtualBox box (streamOptimized VMDK + OVF), `box add`ed (converted to qcow2), then
 * `box up` with the default provider boots it through its own grub (no kernel files, no
 * direct kernel boot) and `box ssh` gets in. One boot, under TCG about a minute.
 */
import {mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {afterAll, beforeAll, expect, it} from 'vitest'

import {makeTempDir} from '../fixtures/boxes.js'
import {makeVirtualBoxBoxFromReference} from '../fixtures/virtualbox-box.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv} from '../support/cli.js'

const BOOT_TIMEOUT = 420_000

let dir: string
let cleanup: () => Promise<void>
let vboxBox: string
let project: CliEnv

beforeAll(async () => {
  ;({dir, cleanup} = await makeTempDir('box-e2e-vbox-'))
  ;({box: vboxBox} = await makeVirtualBoxBoxFromReference(dir))
  project = {cwd: join(dir, 'project'), dataDir: join(dir, 'data'), cacheDir: testCacheDir()}
  await mkdir(project.cwd)
  // A Vagrant box logs in as vagrant (box's default for a box without box's own metadata);
  // the reference image's user is box, so the Boxfile says so, as a user of such a box would.
  await writeFile(join(project.cwd, 'Boxfile'), 'box: vagrant/ref\nmemory: 1024\ncpus: 2\nssh:\n  username: box\n')
}, 600_000)
afterAll(async () => {
  if (project) await box(project, ['destroy', '-f'])
  await cleanup?.()
})

it(
  'box up (QEMU, the default) boots the converted VirtualBox box through its own grub; ssh works; remove after destroy',
  async () => {
    const added = await box(project, ['add', 'vagrant/ref', vboxBox])
    expect(added.exitCode, added.stderr).toBe(0)
    expect(added.stdout).toContain('(libvirt)')

    const up = await box(project, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
    const inside = await box(project, ['ssh', '-c', 'cat /proc/cmdline; id -un'])
    expect(inside.exitCode, inside.stderr).toBe(0)
    // BOOT_IMAGE= is grub's: QEMU booted the disk, not a kernel handed to it.
    expect(inside.stdout).toMatch(/BOOT_IMAGE=/)
    expect(inside.stdout.trim().split('\n').at(-1)).toBe('box')
    const status = await box(project, ['status', '--json'])
    expect(JSON.parse(status.stdout)).toMatchObject([
      {name: 'default', state: 'running', provider: 'qemu', box: 'vagrant/ref 0'},
    ])

    const refused = await box(project, ['remove', 'vagrant/ref'])
    expect(refused.exitCode).toBe(1)
    expect(refused.stderr).toMatch(/cannot remove vagrant\/ref: a machine uses it/)
    expect((await box(project, ['destroy', '-f'])).exitCode).toBe(0)
    const removed = await box(project, ['remove', 'vagrant/ref'])
    expect(removed.exitCode, removed.stderr).toBe(0)
    expect(removed.stdout).toContain('(libvirt)')
    expect(removed.stdout).toContain('(virtualbox)')
  },
  BOOT_TIMEOUT,
)
