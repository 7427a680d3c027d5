/**
 * A saved state passes through box on its way between QEMU and its file, over a Unix
 * socket (QEMU's `unix:` migration URI), and is hashed as it passes: one pass over the
 * bytes, no `cat` child, the checksum is of exactly the bytes QEMU wrote or read, and a
 * write error (a full disk) is box's own, with its errno, rather than a broken pipe.
 */
import {createHash} from 'node:crypto'
import {createReadStream, createWriteStream} from 'node:fs'
import {rm, stat} from 'node:fs/promises'
import {createConnection, createServer, type Server, type Socket} from 'node:net'
import {Transform} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import {setTimeout as sleep} from 'node:timers/promises'

import {BoxError} from '../../lib/core/errors.js'

export interface StreamedState {
  bytes: number
  sha256: string
}

/** Counts and hashes what flows through it. */
class Hashing extends Transform {
  private readonly hash = createHash('sha256')
  bytes = 0

  override _transform(chunk: Buffer, _encoding: string, callback: (error?: Error | null, data?: Buffer) => void) {
    this.hash.update(chunk)
    this.bytes += chunk.length
    callback(null, chunk)
  }

  result(): StreamedState {
    return {bytes: this.bytes, sha256: this.hash.digest('hex')}
  }
}

export interface StateReceiver {
  /** The URI for QMP `migrate`. */
  uri: string
  /** Resolves once QEMU's stream is all in `file`; rejects with the write error (ENOSPC…) or when closed before it was. */
  done: Promise<StreamedState>
  /** Stop listening and drop a connection still open (the migration failed or was cancelled). */
  close(): Promise<void>
}

/** Listen on `socket` for one outgoing migration and write it to `file` (created, mode 0600). */
export async function receiveState(socket: string, file: string): Promise<StateReceiver> {
  await rm(socket, {force: true})
  const server: Server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(socket, () => {
      server.off('error', reject)
      resolve()
    })
  })
  let connection: Socket | undefined
  let rejectDone: (error: Error) => void = () => {}
  const done = new Promise<StreamedState>((resolve, reject) => {
    rejectDone = reject
    server.once('connection', (peer) => {
      connection = peer
      // One stream only: nobody else gets in after QEMU.
      server.close()
      const hashing = new Hashing()
      // A large buffer: QEMU's writes are not held up by each write to the file.
      const out = createWriteStream(file, {flags: 'wx', mode: 0o600, highWaterMark: 8 << 20})
      pipeline(peer, hashing, out).then(() => resolve(hashing.result()), reject)
    })
  })
  done.catch(() => {})
  return {
    uri: `unix:${socket}`,
    done,
    async close() {
      server.close()
      connection?.destroy()
      rejectDone(new BoxError('the saved state stream was closed before it was complete'))
      await rm(socket, {force: true})
    },
  }
}

/**
 * Send `file` to a QEMU waiting on `socket` (QMP `migrate-incoming unix:…` has made it
 * listen); resolves with what was sent once all of it was.
 */
export async function sendState(socket: string, file: string, signal?: AbortSignal): Promise<StreamedState> {
  const peer = await connectWhenListening(socket, signal)
  const hashing = new Hashing()
  try {
    await pipeline(createReadStream(file, {highWaterMark: 1 << 20}), hashing, peer, {signal})
  } catch (error) {
    // QEMU closes its end once it has read the stream's end marker, which may come before
    // our end of the socket is shut down: with every byte of the file sent, that is no
    // failure (the caller compares size and checksum with the record, and QEMU's status).
    // All sent: every byte of the file went through the hash (the file's end reaching the
    // hash before the hang-up does is a race a loaded host loses).
    const code = (error as NodeJS.ErrnoException).code
    const closedByPeer = code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'EPIPE' || code === 'ECONNRESET'
    const allSent = hashing.bytes === (await stat(file)).size
    if (!closedByPeer || !allSent || signal?.aborted) throw error
  }
  return hashing.result()
}

async function connectWhenListening(socket: string, signal?: AbortSignal): Promise<Socket> {
  const deadline = Date.now() + 5000
  for (;;) {
    signal?.throwIfAborted()
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const peer = createConnection(socket)
        peer.once('connect', () => {
          peer.off('error', reject)
          resolve(peer)
        })
        peer.once('error', reject)
      })
    } catch (error) {
      if (Date.now() > deadline)
        throw new BoxError(`QEMU did not take the saved state on ${socket}: ${(error as Error).message}`, {
          cause: error,
        })
      await sleep(5)
    }
  }
}
