import {mkdtemp, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {
  forgetHostKeys,
  hostKeyAlias,
  hostKeysFromConsole,
  knownHostsFile,
  parseHostKeyPairs,
  readKnownHosts,
  writeKnownHosts,
  type HostKey,
} from '../../src/lib/machine/host-keys.js'
import {hostKeyError, hostKeyOptions, sshOptions, type SshTarget} from '../../src/lib/machine/ssh.js'
import {sshConfigBlock} from '../../src/lib/machine/ssh-config.js'

/** The value ssh -G resolves for `option` (lower case) from these command-line options. */
async function sshResolved(options: string[], option: string): Promise<string | undefined> {
  const {stdout} = await execa('ssh', ['-G', '-F', '/dev/null', ...options, 'box-test-host'])
  return stdout
    .split('\n')
    .find((line) => line.startsWith(`${option} `))
    ?.slice(option.length + 1)
}

describe('pinned host keys', () => {
  let dir: string
  let ed25519: HostKey
  let ecdsa: HostKey

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'box-host-keys-'))
    // Real keys from ssh-keygen: the formats the guest's sshd serves.
    const keyOf = async (type: string): Promise<HostKey> => {
      const file = join(dir, `key-${type}`)
      await execa('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', 'comment with spaces', '-f', file])
      const [keyType, blob] = (await readFile(`${file}.pub`, 'utf8')).split(' ')
      return {type: keyType!, blob: blob!}
    }
    ed25519 = await keyOf('ed25519')
    ecdsa = await keyOf('ecdsa')
  })

  afterAll(async () => {
    await rm(dir, {recursive: true, force: true})
  })

  it("reads box-agent's answer of TYPE BLOB pairs and refuses anything else", () => {
    expect(parseHostKeyPairs(` ${ed25519.type} ${ed25519.blob} ${ecdsa.type} ${ecdsa.blob}`)).toEqual([ed25519, ecdsa])
    expect(() => parseHostKeyPairs('')).toThrow(/not a list of ssh host keys/)
    expect(() => parseHostKeyPairs(`${ed25519.type}`)).toThrow(/not a list of ssh host keys/)
    expect(() => parseHostKeyPairs(`-----BEGIN-OPENSSH-PRIVATE-KEY----- ${ed25519.blob}`)).toThrow(
      /not an ssh host key/,
    )
    expect(() => parseHostKeyPairs(`${ed25519.type} not;base64`)).toThrow(/not an ssh host key/)
  })

  it("writes known_hosts whole with mode 0600 under the alias, and reads back only that alias's keys", async () => {
    const stateDir = join(dir, 'machine')
    await execa('mkdir', ['-p', stateDir])
    const pin = {
      knownHostsFile: knownHostsFile(stateDir),
      alias: hostKeyAlias({id: '0b7c6a52-7c57-4a0e-9d4c-1c1d2f3e4a5b'}),
    }
    expect(pin.alias).toBe('box-machine-0b7c6a52-7c57-4a0e-9d4c-1c1d2f3e4a5b')
    expect(await readKnownHosts(pin)).toEqual([])
    await writeKnownHosts(pin, [ed25519, ecdsa])
    expect((await stat(pin.knownHostsFile)).mode & 0o777).toBe(0o600)
    expect(await readFile(pin.knownHostsFile, 'utf8')).toBe(
      `${pin.alias} ${ed25519.type} ${ed25519.blob}\n${pin.alias} ${ecdsa.type} ${ecdsa.blob}\n`,
    )
    // ssh-keygen -F finds the pin by the alias, as ssh looks it up.
    const found = await execa('ssh-keygen', ['-F', pin.alias, '-f', pin.knownHostsFile])
    expect(found.stdout).toContain(ed25519.blob)
    expect(await readKnownHosts(pin)).toEqual([ed25519, ecdsa])
    await writeFile(
      pin.knownHostsFile,
      `# a comment\n[127.0.0.1]:2222 ${ecdsa.type} ${ecdsa.blob}\n${pin.alias} ${ed25519.type} ${ed25519.blob}\n`,
    )
    expect(await readKnownHosts(pin)).toEqual([ed25519])
    await expect(writeKnownHosts(pin, [])).rejects.toThrow(/no host keys to pin/)
    expect(await forgetHostKeys(stateDir)).toBe(true)
    expect(await forgetHostKeys(stateDir)).toBe(false)
    expect(await readKnownHosts(pin)).toEqual([])
  })

  it('finds the keys a cloud image prints on its console, the last block printed', () => {
    const console = [
      '[   10.1] cloud-init[512]: Cloud-init v. 23.1 running',
      '-----BEGIN SSH HOST KEY KEYS-----',
      `ssh-rsa AAAAold${'A'.repeat(60)} root@old`,
      '-----END SSH HOST KEY KEYS-----',
      'reboot',
      '<14>Dec  1 12:00:00 cloud-init: #############################################################\r',
      '<14>Dec  1 12:00:00 cloud-init: -----BEGIN SSH HOST KEY KEYS-----\r',
      `<14>Dec  1 12:00:00 cloud-init: ${ecdsa.type} ${ecdsa.blob} root@debian\r`,
      `<14>Dec  1 12:00:00 cloud-init: ${ed25519.type} ${ed25519.blob} root@debian\r`,
      '<14>Dec  1 12:00:00 cloud-init: -----END SSH HOST KEY KEYS-----\r',
    ].join('\n')
    expect(hostKeysFromConsole(console)).toEqual([ecdsa, ed25519])
    expect(hostKeysFromConsole('Debian GNU/Linux 12 debian ttyS0\nlogin: ')).toBeUndefined()
    // A block cut off (the guest still printing) is not taken.
    expect(hostKeysFromConsole(`-----BEGIN SSH HOST KEY KEYS-----\n${ed25519.type} ${ed25519.blob}\n`)).toBeUndefined()
  })

  it("ssh checks the machine's own known_hosts strictly under its alias; first use accepts a new key only", async () => {
    const hostKeys = {knownHostsFile: '/state/known_hosts', alias: 'box-machine-1', machine: 'web'}
    const target: SshTarget = {host: '127.0.0.1', port: 2222, user: 'box', keyFile: '/state/id_ed25519', hostKeys}
    const options = sshOptions(target)
    expect(await sshResolved(options, 'stricthostkeychecking')).toBe('true')
    expect(await sshResolved(options, 'userknownhostsfile')).toBe('/state/known_hosts')
    expect(await sshResolved(options, 'globalknownhostsfile')).toBe('/dev/null')
    expect(await sshResolved(options, 'hostkeyalias')).toBe('box-machine-1')
    expect(await sshResolved(options, 'updatehostkeys')).toBe('false')
    expect(await sshResolved(options, 'hashknownhosts')).toBe('no')
    expect(options.join(' ')).not.toMatch(/StrictHostKeyChecking=no/)
    expect(await sshResolved(hostKeyOptions({hostKeys, firstUse: true}), 'stricthostkeychecking')).toBe('accept-new')
    // Throw-away guests of tests and benches have no pin and are not checked.
    expect(await sshResolved(hostKeyOptions({}), 'stricthostkeychecking')).toBe('false')
  })

  it('a refused host key becomes the error that says what happened and how to reset it; other failures do not', async () => {
    const hostKeys = {knownHostsFile: join(dir, 'refused_known_hosts'), alias: 'box-machine-1', machine: 'web'}
    await writeKnownHosts(hostKeys, [ed25519])
    const target: SshTarget = {host: '127.0.0.1', port: 2222, user: 'box', keyFile: 'k', hostKeys}
    // OpenSSH 9.2's words for a key other than the known one, under strict checking.
    const changed = [
      '@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@',
      '@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @',
      '@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@',
      'IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!',
      'The fingerprint for the ED25519 key sent by the remote host is',
      'SHA256:fPKcM42+aTgFJVqBmG+YaeuqL/jjGDxikWPMKqcflx4.',
      'Host key for box-machine-1 has changed and you have requested strict checking.',
      'Host key verification failed.',
    ].join('\n')
    const error = hostKeyError(target, {exitCode: 255, stderr: changed})
    expect(error?.message).toBe(
      `the ssh host key of machine web is not the one pinned at its first \`box up\` (${hostKeys.knownHostsFile}); box did not connect`,
    )
    expect(error?.suggestions.join('\n')).toContain('box up web --reset-host-key')
    expect(error?.detail).toBe(changed.split('\n').slice(4).join('\n'))
    await rm(hostKeys.knownHostsFile)
    const unpinned = hostKeyError(target, {
      exitCode: 255,
      stderr:
        'No ED25519 host key is known for box-machine-1 and you have requested strict checking.\nHost key verification failed.',
    })
    expect(unpinned?.message).toBe(
      `machine web has no pinned ssh host key (${hostKeys.knownHostsFile} is missing); box did not connect`,
    )
    expect(unpinned?.suggestions).toEqual(["learn the guest's key: box up web --reset-host-key"])
    expect(
      hostKeyError(target, {exitCode: 255, stderr: 'ssh: connect to host 127.0.0.1 port 2222: Connection refused'}),
    ).toBeUndefined()
    // A remote command's own exit code and output are the command's business.
    expect(hostKeyError(target, {exitCode: 1, stderr: 'Host key verification failed.'})).toBeUndefined()
    expect(hostKeyError({...target, firstUse: true}, {exitCode: 255, stderr: changed})).toBeUndefined()
  })

  it('ssh-config prints the pin with strict checking, quoting paths with spaces', () => {
    const block = sshConfigBlock('web', {
      host: '127.0.0.1',
      port: 2222,
      user: 'box',
      identityFile: '/my project/.box/machines/web/id_ed25519',
      knownHostsFile: '/my project/.box/machines/web/known_hosts',
      hostKeyAlias: 'box-machine-1',
    })
    expect(block).toContain('  StrictHostKeyChecking yes\n')
    expect(block).toContain('  UserKnownHostsFile "/my project/.box/machines/web/known_hosts"\n')
    expect(block).toContain('  HostKeyAlias box-machine-1\n')
    expect(block).toContain('  IdentityFile "/my project/.box/machines/web/id_ed25519"\n')
    expect(block).not.toContain('/dev/null')
  })
})
