/** The pure parts of forward_ports: auto and of the ansible provisioner; the e2e test runs both against a guest. */
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, expect, it} from 'vitest'

import type {AnsibleProvisioner} from '../../src/lib/boxfile/types.js'
import {createProgress} from '../../src/lib/core/progress.js'
import {ansibleArgs, ansibleInventory, runAnsible} from '../../src/lib/machine/ansible.js'
import {parseListeners, portsToForward} from '../../src/lib/machine/auto-forward.js'

const tcp = (guest: number, host = guest) => ({guest, host, hostIp: '127.0.0.1', protocol: 'tcp' as const})

describe('forward_ports: auto', () => {
  it("reads box-agent's tcp-listeners answer", () => {
    expect(parseListeners('22 8000 65535')).toEqual([22, 8000, 65_535])
    expect(parseListeners('')).toEqual([])
    expect(parseListeners('22 0 70000 x1 ')).toEqual([22])
  })

  it('forwards new unprivileged ports, leaving ssh, the Boxfile ones and those already added alone', () => {
    const configured = [tcp(8080, 18_080), {...tcp(5353), protocol: 'udp' as const}]
    expect(portsToForward([22, 80, 1023, 1024, 5353, 8080, 9000, 3000], configured, [tcp(9000)])).toEqual([
      1024, 5353, 3000,
    ])
  })
})

const playbook: AnsibleProvisioner = {
  type: 'ansible',
  name: 'site',
  playbook: '/project/site.yml',
  extraVars: {secret: 's3cret'},
  inventoryGroups: {webservers: ['web', 'db'], databases: ['db']},
  become: true,
  run: 'once',
}

describe('ansible provisioner', () => {
  it('an inventory of the machine and the groups that name it, ssh settings from the ssh-config file', () => {
    expect(ansibleInventory('web', '/state/dir with space/ssh_config', playbook)).toEqual({
      all: {
        hosts: {
          web: {
            ansible_host: 'web',
            ansible_ssh_common_args: "-F '/state/dir with space/ssh_config'",
            ansible_python_interpreter: 'auto_silent',
          },
        },
        children: {webservers: {hosts: {web: {}}}},
      },
    })
  })

  it('arguments: limit to the machine unless told, become, extra vars from a file (never their values)', () => {
    const args = ansibleArgs('web', playbook, {inventory: '/i.json', extraVars: '/x.json'})
    expect(args).toEqual([
      '--inventory',
      '/i.json',
      '--limit',
      'web',
      '--become',
      '--extra-vars',
      '@/x.json',
      '/project/site.yml',
    ])
    expect(args.join(' ')).not.toContain('s3cret')
    expect(ansibleArgs('web', {...playbook, limit: 'webservers', become: false}, {inventory: '/i.json'})).toEqual([
      '--inventory',
      '/i.json',
      '--limit',
      'webservers',
      '/project/site.yml',
    ])
  })

  it('names the package when ansible-playbook is not installed, and leaves nothing behind', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'box-ansible-'))
    const path = process.env.PATH
    process.env.PATH = '/nonexistent'
    try {
      const context = {
        projectDir: stateDir,
        dataDir: stateDir,
        cacheDir: stateDir,
        progress: createProgress({silent: true}),
      }
      const target = {host: '127.0.0.1', port: 1, user: 'box', keyFile: join(stateDir, 'key')}
      await expect(runAnsible(context, 'web', stateDir, target, playbook)).rejects.toThrow(
        /ansible-playbook is not installed/,
      )
      const error = await runAnsible(context, 'web', stateDir, target, playbook).catch((caught: unknown) => caught)
      expect((error as {suggestions?: string[]}).suggestions).toEqual(['install it: sudo apt-get install ansible-core'])
    } finally {
      process.env.PATH = path
      await rm(stateDir, {recursive: true, force: true})
    }
  })
})
