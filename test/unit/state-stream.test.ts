import {createHash, randomBytes} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {createConnection, createServer, type Socket} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {receiveState, sendState} from '../../src/providers/qemu/state-stream.js'

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex')

describe('state streams (the saved state between QEMU and its file, hashed on the way)', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'box-state-stream-'))
  })
  afterEach(async () => {
    await rm(dir, {recursive: true, force: true})
  })

  it('receiveState writes what the one peer sends and hashes it; nobody else gets in after it', async () => {
    const data = randomBytes(5 * 1024 * 1024 + 17)
    const socket = join(dir, 'in.sock')
    const file = join(dir, 'state.partial')
    const receiver = await receiveState(socket, file)
    expect(receiver.uri).toBe(`unix:${socket}`)
    const peer = createConnection(socket)
    await new Promise<void>((resolve) => peer.once('connect', resolve))
    // In chunks, as QEMU writes it.
    for (let offset = 0; offset < data.length; offset += 65_536) peer.write(data.subarray(offset, offset + 65_536))
    peer.end()
    expect(await receiver.done).toEqual({bytes: data.length, sha256: sha256(data)})
    expect(sha256(await readFile(file))).toBe(sha256(data))
    const late = createConnection(socket)
    await expect(
      new Promise((resolve, reject) => late.once('connect', resolve).once('error', reject)),
    ).rejects.toThrow()
    await receiver.close()
    expect(existsSync(socket)).toBe(false)
  })

  it('receiveState: closed before the stream ended, done rejects; an existing file is not overwritten', async () => {
    const file = join(dir, 'state.partial')
    const receiver = await receiveState(join(dir, 'a.sock'), file)
    await receiver.close()
    await expect(receiver.done).rejects.toThrow('closed before it was complete')

    await writeFile(file, 'someone else')
    const second = await receiveState(join(dir, 'b.sock'), file)
    const peer = createConnection(join(dir, 'b.sock'))
    peer.on('error', () => {})
    peer.end('data')
    await expect(second.done).rejects.toMatchObject({code: 'EEXIST'})
    expect(await readFile(file, 'utf8')).toBe('someone else')
    await second.close()
  })

  it('sendState sends the whole file to the listener and returns its size and checksum', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 5)
    const file = join(dir, 'state')
    await writeFile(file, data)
    const socket = join(dir, 'out.sock')
    const received: Buffer[] = []
    const server = createServer((peer: Socket) => peer.on('data', (chunk: Buffer) => received.push(chunk)))
    // Not listening yet: sendState waits for the listener, as for QEMU after migrate-incoming.
    const sending = sendState(socket, file)
    await new Promise((resolve) => setTimeout(resolve, 50))
    await new Promise<void>((resolve) => server.listen(socket, resolve))
    expect(await sending).toEqual({bytes: data.length, sha256: sha256(data)})
    await new Promise((resolve) => setTimeout(resolve, 50))
    server.close()
    expect(sha256(Buffer.concat(received))).toBe(sha256(data))
  })

  it('sendState to a listener that hangs up as soon as it has every byte (QEMU at the end marker) succeeds', async () => {
    const data = randomBytes(2 * 1024 * 1024 + 3)
    const file = join(dir, 'state')
    await writeFile(file, data)
    const socket = join(dir, 'out.sock')
    const server = createServer((peer: Socket) => {
      // Per connection: the last one's tail may still be read when the next one begins.
      let got = 0
      peer.on('data', (chunk: Buffer) => {
        got += chunk.length
        // Closed at once, maybe before our end of the socket is shut down.
        if (got === data.length) peer.destroy()
      })
    })
    await new Promise<void>((resolve) => server.listen(socket, resolve))
    for (let i = 0; i < 5; i++) {
      expect(await sendState(socket, file)).toEqual({bytes: data.length, sha256: sha256(data)})
    }
    server.close()
  })

  it('sendState to a listener that hangs up early fails', async () => {
    const file = join(dir, 'state')
    await writeFile(file, randomBytes(32 * 1024 * 1024))
    const socket = join(dir, 'out.sock')
    const server = createServer((peer: Socket) => peer.destroy())
    await new Promise<void>((resolve) => server.listen(socket, resolve))
    await expect(sendState(socket, file)).rejects.toThrow()
    server.close()
  })
})
