/**
 * The provider registry: the one place that knows which providers exist. lib asks it for a
 * provider by the Boxfile's name (and ./conversions.ts for the box conversions a host
 * provider offers), and never imports a provider's own modules. Kept free of zod and the
 * conversion code: box ssh and box status load it and must start fast.
 */
import {BoxError, ExitCode} from '../lib/core/errors.js'
import {defaultCacheDir} from '../lib/core/paths.js'
import type {Provider} from './provider.js'
import {QemuProvider} from './qemu/index.js'
import {VirtualBoxProvider} from './virtualbox/index.js'

const PROVIDERS: Record<string, (cacheDir: string) => Provider> = {
  qemu: (cacheDir) => new QemuProvider(cacheDir),
  virtualbox: () => new VirtualBoxProvider(),
}

/** The provider a Boxfile's `provider:` names; a usage error for one this version does not have. */
export function providerFor(name: string, cacheDir = defaultCacheDir()): Provider {
  const create = Object.hasOwn(PROVIDERS, name) ? PROVIDERS[name] : undefined
  if (!create) {
    throw new BoxError(`provider "${name}" is not available in this version of box`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['use provider: qemu in the Boxfile'],
    })
  }
  return create(cacheDir)
}
