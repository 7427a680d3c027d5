/**
 * The box conversions each host provider offers (the other half of the registry in
 * ./index.ts): boxes of another provider it runs from a converted copy, and how.
 */
import {COMPATIBLE_BOX_PROVIDERS} from '../lib/box/metadata.js'
import type {BoxConversion} from './provider.js'
import {convertForVirtualBox, convertVirtualBoxForQemu} from './virtualbox/convert.js'

export type ProviderConversion = BoxConversion & {from: readonly string[]}

const CONVERSIONS: Record<string, ProviderConversion[]> = {
  qemu: [{from: ['virtualbox'], storedAs: 'libvirt', label: 'QEMU (VMDK → qcow2)', convert: convertVirtualBoxForQemu}],
  virtualbox: [
    {
      from: COMPATIBLE_BOX_PROVIDERS.qemu!,
      storedAs: 'virtualbox',
      label: 'VirtualBox (qcow2 → VDI)',
      convert: convertForVirtualBox,
    },
  ],
}

/** The conversions `hostProvider` offers (none for a provider box does not know). */
export function boxConversionsFor(hostProvider: string): readonly ProviderConversion[] {
  return Object.hasOwn(CONVERSIONS, hostProvider) ? CONVERSIONS[hostProvider]! : []
}
