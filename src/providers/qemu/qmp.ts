import {createConnection, type Socket} from 'node:net'

import {BoxError} from '../../lib/core/errors.js'

interface Pending {
  resolve(value: unknown): void
  reject(error: Error): void
}

/** A minimal QMP client: one unix socket, commands answered in order, events collected. */
export class QmpClient {
  private buffer = ''
  private closed = false
  private readonly pending: Pending[] = []
  readonly events: Array<{event: string; data?: unknown}> = []

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => this.onData(chunk))
    socket.on('close', () => {
      this.closed = true
      for (const p of this.pending.splice(0)) p.reject(new BoxError('QEMU closed the QMP connection'))
    })
    socket.on('error', () => {})
  }

  /** Connect, read the greeting and leave capabilities negotiation mode. */
  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(path)
      const timer = setTimeout(() => {
        s.destroy()
        reject(new BoxError(`QMP socket ${path} did not answer within ${timeoutMs} ms`))
      }, timeoutMs)
      s.once('connect', () => {
        clearTimeout(timer)
        resolve(s)
      })
      s.once('error', (error) => {
        clearTimeout(timer)
        reject(new BoxError(`cannot connect to QMP socket ${path}: ${error.message}`, {cause: error}))
      })
    })
    const client = new QmpClient(socket)
    await client.next() // greeting
    await client.execute('qmp_capabilities')
    return client
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    // Nothing would ever answer (a QEMU that exited): fail instead of waiting forever.
    if (this.closed) throw new BoxError('QEMU closed the QMP connection')
    const answer = this.next()
    this.socket.write(`${JSON.stringify(args ? {execute: command, arguments: args} : {execute: command})}\n`)
    return answer as Promise<T>
  }

  close(): void {
    this.socket.destroy()
  }

  private next(): Promise<unknown> {
    return new Promise((resolve, reject) => this.pending.push({resolve, reject}))
  }

  private onData(chunk: string): void {
    this.buffer += chunk
    let newline: number
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim()
      this.buffer = this.buffer.slice(newline + 1)
      if (!line) continue
      const message = JSON.parse(line) as {
        QMP?: unknown
        return?: unknown
        error?: {desc: string}
        event?: string
        data?: unknown
      }
      if (message.event) {
        this.events.push({event: message.event, data: message.data})
        continue
      }
      const waiter = this.pending.shift()
      if (!waiter) continue
      if (message.error) waiter.reject(new BoxError(`QMP: ${message.error.desc}`))
      else waiter.resolve(message.QMP ?? message.return)
    }
  }
}
