import {once} from 'node:events'
import {createServer, type AddressInfo, type Server} from 'node:net'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, beforeEach, describe, expect, it} from 'vitest'

import {waitForSsh, type SshTarget} from '../../src/lib/machine/ssh.js'
import {makeTempDir} from '../fixtures/boxes.js'

/**
 * When box up connects: the real ssh client against a loopback listener that records each
 * connection and is no sshd (so every probe fails and waitForSsh ends at its timeout). The
 * guest's answers to "does sshd listen?" are played by `sshListening`.
 */
describe('waitForSsh asking the guest before it connects', () => {
  let cleanup: () => Promise<void>
  let server: Server
  let connections: number[]
  let target: SshTarget

  beforeAll(async () => {
    let dir: string
    ;({dir, cleanup} = await makeTempDir('box-wait-ssh-'))
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'key')])
    server = createServer((socket) => {
      connections.push(Date.now())
      socket.end('not an ssh server\r\n')
    }).listen(0, '127.0.0.1')
    await once(server, 'listening')
    target = {host: '127.0.0.1', port: (server.address() as AddressInfo).port, user: 'box', keyFile: join(dir, 'key')}
  })

  beforeEach(() => {
    connections = []
  })

  afterAll(async () => {
    server?.close()
    await cleanup?.()
  })

  it('makes no connection until the guest says sshd listens', async () => {
    let asked = 0
    let saidYesAt = 0
    const sshListening = async () => {
      asked++
      if (asked < 4) return false
      saidYesAt ||= Date.now()
      return true
    }
    await expect(waitForSsh(target, {timeoutMs: 2500, sshListening})).rejects.toThrow(/ssh did not answer within 3 s/)
    expect(asked).toBe(4)
    expect(connections.length).toBeGreaterThan(0)
    expect(connections[0]).toBeGreaterThanOrEqual(saidYesAt)
  })

  it('probes at once when the guest cannot tell', async () => {
    const started = Date.now()
    await expect(waitForSsh(target, {timeoutMs: 1000, sshListening: async () => undefined})).rejects.toThrow(
      /ssh did not answer/,
    )
    expect(connections[0]! - started).toBeLessThan(500)
  })

  it('probes once a guest whose agent never answered stayed silent agentSilenceMs', async () => {
    const started = Date.now()
    const silent = async () => {
      throw new Error('the guest agent did not answer')
    }
    await expect(waitForSsh(target, {timeoutMs: 2500, agentSilenceMs: 1000, sshListening: silent})).rejects.toThrow(
      /ssh did not answer/,
    )
    expect(connections.length).toBeGreaterThan(0)
    expect(connections[0]! - started).toBeGreaterThanOrEqual(1000)
  })

  it('keeps waiting for an agent that answers, however long sshd takes', async () => {
    await expect(
      waitForSsh(target, {timeoutMs: 2000, agentSilenceMs: 500, sshListening: async () => false}),
    ).rejects.toThrow(/ssh did not answer/)
    expect(connections).toEqual([])
  })
})
