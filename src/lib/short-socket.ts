import {createHash} from 'node:crypto'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

/** Unix socket paths are limited to 108 bytes; deep folders get a short path in the temp dir instead. */
export function socketPath(stateDir: string, name: string): string {
  const direct = join(stateDir, name)
  if (direct.length <= 100) return direct
  const hash = createHash('sha256').update(stateDir).digest('hex').slice(0, 16)
  return join(tmpdir(), `box-${hash}-${name}`)
}
