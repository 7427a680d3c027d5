import {execa} from 'execa'
import {describe, expect, it} from 'vitest'

import {cloudSeedFiles, persistentMountScript, seedHostname} from '../../src/lib/box/cloud-init.js'
import {hasPartitionTable} from '../../src/lib/store/cloud-image.js'

describe('the NoCloud seed', () => {
  const input = {
    instanceId: 'box-1',
    hostname: 'web',
    user: 'worker',
    publicKey: 'ssh-ed25519 AAAA key\n',
    persistent: false,
    hostKey: {privateKey: 'PRIVATE\n', publicKey: 'ssh-ed25519 BBBB box-host\n'},
  }

  it('is cloud-config whose values stay values, whatever they hold', () => {
    const files = cloudSeedFiles({...input, user: 'a"b\n- evil: true'})
    expect(files['user-data'].startsWith('#cloud-config\n')).toBe(true)
    const userData = JSON.parse(files['user-data'].slice('#cloud-config\n'.length))
    expect(userData.users).toHaveLength(1)
    expect(userData.users[0].name).toBe('a"b\n- evil: true')
    expect(userData.users[0].ssh_authorized_keys).toEqual(['ssh-ed25519 AAAA key'])
    expect(userData.ssh_pwauth).toBe(false)
    // The machine's own host key, the same at every boot: no key of the image's, none generated.
    expect(userData.ssh_keys).toEqual({ed25519_private: 'PRIVATE\n', ed25519_public: 'ssh-ed25519 BBBB box-host'})
    expect(userData.bootcmd).toBeUndefined()
  })

  it('mounts /persistent at every boot only when the machine has the disk', () => {
    const userData = JSON.parse(
      cloudSeedFiles({...input, persistent: true})
        ['user-data'].split('\n')
        .slice(1)
        .join('\n'),
    )
    expect(userData.bootcmd).toEqual([['sh', '-c', persistentMountScript()]])
  })

  it('formats the persistent disk only when blkid finds no filesystem at all (exit 2)', async () => {
    const script = persistentMountScript()
    await execa('sh', ['-n', '-c', script])
    expect(script).toMatch(/\[ "\$rc" -ne 2 \] \|\| mkfs\.ext4/)
  })

  it('makes host names of machine names', () => {
    expect(seedHostname('web_1.example')).toBe('web-1-example')
    expect(seedHostname('__')).toBe('box')
    expect(seedHostname('a'.repeat(80))).toHaveLength(63)
  })
})

describe('what box add takes as a disk', () => {
  const sectors = (fill: (buffer: Buffer) => void) => {
    const buffer = Buffer.alloc(1024)
    fill(buffer)
    return buffer
  }
  it('an MBR boot signature or a GPT header', () => {
    expect(hasPartitionTable(sectors((b) => b.writeUInt16LE(0xaa55, 510)))).toBe(true)
    expect(hasPartitionTable(sectors((b) => b.write('EFI PART', 512, 'latin1')))).toBe(true)
  })
  it('not zeros, nor a filesystem without a partition table', () => {
    expect(hasPartitionTable(Buffer.alloc(1024))).toBe(false)
    expect(hasPartitionTable(Buffer.alloc(100))).toBe(false)
  })
})
