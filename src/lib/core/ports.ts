import {createServer} from 'node:net'

import {BoxError} from './errors.js'

/** A host port forwarded to a guest port: the Boxfile's forwarded_ports, resolved, as providers take them. */
export interface ForwardedPort {
  guest: number
  host: number
  hostIp: string
  protocol: 'tcp' | 'udp'
}

/** A TCP port on `host` that is free right now (the OS picks it). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, host, () => {
      const address = server.address()
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      )
    })
  })
}

/** Whether `port` on `host` can be bound now. */
export async function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.unref()
    server.once('error', () => resolve(false))
    server.listen(port, host, () => server.close(() => resolve(true)))
  })
}

/** Each forward whose host port is taken moves to the next free port above it. */
export async function availableForwards<T extends ForwardedPort>(forwards: readonly T[]): Promise<T[]> {
  const chosen: T[] = []
  for (const forward of forwards) {
    let host = forward.host
    const taken = (port: number) => chosen.some((c) => c.host === port && c.protocol === forward.protocol)
    while (forward.protocol === 'tcp' && (taken(host) || !(await isPortFree(host, forward.hostIp)))) {
      host++
      if (host > 65_535)
        throw new BoxError(`no free host port at or above ${forward.host} for guest port ${forward.guest}`)
    }
    chosen.push({...forward, host})
  }
  return chosen
}
