/**
 * A box that knows only Vagrant's conventions (test/fixtures/vagrant-box.ts: plain Debian,
 * user vagrant, Vagrant's insecure keys in ~/.ssh/authorized_keys, ifupdown DHCP, the
 * disk's own GRUB, no box pieces), added and booted through the CLI with a Boxfile that
 * says nothing about ssh; then box's host-side resnap of a box without LVM, and a Boxfile
 * naming ssh.private_key_path. One machine is shared by the tests of this file, in order.
 * Boots QEMU: run under `flock /tmp/box-qemu.lock`.
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv} from '../support/cli.js'
import {ensureVagrantBox, VAGRANT_INSECURE_PRIVATE_KEYS, VAGRANT_INSECURE_PUBLIC_KEYS} from '../fixtures/vagrant-box.js'

const fingerprint = async (publicKey: string) =>
  (await execa('ssh-keygen', ['-l', '-f', publicKey])).stdout.split(' ')[1]!

describe('a Vagrant-convention box on QEMU', {timeout: 900_000}, () => {
  let root: string
  let env: CliEnv
  let machineKey: string
  let insecureCopies: string[]

  /** sshd's answer to one key offered alone, straight to the forwarded port (not through box). */
  const loginWith = async (key: string) => {
    const config = (await box(env, ['ssh-config'])).stdout
    const port = /Port (\d+)/.exec(config)![1]!
    return execa(
      'ssh',
      [
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        'UserKnownHostsFile=/dev/null',
        '-o',
        'IdentitiesOnly=yes',
        '-o',
        'ConnectTimeout=20',
        '-i',
        key,
        '-p',
        port,
        'vagrant@127.0.0.1',
        'true',
      ],
      {reject: false},
    )
  }
  const acceptedLogins = async () => {
    const log = await box(env, ['ssh', '-c', 'sudo journalctl -b -u ssh.service -o cat --no-pager'])
    expect(log.exitCode, log.stderr).toBe(0)
    return log.stdout.split('\n').filter((line) => line.startsWith('Accepted publickey for vagrant'))
  }

  beforeAll(async () => {
    const boxFile = await ensureVagrantBox({log: (line) => console.log(line)})
    root = await mkdtemp(join(tmpdir(), 'box-vagrant-guest-'))
    env = {cwd: root, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    const added = await box(env, ['add', 'vagrant-plain', boxFile])
    expect(added.exitCode, added.stderr).toBe(0)
    // No ssh settings: the login user and keys are the box world's defaults.
    await writeFile(join(root, 'Boxfile'), 'box: vagrant-plain\nmemory: 1024\n')
    machineKey = join(root, '.box', 'machines', 'default', 'id_ed25519')
    // OpenSSH wants private keys 0600; git does not keep modes.
    insecureCopies = []
    for (const [index, key] of VAGRANT_INSECURE_PRIVATE_KEYS.entries()) {
      const copy = join(root, `vagrant-insecure-${index}`)
      await writeFile(copy, await readFile(key), {mode: 0o600})
      insecureCopies.push(copy)
    }
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

  it('logs in as vagrant, with password-less sudo, through box ssh -c', async () => {
    const who = await box(env, ['ssh', '-c', 'id -un; sudo -n id -un'])
    expect(who.exitCode, who.stderr).toBe(0)
    expect(who.stdout.trim().split('\n')).toEqual(['vagrant', 'root'])
  })

  it('got in with a Vagrant insecure key once, then with the machine key', async () => {
    const logins = await acceptedLogins()
    const insecure = await Promise.all(VAGRANT_INSECURE_PUBLIC_KEYS.map(fingerprint))
    expect(
      insecure.some((print) => logins[0]!.includes(print)),
      logins.join('\n'),
    ).toBe(true)
    const mine = await fingerprint(`${machineKey}.pub`)
    expect(logins.slice(1).length).toBeGreaterThan(0)
    for (const login of logins.slice(1)) expect(login).toContain(mine)
  })

  it('replaced the insecure keys in ~/.ssh/authorized_keys: sshd now refuses both', async () => {
    const keys = await box(env, ['ssh', '-c', 'cat ~/.ssh/authorized_keys; stat -c %a ~/.ssh/authorized_keys'])
    expect(keys.exitCode, keys.stderr).toBe(0)
    const [mode, ...lines] = keys.stdout.trim().split('\n').reverse()
    expect(mode).toBe('600')
    const blob = async (file: string) => (await readFile(file, 'utf8')).trim().split(/\s+/)[1]!
    expect(lines).toEqual([(await readFile(`${machineKey}.pub`, 'utf8')).trim()])
    for (const file of VAGRANT_INSECURE_PUBLIC_KEYS) expect(keys.stdout).not.toContain(await blob(file))
    for (const key of insecureCopies) {
      const denied = await loginWith(key)
      expect(denied.exitCode).toBe(255)
      // sshd's refusal, not a network or key-file problem.
      expect(denied.stderr).toMatch(/vagrant@127\.0\.0\.1: Permission denied \(publickey/)
    }
  })

  it('gets its address by DHCP on enp0s3, the name its VirtualBox-made config expects', async () => {
    const net = await box(env, [
      'ssh',
      '-c',
      'ip -o -4 addr show; udevadm test-builtin net_id /sys/class/net/enp0s3 2>/dev/null | grep ^ID_NET_NAME',
    ])
    expect(net.exitCode, net.stderr).toBe(0)
    expect(net.stdout).toMatch(/^\d+: enp0s3 +inet 10\.0\.2\.15\//m)
    // By PCI path alone: no slot name (ens3) that would win over it.
    expect(net.stdout).toMatch(/^ID_NET_NAME_PATH=enp0s3$/m)
    expect(net.stdout).not.toMatch(/^ID_NET_NAME_SLOT=/m)
  })

  it('halts, and the next up uses the machine key only', async () => {
    const halt = await box(env, ['halt'])
    expect(halt.exitCode, halt.stderr).toBe(0)
    // The guest's own systemd answers QEMU's ACPI power button, as under vagrant-libvirt.
    expect(halt.stdout).toContain('default: halted')
    expect(halt.stdout).not.toContain('(forced)')
    const up = await box(env, ['up'])
    expect(up.exitCode, `${up.stdout}\n${up.stderr}`).toBe(0)
    const logins = await acceptedLogins()
    const mine = await fingerprint(`${machineKey}.pub`)
    expect(logins.length).toBeGreaterThan(0)
    for (const login of logins) expect(login).toContain(mine)
    const denied = await loginWith(insecureCopies[0]!)
    expect(denied.stderr).toMatch(/Permission denied \(publickey/)
    expect((await loginWith(machineKey)).exitCode).toBe(0)
  })

  it('box resnap on a box without LVM: a fresh disk from the host, the insecure key once more, a /persistent disk', async () => {
    const changed = await box(env, ['ssh', '-c', 'echo changed | sudo tee /etc/box-host-resnap-marker >/dev/null'])
    expect(changed.exitCode, changed.stderr).toBe(0)
    const resnap = await box(env, ['resnap'])
    expect(resnap.exitCode, `${resnap.stdout}\n${resnap.stderr}`).toBe(0)
    expect(`${resnap.stdout}\n${resnap.stderr}`).toContain('booting with resnap (a fresh disk)')
    const after = await box(env, [
      'ssh',
      '-c',
      'test ! -e /etc/box-host-resnap-marker && echo marker-gone; findmnt -no TARGET /persistent; echo kept | sudo tee /persistent/kept >/dev/null && sync',
    ])
    expect(after.exitCode, after.stderr).toBe(0)
    expect(after.stdout.trim().split('\n')).toEqual(['marker-gone', '/persistent'])
    // The fresh disk trusts only the box's keys again: box got in with one, then put the machine key back.
    const logins = await acceptedLogins()
    const insecure = await Promise.all(VAGRANT_INSECURE_PUBLIC_KEYS.map(fingerprint))
    expect(
      insecure.some((print) => logins[0]!.includes(print)),
      logins.join('\n'),
    ).toBe(true)
    const mine = await fingerprint(`${machineKey}.pub`)
    for (const login of logins.slice(1)) expect(login).toContain(mine)
  })

  it("uses the Boxfile's ssh.private_key_path and ssh.username as they are, and no machine key", async () => {
    // A site's own key, which the guest trusts (put there as a site's box would have it).
    const siteKey = join(root, 'site-key')
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'site', '-f', siteKey])
    const uploaded = await box(env, ['upload', `${siteKey}.pub`, '/tmp/site-key.pub'])
    expect(uploaded.exitCode, uploaded.stderr).toBe(0)
    const trusted = await box(env, ['ssh', '-c', 'cat /tmp/site-key.pub >> ~/.ssh/authorized_keys'])
    expect(trusted.exitCode, trusted.stderr).toBe(0)
    expect((await box(env, ['halt'])).exitCode).toBe(0)
    await writeFile(
      join(root, 'Boxfile'),
      'box: vagrant-plain\nmemory: 1024\nssh:\n  username: vagrant\n  private_key_path: site-key\n',
    )
    const up = await box(env, ['up'])
    expect(up.exitCode, `${up.stdout}\n${up.stderr}`).toBe(0)
    const logins = await acceptedLogins()
    const site = await fingerprint(`${siteKey}.pub`)
    expect(logins.length).toBeGreaterThan(0)
    for (const login of logins) expect(login).toContain(site)
    expect((await box(env, ['ssh-config'])).stdout).toContain(`IdentityFile ${siteKey}`)
    // A boot without resnap keeps the disk, and mounts the persistent disk the resnap made.
    const kept = await box(env, ['ssh', '-c', 'cat /persistent/kept'])
    expect(kept.stdout.trim(), kept.stderr).toBe('kept')
  })

  it('destroys the machine', async () => {
    const destroyed = await box(env, ['destroy', '-f'])
    expect(destroyed.exitCode, destroyed.stderr).toBe(0)
    const status = await box(env, ['status', '--json'])
    expect(JSON.parse(status.stdout)).toEqual([expect.objectContaining({name: 'default', state: 'not_created'})])
  })
})
