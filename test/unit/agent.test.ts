import {constants, openSync} from 'node:fs'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {Socket} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {createInterface} from 'node:readline'
import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {AGENT_PORT_NAME} from '../../src/lib/box/agent-protocol.js'
import {agentFifos, askAgent} from '../../src/providers/qemu/agent.js'

/**
 * The host side of box-agent against real FIFOs. What QEMU and the guest do is played by
 * a stand-in here (it holds the FIFOs open as QEMU's pipe chardev does and answers as
 * provisioners/box-agent does); test/e2e/machine.test.ts asks the real agent in a guest.
 */
class GuestStandIn {
  readonly requests: string[] = []
  private readonly toHost
  private readonly lines

  constructor(base: string, answer: (id: string, request: string) => string | undefined) {
    const {toGuest, fromGuest} = agentFifos(base)
    // Opened read-write and non-blocking, as QEMU opens them: neither side's open blocks.
    const open = (fifo: string) => new Socket({fd: openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK)})
    this.toHost = open(fromGuest)
    this.lines = createInterface({input: open(toGuest)})
    this.lines.on('line', (line) => {
      const [id, ...words] = line.split(' ')
      this.requests.push(words.join(' '))
      const reply = answer(id!, words.join(' '))
      if (reply !== undefined) this.toHost.write(`${reply}\n`)
    })
  }

  send(text: string): void {
    this.toHost.write(text)
  }

  close(): void {
    this.lines.close()
    this.toHost.destroy()
  }
}

describe('box-agent requests from the host', () => {
  let dir: string
  let base: string
  let guest: GuestStandIn | undefined

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'box-agent-'))
    base = join(dir, 'agent')
    await execa('mkfifo', Object.values(agentFifos(base)))
  })

  afterEach(async () => {
    guest?.close()
    guest = undefined
    await rm(dir, {recursive: true, force: true})
  })

  it('matches the answer to its question by id, skipping answers left by callers that gave up', async () => {
    guest = new GuestStandIn(base, (id, request) =>
      request === 'dm-status box-root_snap'
        ? `${id} ok 0 6291456 snapshot 1808/4194304 16`
        : `${id} error unknown request`,
    )
    guest.send('deadbeef ok an answer nobody waits for any more\n')
    await expect(askAgent(base, 'dm-status box-root_snap', {timeoutMs: 5000})).resolves.toBe(
      '0 6291456 snapshot 1808/4194304 16',
    )
    expect(guest.requests).toEqual(['dm-status box-root_snap'])
  })

  it('turns an error answer into a BoxError naming the question', async () => {
    guest = new GuestStandIn(base, (id) => `${id} error unknown request: reboot`)
    await expect(askAgent(base, 'reboot', {timeoutMs: 5000})).rejects.toThrow(
      'the guest agent refused "reboot": unknown request: reboot',
    )
  })

  it('gives up after the timeout when the guest does not answer', async () => {
    guest = new GuestStandIn(base, () => undefined)
    const started = Date.now()
    await expect(askAgent(base, 'ping', {timeoutMs: 300})).rejects.toThrow('did not answer "ping" within 300 ms')
    expect(Date.now() - started).toBeLessThan(3000)
  })

  it('fails at once when no QEMU holds the FIFOs (the machine is not running)', async () => {
    const started = Date.now()
    await expect(askAgent(base, 'ping', {timeoutMs: 5000})).rejects.toMatchObject({code: 'ENXIO'})
    expect(Date.now() - started).toBeLessThan(1000)
  })

  it('answers concurrent callers each with their own answer', async () => {
    guest = new GuestStandIn(base, (id, request) => `${id} ok ${request.split(' ')[1]}`)
    const answers = await Promise.all(
      ['a', 'b', 'c', 'd'].map((word) => askAgent(base, `echo ${word}`, {timeoutMs: 5000})),
    )
    expect(answers).toEqual(['a', 'b', 'c', 'd'])
  })

  it('names the port the guest script opens', async () => {
    const script = await readFile(join(PROJECT_ROOT, 'provisioners', 'box-agent'), 'utf8')
    expect(script).toContain(`exec 3<>/dev/virtio-ports/${AGENT_PORT_NAME}\n`)
  })
})
