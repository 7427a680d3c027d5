import {spawn, type ChildProcess} from 'node:child_process'
import {once} from 'node:events'
import {closeSync, openSync} from 'node:fs'
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {createConnection, createServer, type AddressInfo} from 'node:net'
import {userInfo} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {MachineRecord} from '../../src/lib/machine/context.js'
import {
  forgetHostKeys,
  hostKeyAlias,
  knownHostsFile,
  readKnownHosts,
  writeKnownHosts,
  type HostKey,
} from '../../src/lib/machine/host-keys.js'
import {closeSshMaster, waitForMachineSsh} from '../../src/lib/machine/keys.js'
import {sshRun, type SshTarget} from '../../src/lib/machine/ssh.js'
import {makeTempDir} from '../fixtures/boxes.js'

/**
 * The pin against a real sshd on 127.0.0.1 (no guest): the real ssh client checks it, a
 * server that comes back with another host key is refused with box's error, a master made
 * before the change still carries on until closed, and forgetting the pin learns the new key.
 * sshd runs as the user running the tests and lets that user in with a test key.
 */
describe('a pinned host key, checked by the real ssh client against a real sshd', () => {
  let cleanup: () => Promise<void>
  let dir: string
  let port: number
  let sshd: ChildProcess | undefined
  let target: SshTarget
  let record: MachineRecord
  const hostKeys: Record<'first' | 'second', HostKey> = {} as never

  const publicKey = async (file: string): Promise<HostKey> => {
    const [type, blob] = (await readFile(`${file}.pub`, 'utf8')).trim().split(/\s+/)
    return {type: type!, blob: blob!}
  }

  /** sshd in the foreground with one host key; resolves once it accepts connections. */
  const startSshd = async (hostKey: 'first' | 'second') => {
    const config = join(dir, `sshd_config_${hostKey}`)
    await writeFile(
      config,
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${join(dir, `host_${hostKey}`)}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${join(dir, 'id_ed25519.pub')}`,
        // The temporary folder is not root's alone; the key file's mode is checked by ssh.
        'StrictModes no',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'PermitRootLogin prohibit-password',
        '',
      ].join('\n'),
    )
    // Its privilege-separation folder, which Debian's ssh.service makes at start (a host with no sshd running has none).
    await mkdir('/run/sshd', {recursive: true, mode: 0o755}).catch(() => undefined) // not root: sshd says what is missing
    // Its log straight into a file (no pipe): the sessions it forks outlive the listener.
    const log = openSync(join(dir, 'sshd.log'), 'a')
    sshd = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', config], {stdio: ['ignore', 'ignore', log]})
    closeSync(log)
    const deadline = Date.now() + 10_000
    for (;;) {
      const listening = await new Promise<boolean>((resolve) => {
        const socket = createConnection({host: '127.0.0.1', port}, () => {
          socket.destroy()
          resolve(true)
        }).on('error', () => resolve(false))
      })
      if (listening) return
      if (sshd.exitCode !== null) {
        throw new Error(`sshd did not start: ${await readFile(join(dir, 'sshd.log'), 'utf8')}`)
      }
      if (Date.now() > deadline) throw new Error('sshd did not listen within 10 s')
      await sleep(50)
    }
  }

  /** Only the listener: the sessions it forked (the master's) live on, as across `systemctl restart ssh`. */
  const stopListener = async () => {
    if (!sshd || sshd.exitCode !== null) return
    const exited = once(sshd, 'exit')
    sshd.kill('SIGTERM')
    await exited
    sshd = undefined
  }

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-host-key-pin-'))
    for (const name of ['host_first', 'host_second', 'id_ed25519'])
      await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', join(dir, name)])
    hostKeys.first = await publicKey(join(dir, 'host_first'))
    hostKeys.second = await publicKey(join(dir, 'host_second'))
    const probe = createServer().listen(0, '127.0.0.1')
    await once(probe, 'listening')
    port = (probe.address() as AddressInfo).port
    probe.close()
    record = {
      id: '00000000-0000-4000-8000-000000000001',
      name: 'web',
      provider: 'qemu',
      box: {name: 'reference', version: '0.1.0', provider: 'libvirt', path: dir},
      user: userInfo().username,
      sshPort: port,
      keyInstalled: true,
      provisioned: true,
      createdAt: new Date().toISOString(),
    }
    target = {
      host: '127.0.0.1',
      port,
      user: record.user,
      keyFile: join(dir, 'id_ed25519'),
      controlPath: join(dir, 'ssh.ctl'),
      hostKeys: {knownHostsFile: knownHostsFile(dir), alias: hostKeyAlias(record), machine: record.name},
    }
    await startSshd('first')
  })

  afterAll(async () => {
    if (target) await closeSshMaster(target.controlPath!)
    await stopListener()
    await cleanup?.()
  })

  it('connects to the server holding the pinned key, and refuses one that holds another', async () => {
    await writeKnownHosts(target.hostKeys!, [hostKeys.first])
    expect((await sshRun(target, ['echo', 'reached'])).stdout.trim()).toBe('reached')

    await stopListener()
    await startSshd('second')
    // The master made to the first server is that connection still: it reaches what it reached.
    expect((await sshRun(target, ['echo', 'through the master'])).stdout.trim()).toBe('through the master')

    await closeSshMaster(target.controlPath!)
    const refused = await sshRun(target, ['echo', 'reached']).catch((error: unknown) => error)
    expect(refused).toBeInstanceOf(Error)
    const error = refused as Error & {suggestions: string[]; detail?: string}
    expect(error.message).toBe(
      `the ssh host key of machine web is not the one pinned at its first \`box up\` (${target.hostKeys!.knownHostsFile}); box did not connect`,
    )
    expect(error.suggestions.join('\n')).toContain('box up web --reset-host-key')
    expect(error.detail).toMatch(/^The fingerprint for the ED25519 key sent by the remote host is$/m)
    // Strict checking added nothing to the pin.
    expect(await readKnownHosts(target.hostKeys!)).toEqual([hostKeys.first])
  })

  it('a forgotten pin is learned again from the agent, or on first use, and then holds', async () => {
    expect(await forgetHostKeys(dir)).toBe(true)
    const missing = await sshRun(target, ['true']).catch((error: unknown) => error)
    expect((missing as Error).message).toBe(
      `machine web has no pinned ssh host key (${target.hostKeys!.knownHostsFile} is missing); box did not connect`,
    )

    const told = await waitForMachineSsh(dir, target, record, {
      timeoutMs: 20_000,
      listening: true,
      agentHostKeys: async () => [hostKeys.second],
    })
    expect(told.hostKeySource).toBe('agent')
    expect(await readKnownHosts(target.hostKeys!)).toEqual([hostKeys.second])

    await closeSshMaster(target.controlPath!)
    expect(await forgetHostKeys(dir)).toBe(true)
    const firstUse = await waitForMachineSsh(dir, target, record, {
      timeoutMs: 20_000,
      listening: true,
      agentHostKeys: async () => undefined,
    })
    expect(firstUse.hostKeySource).toBe('first-use')
    expect(await readFile(target.hostKeys!.knownHostsFile, 'utf8')).toBe(
      `${target.hostKeys!.alias} ${hostKeys.second.type} ${hostKeys.second.blob}\n`,
    )

    // An agent that names a key the server does not hold: the pin is refused at once.
    await closeSshMaster(target.controlPath!)
    await forgetHostKeys(dir)
    await expect(
      waitForMachineSsh(dir, target, record, {
        timeoutMs: 20_000,
        listening: true,
        agentHostKeys: async () => [hostKeys.first],
      }),
    ).rejects.toThrow(/is not the one pinned/)
  })
})
