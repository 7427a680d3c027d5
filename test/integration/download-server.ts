import {createServer, type IncomingMessage, type Server, type ServerResponse} from 'node:http'
import {createServer as createTlsServer} from 'node:https'
import type {AddressInfo} from 'node:net'

/**
 * A real HTTP server on 127.0.0.1 for download tests: serves byte buffers with ETag,
 * Last-Modified and Range, and misbehaves on request (cut the connection after N bytes,
 * ignore Range, stall after the headers, answer an error status). It counts every body
 * byte it sends so tests can prove what was (not) fetched twice. With `tls` it serves
 * HTTPS with the given key and certificate; `redirects` answers paths with a Location.
 */
export interface ServedFile {
  data: Buffer
  etag?: string
  lastModified?: string
  contentType?: string
  /** Further response headers (Content-Disposition, …). */
  headers?: Record<string, string>
  /** Send no Content-Length: Node then sends the body chunked. */
  chunked?: boolean
}

export interface Redirect {
  status: 301 | 302 | 303 | 307 | 308
  /** Absolute or relative, sent as it is. */
  location: string
}

export interface Behaviour {
  /** Destroy the socket after sending this many body bytes. */
  cutAfter?: number
  /** Answer 200 with the whole file even when a Range is asked for. */
  ignoreRange?: boolean
  /** Send the headers and then nothing. */
  stall?: boolean
  /** Send this many body bytes, then nothing (the connection stays open). */
  stallAfter?: number
  /** Answer this status with a short body. */
  status?: number
  /** Bytes per write (smaller writes make a cut land where the test wants it). */
  chunkSize?: number
}

export interface RecordedRequest {
  path: string
  range?: string
  ifRange?: string
  status: number
  bytesSent: number
}

export interface TestServer {
  /** The URL of `path` on this server, by IP (default) or by another name of 127.0.0.1 (localhost). */
  url(path: string, host?: string): string
  port: number
  files: Map<string, ServedFile>
  redirects: Map<string, Redirect>
  requests: RecordedRequest[]
  /** Behaviour for the next requests, one entry per request (then well-behaved). */
  plan: Behaviour[]
  bytesSent(): number
  /** TCP connections accepted so far (a TLS handshake that fails makes one and no request). */
  connections(): number
  close(): Promise<void>
}

export async function startTestServer(options: {tls?: {key: string; cert: string}} = {}): Promise<TestServer> {
  const files = new Map<string, ServedFile>()
  const redirects = new Map<string, Redirect>()
  const requests: RecordedRequest[] = []
  const plan: Behaviour[] = []
  const sockets = new Set<import('node:net').Socket>()

  const handle = (request: IncomingMessage, response: ServerResponse) => {
    const path = new URL(request.url ?? '/', 'http://x').pathname
    const behaviour = plan.shift() ?? {}
    const record: RecordedRequest = {
      path,
      range: request.headers.range,
      ifRange: request.headers['if-range'] as string | undefined,
      status: 0,
      bytesSent: 0,
    }
    requests.push(record)
    const redirect = redirects.get(path)
    if (redirect) {
      record.status = redirect.status
      response.writeHead(redirect.status, {location: redirect.location, 'content-type': 'text/plain'})
      response.end('moved\n')
      return
    }
    const file = files.get(path)
    if (behaviour.status || !file) {
      record.status = behaviour.status ?? 404
      response.writeHead(record.status, {'content-type': 'text/plain'})
      response.end('no\n')
      return
    }
    const headers: Record<string, string | number> = {
      'accept-ranges': 'bytes',
      'content-type': file.contentType ?? 'application/octet-stream',
    }
    if (file.etag) headers.etag = file.etag
    if (file.lastModified) headers['last-modified'] = file.lastModified
    Object.assign(headers, file.headers)

    let start = 0
    let status = 200
    const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? '')
    const validatorMatches =
      !request.headers['if-range'] ||
      request.headers['if-range'] === file.etag ||
      request.headers['if-range'] === file.lastModified
    if (range && !behaviour.ignoreRange && validatorMatches) {
      start = Number(range[1])
      if (start >= file.data.length) {
        record.status = 416
        response.writeHead(416, {'content-range': `bytes */${file.data.length}`})
        response.end()
        return
      }
      status = 206
      headers['content-range'] = `bytes ${start}-${file.data.length - 1}/${file.data.length}`
    }
    if (!file.chunked) headers['content-length'] = file.data.length - start
    record.status = status
    response.writeHead(status, headers)
    response.flushHeaders()
    if (behaviour.stall) return

    const body = file.data.subarray(start)
    const limit = behaviour.cutAfter ?? behaviour.stallAfter ?? Number.POSITIVE_INFINITY
    const chunkSize = behaviour.chunkSize ?? 64 * 1024
    let offset = 0
    const pump = () => {
      while (offset < body.length) {
        if (offset >= limit && behaviour.stallAfter !== undefined) return
        if (offset >= limit) {
          // Let what was written reach the client, then cut like a dropped link would.
          response.socket?.end()
          setTimeout(() => response.socket?.destroy(), 20)
          return
        }
        const slice = body.subarray(offset, Math.min(offset + chunkSize, body.length, limit))
        offset += slice.length
        record.bytesSent += slice.length
        if (!response.write(slice)) {
          response.once('drain', pump)
          return
        }
      }
      response.end()
    }
    pump()
  }

  const server: Server = options.tls ? createTlsServer(options.tls, handle) : createServer(handle)
  let connections = 0
  server.on('connection', (socket) => {
    connections++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const {port} = server.address() as AddressInfo

  const scheme = options.tls ? 'https' : 'http'
  return {
    url: (path, host = '127.0.0.1') => `${scheme}://${host}:${port}${path}`,
    port,
    files,
    redirects,
    requests,
    plan,
    bytesSent: () => requests.reduce((sum, r) => sum + r.bytesSent, 0),
    connections: () => connections,
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
