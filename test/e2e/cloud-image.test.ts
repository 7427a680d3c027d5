/**
 * A generic cloud image as a box (test/support/debian-cloud-image.ts: Debian with GRUB,
 * sshd, Debian's cloud-init and growpart, and no user, no key, nothing of box), added as a
 * bare qcow2 and booted through the CLI. box gets in only through the NoCloud seed it hands
 * cloud-init, and resnap is host-side: a fresh overlay at each boot, /persistent on a second
 * disk. One machine is shared by the tests of this file, in order.
 * Boots QEMU: run under `flock /tmp/box-qemu.lock`.
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv, sshStdout} from '../support/cli.js'
import {ensureCloudImage} from '../support/debian-cloud-image.js'

describe('a bare cloud image as a box, with host-side resnap', {timeout: 900_000}, () => {
  let root: string
  let env: CliEnv
  let machineKey: string
  let storedBoxDir: string

  const ssh = (command: string) => sshStdout(env, command)

  beforeAll(async () => {
    const image = await ensureCloudImage({log: (line) => console.log(line)})
    root = await mkdtemp(join(tmpdir(), 'box-cloud-image-'))
    env = {cwd: root, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    const added = await box(env, ['add', 'debian-cloud', image, '--json'])
    expect(added.exitCode, added.stderr).toBe(0)
    storedBoxDir = JSON.parse(added.stdout).path
    await writeFile(
      join(root, 'Boxfile'),
      [
        'box: debian-cloud',
        'memory: 1024',
        'resnap: always',
        'hostname: cloudy',
        'ssh:',
        '  username: worker',
        'provisioners:',
        '  - type: shell',
        '    name: mark',
        '    run: always',
        '    inline: echo "$(id -un) at $(cat /proc/sys/kernel/random/boot_id)" > /etc/box-provisioned',
        '',
      ].join('\n'),
    )
    machineKey = join(root, '.box', 'machines', 'default', 'id_ed25519')
    const up = await box(env, ['up'])
    expect(up.exitCode, `${up.stdout}\n${up.stderr}`).toBe(0)
    // For the record (figures come from bench/, never asserted): the boot stage's line.
    console.log(
      `${up.stdout}\n${up.stderr}`
        .split('\n')
        .filter((line) => /booting|creating/.test(line))
        .join('\n'),
    )
  }, 1_800_000)

  afterAll(async () => {
    if (!env) return
    await box(env, ['destroy', '-f'])
    await rm(root, {recursive: true, force: true})
  })

  it('stored the image as a qemu box that says cloud_init', async () => {
    const metadata = JSON.parse(await readFile(join(storedBoxDir, 'metadata.json'), 'utf8'))
    expect(metadata).toMatchObject({provider: 'qemu', format: 'qcow2', box: {cloud_init: true, user: 'box'}})
  })

  it('logs in as the Boxfile user with the machine key cloud-init installed, host name and sudo from the seed', async () => {
    const out = await ssh('id -un; hostname; sudo -n id -un; cat ~/.ssh/authorized_keys')
    const [user, host, sudoUser, ...keys] = out.split('\n')
    expect([user, host, sudoUser]).toEqual(['worker', 'cloudy', 'root'])
    expect(keys).toEqual([(await readFile(`${machineKey}.pub`, 'utf8')).trim()])
    // cloud-init ran from the seed (NoCloud) and finished; the image itself has no user with a login.
    // sshd lets box in before cloud-init's last stage ends: wait for it (its exit code says whether
    // any module of the image's own configuration failed, which is not box's part).
    expect(await ssh('cloud-init status --wait >/dev/null; cloud-init status | head -1')).toMatch(
      /^status: (done|error)$/,
    )
    // The host key is the one box put in the seed and pinned before the first login.
    const served = await ssh('sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub')
    const seeded = await readFile(join(root, '.box', 'machines', 'default', 'guest_host_ed25519_key.pub'), 'utf8')
    expect(served.split(' ').slice(0, 2)).toEqual(seeded.trim().split(' ').slice(0, 2))
    expect(await ssh('sudo -n cloud-init query v1.platform')).toBe('nocloud')
  })

  it('ran the provisioner over ssh as for any box', async () => {
    const bootId = await ssh('cat /proc/sys/kernel/random/boot_id')
    expect(await ssh('cat /etc/box-provisioned')).toBe(`root at ${bootId}`)
  })

  it('reports no LVM snapshot in status', async () => {
    const status = await box(env, ['status', '--json'])
    expect(status.exitCode, status.stderr).toBe(0)
    const [machine] = JSON.parse(status.stdout)
    expect(machine.state).toBe('running')
    expect(machine.snapshotUsedPercent).toBeUndefined()
    expect(status.stdout).not.toMatch(/snapshot/i)
  })

  it('halt + up with resnap: always gives a fresh root; /persistent on its own disk stays', async () => {
    expect((await ssh('findmnt -no LABEL,FSTYPE /persistent')).split(/\s+/)).toEqual(['persistent', 'ext4'])
    await ssh('sudo -n sh -c "echo gone > /resnap-marker && echo kept > /persistent/kept && sync"')
    const halt = await box(env, ['halt'])
    expect(halt.exitCode, halt.stderr).toBe(0)
    const up = await box(env, ['up'])
    expect(up.exitCode, `${up.stdout}\n${up.stderr}`).toBe(0)
    expect(`${up.stdout}\n${up.stderr}`).toMatch(/booting with resnap \(a fresh disk\)/)
    expect(await ssh('test -e /resnap-marker && echo there || echo gone')).toBe('gone')
    expect(await ssh('cat /persistent/kept')).toBe('kept')
    // The same user and key came back through the seed, and the provisioner ran again on the fresh root.
    expect(await ssh('id -un')).toBe('worker')
    // The fresh root serves the same pinned host key (the seed's): no pin to reset.
    expect(`${up.stdout}\n${up.stderr}`).not.toMatch(/host key/)
    const bootId = await ssh('cat /proc/sys/kernel/random/boot_id')
    expect(await ssh('cat /etc/box-provisioned')).toBe(`root at ${bootId}`)
  })
})
