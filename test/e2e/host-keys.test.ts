import {mkdtemp, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {readRecord} from '../../src/lib/machine/context.js'
import {closeSshMaster} from '../../src/lib/machine/keys.js'
import {sshArgs} from '../../src/lib/machine/ssh.js'
import {sshTarget} from '../../src/lib/machine/ssh-session.js'
import {QemuProvider} from '../../src/providers/qemu/index.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv} from '../support/cli.js'

/**
 * The "TYPE BLOB" host keys the guest's sshd has (its public files on /persistent), read
 * in the guest. (ssh-keyscan of the port came back empty now and then under TCG load.)
 */
async function guestKeys(env: CliEnv): Promise<string[]> {
  const read = await box(env, ['ssh', '-c', 'cat /persistent/ssh/ssh_host_*_key.pub'])
  expect(read.exitCode, read.stderr).toBe(0)
  return publicKeys(read.stdout)
}

/** "TYPE BLOB" of each public key line (comments dropped), sorted. */
function publicKeys(text: string): string[] {
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(' ').slice(0, 2).join(' '))
    .sort()
}

/** The key exchange an `ssh -v` run negotiated ("debug1: kex: algorithm: NAME"). */
function kexOf(stderr: string): string | undefined {
  return /^debug1: kex: algorithm: (\S+)$/m.exec(stderr)?.[1]
}

/** The "TYPE BLOB" keys pinned in a known_hosts file, and the names they are pinned under. */
async function pinned(file: string): Promise<{names: string[]; keys: string[]}> {
  const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean)
  return {
    names: [...new Set(lines.map((line) => line.split(' ')[0]!))],
    keys: lines.map((line) => line.split(' ').slice(1, 3).join(' ')).sort(),
  }
}

describe('host keys pinned at the first up and checked by every connection', {timeout: 600_000}, () => {
  let env: CliEnv
  let root: string
  let stateDir: string
  let knownHosts: string

  // box's own closing (the one `up --reset-host-key` does): `ssh -O exit`, then the socket
  // removed, so no connection of the next command can reach a master that is still exiting.
  const closeMaster = () => closeSshMaster(new QemuProvider().sshControlPath({stateDir}))

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    root = await mkdtemp(join(tmpdir(), 'box-hostkeys-'))
    env = {cwd: join(root, 'project'), dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    await execa('mkdir', [env.cwd])
    await writeFile(join(env.cwd, 'Boxfile'), 'box: reference\nmemory: 1024\ncpus: 2\n')
    const added = await box(env, ['add', 'reference', boxFile])
    expect(added.exitCode, added.stderr).toBe(0)
    stateDir = join(env.cwd, '.box', 'machines', 'default')
    knownHosts = join(stateDir, 'known_hosts')
  })

  afterAll(async () => {
    if (env) await box(env, ['destroy', '-f'])
    if (root) await rm(root, {recursive: true, force: true})
  })

  it('up pins the key the guest serves, told by its agent, in known_hosts (0600) under a per-machine alias', async () => {
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
    expect(up.stderr).toContain("ssh host key pinned (told by the guest's agent)")
    expect((await stat(knownHosts)).mode & 0o777).toBe(0o600)
    const pins = await pinned(knownHosts)
    expect(pins.names).toEqual([expect.stringMatching(/^box-machine-[0-9a-f-]{36}$/)])
    const served = await guestKeys(env)
    expect(served.length).toBeGreaterThan(0)
    expect(pins.keys).toEqual(served)
  })

  it('box ssh connects with the pin; ssh-config prints strict checking and works with ssh -F', async () => {
    await closeMaster()
    const ok = await box(env, ['ssh', '-c', 'true'])
    expect(ok.exitCode, ok.stderr).toBe(0)
    const config = await box(env, ['ssh-config'])
    expect(config.exitCode, config.stderr).toBe(0)
    expect(config.stdout).toContain('StrictHostKeyChecking yes')
    expect(config.stdout).toContain(`UserKnownHostsFile ${knownHosts}`)
    expect(config.stdout).toMatch(/HostKeyAlias box-machine-/)
    expect(config.stdout).not.toMatch(/StrictHostKeyChecking no|\/dev\/null/)
    const configFile = join(root, 'ssh_config')
    await writeFile(configFile, config.stdout)
    const viaConfig = await execa('ssh', ['-F', configFile, '-o', 'BatchMode=yes', 'default', 'echo', 'reached'], {
      reject: false,
    })
    expect(viaConfig.stderr).toBe('')
    expect(viaConfig.stdout.trim()).toBe('reached')
  })

  it("box's ssh and ssh-config leave out sntrup761x25519 (ssh's first choice with this guest): curve25519-sha256 is used", async () => {
    // Fresh connections (no ControlMaster), with -v: ssh prints the key exchange it agreed on.
    const record = await readRecord(stateDir)
    const target = {...sshTarget(stateDir, record!, new QemuProvider()), controlPath: undefined}
    const own = await execa('ssh', ['-v', ...sshArgs(target, ['true'])], {reject: false, stdin: 'ignore'})
    expect(own.exitCode, own.stderr).toBe(0)
    expect(kexOf(own.stderr)).toBe('curve25519-sha256')
    expect(own.stderr).not.toMatch(/kex: algorithm: sntrup/)
    const configFile = join(root, 'ssh_config')
    await writeFile(configFile, (await box(env, ['ssh-config'])).stdout)
    const viaConfig = await execa('ssh', ['-v', '-F', configFile, '-o', 'BatchMode=yes', 'default', 'true'], {
      reject: false,
      stdin: 'ignore',
    })
    expect(viaConfig.exitCode, viaConfig.stderr).toBe(0)
    expect(kexOf(viaConfig.stderr)).toBe('curve25519-sha256')
    expect(viaConfig.stderr).not.toMatch(/kex: algorithm: sntrup/)
    // ssh's own default list (the command line's option comes before the config file's): the
    // guest agrees to sntrup761x25519, so the two answers above are box's doing.
    const byDefault = await execa(
      'ssh',
      ['-v', '-F', configFile, '-o', 'BatchMode=yes', '-o', 'KexAlgorithms=+curve25519-sha256', 'default', 'true'],
      {reject: false, stdin: 'ignore'},
    )
    expect(byDefault.exitCode, byDefault.stderr).toBe(0)
    // (Named sntrup761x25519-sha512 by a bookworm OpenSSH since 9.2p1-2+deb12u4, with @openssh.com before.)
    expect(kexOf(byDefault.stderr)).toMatch(/^sntrup761x25519-sha512(@openssh\.com)?$/)
  })

  it('resnap, halt and up keep the guest key (it lives on /persistent): strict checking still connects', async () => {
    const before = await readFile(knownHosts, 'utf8')
    const resnap = await box(env, ['resnap'])
    expect(resnap.exitCode, resnap.stderr).toBe(0)
    expect(resnap.stderr).not.toContain('pinned')
    expect((await box(env, ['halt'])).exitCode).toBe(0)
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
    expect(up.stderr).not.toContain('pinned')
    expect(await readFile(knownHosts, 'utf8')).toBe(before)
    expect((await pinned(knownHosts)).keys).toEqual(await guestKeys(env))
    const ok = await box(env, ['ssh', '-c', 'findmnt -no SOURCE /'])
    expect(ok.exitCode, ok.stderr).toBe(0)
    expect(ok.stdout.trim()).toMatch(/root_snap$/)
  })

  it('a changed guest host key stops every connection with an error saying how to reset; --reset-host-key recovers', async () => {
    const before = await pinned(knownHosts)
    const changed = await box(env, [
      'ssh',
      '-c',
      'sudo sh -eu -c "rm -f /persistent/ssh/ssh_host_ed25519_key /persistent/ssh/ssh_host_ed25519_key.pub; ssh-keygen -q -t ed25519 -N \\"\\" -f /persistent/ssh/ssh_host_ed25519_key; systemctl restart ssh"; cat /persistent/ssh/ssh_host_*_key.pub',
    ])
    expect(changed.exitCode, changed.stderr).toBe(0)
    // Read over the master connection, made to the genuine guest before the change: from
    // here on every new connection meets the new key and must be refused, box ssh included.
    const served = publicKeys(changed.stdout)
    expect(served.length).toBeGreaterThan(0)
    expect(served).not.toEqual(before.keys)
    await closeMaster()

    const refused = await box(env, ['ssh', '-c', 'touch /tmp/reached'])
    expect(refused.exitCode).not.toBe(0)
    expect(refused.stderr).toContain('the ssh host key of machine default is not the one pinned at its first `box up`')
    expect(refused.stderr).toContain('box up default --reset-host-key')
    // The other connections box makes say the same (an upload's ssh under tar's pipe).
    const upload = join(root, 'upload-me')
    await writeFile(upload, 'not for this guest\n')
    const uploaded = await box(env, ['upload', upload, '/tmp/reached'])
    expect(uploaded.exitCode).not.toBe(0)
    expect(uploaded.stderr).toContain('is not the one pinned')
    expect(uploaded.stderr).toContain('box up default --reset-host-key')
    const config = join(root, 'ssh_config')
    // Written again: the port may have moved since (halt and up).
    await writeFile(config, (await box(env, ['ssh-config'])).stdout)
    const viaConfig = await execa('ssh', ['-F', config, '-o', 'BatchMode=yes', 'default', 'touch', '/tmp/reached'], {
      reject: false,
    })
    expect(viaConfig.exitCode).toBe(255)
    expect(viaConfig.stderr).toContain('Host key verification failed')
    expect((await pinned(knownHosts)).keys).toEqual(before.keys)

    const reset = await box(env, ['up', '--reset-host-key'])
    expect(reset.exitCode, reset.stderr).toBe(0)
    expect(reset.stderr).toContain('forgot the pinned ssh host key')
    expect(reset.stderr).toContain("ssh host key pinned (told by the guest's agent)")
    expect((await pinned(knownHosts)).keys).toEqual(served)
    expect((await stat(knownHosts)).mode & 0o777).toBe(0o600)
    // A new connection (not the master the reset left) meets the new pin; nothing the
    // refused connections asked for ran in the guest.
    await closeMaster()
    const reached = await box(env, ['ssh', '-c', 'test ! -e /tmp/reached && echo never-reached'])
    expect(reached.exitCode, reached.stderr).toBe(0)
    expect(reached.stdout.trim()).toBe('never-reached')
    const viaConfigAgain = await execa('ssh', ['-F', config, '-o', 'BatchMode=yes', 'default', 'true'], {reject: false})
    expect(viaConfigAgain.exitCode, viaConfigAgain.stderr).toBe(0)
  })

  it('a guest whose agent cannot tell is trusted on its first login, the key recorded, then held to it', async () => {
    const before = await readFile(knownHosts, 'utf8')
    const stopped = await box(env, ['ssh', '-c', 'sudo systemctl stop box-agent'])
    expect(stopped.exitCode, stopped.stderr).toBe(0)
    const reset = await box(env, ['up', '--reset-host-key'])
    expect(reset.exitCode, reset.stderr).toBe(0)
    expect(reset.stderr).toContain('ssh host key pinned on first use')
    // What ssh recorded at that login is the key the guest serves, rewritten as box writes it.
    expect(await readFile(knownHosts, 'utf8')).toBe(before)
    expect((await stat(knownHosts)).mode & 0o777).toBe(0o600)
    await closeMaster()
    const ok = await box(env, ['ssh', '-c', 'true'])
    expect(ok.exitCode, ok.stderr).toBe(0)
  })

  it('a boot that meets a key other than the pinned one fails with the reset hint and leaves QEMU stopped', async () => {
    const real = await readFile(knownHosts, 'utf8')
    const other = await readFile(join(PROJECT_ROOT, 'static', 'insecure_key.pub'), 'utf8')
    const alias = real.split(' ')[0]!
    await writeFile(knownHosts, `${alias} ${other.split(' ').slice(0, 2).join(' ')}\n`, {mode: 0o600})
    expect((await box(env, ['halt'])).exitCode).toBe(0)
    const up = await box(env, ['up'])
    expect(up.exitCode).not.toBe(0)
    expect(up.stderr).toContain('is not the one pinned')
    expect(up.stderr).toContain('--reset-host-key')
    const status = await box(env, ['status', '--json'])
    expect(JSON.parse(status.stdout)).toEqual([expect.objectContaining({state: 'poweroff'})])
    const recovered = await box(env, ['up', '--reset-host-key'])
    expect(recovered.exitCode, recovered.stderr).toBe(0)
    expect(await readFile(knownHosts, 'utf8')).toBe(real)
  })
})
