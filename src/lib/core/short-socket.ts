import {createHash} from 'node:crypto'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

/**
 * Longest socket path kept in the machine's folder. A Unix socket path has 107 bytes at most
 * (108 with the NUL), and ssh binds a ControlPath with 17 characters more (a dot and 16 random
 * ones; it renames the socket into place after): beyond that ssh fails, "too long for Unix
 * domain socket".
 */
const MAX_DIRECT_SOCKET_PATH = 107 - 17

/** Sockets of deep folders get a short path in the temp dir instead (see MAX_DIRECT_SOCKET_PATH). */
export function socketPath(stateDir: string, name: string): string {
  const direct = join(stateDir, name)
  if (Buffer.byteLength(direct) <= MAX_DIRECT_SOCKET_PATH) return direct
  const hash = createHash('sha256').update(stateDir).digest('hex').slice(0, 16)
  return join(tmpdir(), `box-${hash}-${name}`)
}
