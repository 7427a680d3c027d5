import {homedir} from 'node:os'
import {join} from 'node:path'

/**
 * Where box keeps global data (the box store) and caches. Commands get these from
 * oclif's config, which honours BOX_DATA_DIR and BOX_CACHE_DIR; library callers
 * (tests, benchmarks) use this same resolution.
 */
export function defaultDataDir(): string {
  return process.env.BOX_DATA_DIR ?? join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'box')
}

export function defaultCacheDir(): string {
  return process.env.BOX_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'box')
}

/**
 * The project tree (boxes/, initramfs/, provisioners/, static/): three levels above
 * src/lib/core, dist/lib/core and dist/lib/bundle (the fast path's bundle keeps that depth).
 */
export const PROJECT_ROOT = new URL('../../../', import.meta.url).pathname.replace(/\/$/, '')
