/**
 * The provider registry: the one place that knows which providers exist. lib asks it for a
 * provider by the Boxfile's name and for the box conversions a host provider offers, and
 * never imports a provider's own modules.
 */
import {COMPATIBLE_BOX_PROVIDERS} from '../lib/box/metadata.js'
import {BoxError, ExitCode} from '../lib/core/errors.js'
import {defaultCacheDir} from '../lib/core/paths.js'
import type {BoxConversion, Provider} from './provider.js'
import {QemuProvider} from './qemu/index.js'
import {VirtualBoxProvider} from './virtualbox/index.js'
import {convertForVirtualBox, convertVirtualBoxForQemu} from './virtualbox/convert.js'

interface ProviderEntry {
  create(cacheDir: string): Provider
  /** Boxes of other providers this one runs from a converted copy, and how they are converted. */
  conversions: Array<BoxConversion & {from: readonly string[]}>
}

const PROVIDERS: Record<string, ProviderEntry> = {
  qemu: {
    create: (cacheDir) => new QemuProvider(cacheDir),
    conversions: [{from: ['virtualbox'], storedAs: 'libvirt', label: 'QEMU (VMDK → qcow2)', convert: convertVirtualBoxForQemu}],
  },
  virtualbox: {
    create: () => new VirtualBoxProvider(),
    conversions: [{from: COMPATIBLE_BOX_PROVIDERS.qemu!, storedAs: 'virtualbox', label: 'VirtualBox (qcow2 → VDI)', convert: convertForVirtualBox}],
  },
}

/** The provider a Boxfile's `provider:` names; a usage error for one this version does not have. */
export function providerFor(name: string, cacheDir = defaultCacheDir()): Provider {
  const entry = Object.hasOwn(PROVIDERS, name) ? PROVIDERS[name] : undefined
  if (!entry) {
    throw new BoxError(`provider "${name}" is not available in this version of box`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['use provider: qemu in the Boxfile'],
    })
  }
  return entry.create(cacheDir)
}

/** The conversions `hostProvider` offers (none for a provider box does not know). */
export function boxConversionsFor(hostProvider: string): ReadonlyArray<BoxConversion & {from: readonly string[]}> {
  return Object.hasOwn(PROVIDERS, hostProvider) ? PROVIDERS[hostProvider]!.conversions : []
}
