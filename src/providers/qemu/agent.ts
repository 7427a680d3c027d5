/**
 * The host side of box-agent (provisioners/box-agent): a line protocol on the virtio-serial
 * port `box.agent`, so `box status` learns what only root in the guest can see without ssh
 * and sudo (half a second under TCG). QEMU backs the port with a pipe chardev: two FIFOs in
 * the machine's state dir that QEMU holds open for the guest's whole life, so the guest
 * always sees its host end connected and can block on read (a socket chardev would make it
 * read EOF, and spin, whenever no box command is connected).
 *
 * A request is a line "ID VERB [ARG]"; the answer "ID ok TEXT" or "ID error TEXT". Answers
 * are matched by ID: one left in the FIFO by a caller that gave up is skipped.
 */
import {randomUUID} from 'node:crypto'
import {closeSync, constants, open as openCallback, writeSync} from 'node:fs'
import {Socket} from 'node:net'
import {promisify} from 'node:util'

import {BoxError} from '../../lib/core/errors.js'
import {acquireLock} from '../../lib/core/lock.js'

const openFd = promisify(openCallback)

/** The FIFOs QEMU's pipe chardev opens: `<base>.in` (host → guest) and `<base>.out` (guest → host). */
export function agentFifos(base: string): {toGuest: string; fromGuest: string} {
  return {toGuest: `${base}.in`, fromGuest: `${base}.out`}
}

/** The agent answered with an error: it does not know the request, or the request failed in the guest. */
export class AgentRefusal extends BoxError {}

export interface AgentRequestOptions {
  timeoutMs: number
}

/**
 * Ask the running guest's box-agent one question; resolves to the answer's text. Callers
 * are serialized per machine (each must read its own answer from the one FIFO).
 */
export async function askAgent(base: string, request: string, options: AgentRequestOptions): Promise<string> {
  const release = await acquireLock(`${base}.lock`, {
    waitMs: options.timeoutMs,
    pollMs: 20,
    busy: (pid) => new BoxError(`the guest agent is busy answering another box command (pid ${pid})`),
  })
  try {
    return await exchange(base, request, options.timeoutMs)
  } finally {
    await release()
  }
}

async function exchange(base: string, request: string, timeoutMs: number): Promise<string> {
  const {toGuest, fromGuest} = agentFifos(base)
  const id = randomUUID().slice(0, 8)
  // Non-blocking opens: reading never waits for a writer, and opening for writing fails
  // (ENXIO) rather than hangs when no QEMU holds the FIFOs (the machine is not running).
  const reader = new Socket({
    fd: await openFd(fromGuest, constants.O_RDONLY | constants.O_NONBLOCK),
    readable: true,
    writable: false,
  })
  let timer: NodeJS.Timeout | undefined
  try {
    const answer = new Promise<string>((resolve, reject) => {
      let buffer = ''
      reader.setEncoding('utf8')
      reader.on('error', reject)
      reader.on('data', (chunk: string) => {
        buffer += chunk
        const lines = buffer.split('\n')
        buffer = lines.pop()!
        const line = lines.find((candidate) => candidate.startsWith(`${id} `))
        if (line === undefined) return
        const [, status, ...text] = line.split(' ')
        if (status === 'ok') resolve(text.join(' '))
        else reject(new AgentRefusal(`the guest agent refused "${request}": ${text.join(' ')}`))
      })
    })
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new BoxError(`the guest agent did not answer "${request}" within ${timeoutMs} ms`)),
        timeoutMs,
      )
    })
    // One short line is written atomically; EAGAIN means 64 KiB of questions nobody read: no agent.
    const writeFd = await openFd(toGuest, constants.O_WRONLY | constants.O_NONBLOCK)
    try {
      writeSync(writeFd, `${id} ${request}\n`)
    } finally {
      closeSync(writeFd)
    }
    return await Promise.race([answer, timeout])
  } finally {
    clearTimeout(timer)
    reader.destroy()
  }
}
