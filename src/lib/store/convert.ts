/**
 * Which boxes box converts for which host provider. A box runs as it is under the host
 * providers COMPATIBLE_BOX_PROVIDERS lists; for the other one it gets a converted copy,
 * stored next to it as NAME/VERSION/<storedAs> with `converted_from` in its metadata.
 * The conversions themselves are the providers' (providers/conversions.ts):
 *
 *   Vagrant VirtualBox box (OVF + VMDK)  → libvirt box (qcow2) for QEMU
 *   libvirt/qemu box (qcow2)             → virtualbox box (VDI) for VirtualBox
 */
import {boxConversionsFor} from '../../providers/conversions.js'
import type {BoxConversion} from '../../providers/provider.js'
import {findOnPath} from '../core/exec.js'

export type {BoxConversion} from '../../providers/provider.js'

/** How a box for `boxProvider` becomes one `hostProvider` runs; undefined when it runs as it is, or cannot be converted. */
export function conversionFor(boxProvider: string, hostProvider: string): BoxConversion | undefined {
  return boxConversionsFor(hostProvider).find((conversion) => conversion.from.includes(boxProvider))
}

/** Box providers an installed box may have to be converted from for `hostProvider`. */
export function providersConvertibleFor(hostProvider: string): readonly string[] {
  return boxConversionsFor(hostProvider)[0]?.from ?? []
}

/**
 * The host providers `box add` stores a box for: QEMU always (box's default provider;
 * qemu-img is one of its required tools), VirtualBox when VBoxManage is on PATH.
 */
export async function hostProvidersOnThisHost(): Promise<string[]> {
  return ['qemu', ...((await findOnPath('VBoxManage')) ? ['virtualbox'] : [])]
}
