/**
 * Which boxes box converts for which host provider. A box runs as it is under the host
 * providers COMPATIBLE_BOX_PROVIDERS lists; for the other one it gets a converted copy,
 * stored next to it as NAME/VERSION/<storedAs> with `converted_from` in its metadata:
 *
 *   Vagrant VirtualBox box (OVF + VMDK)  → libvirt box (qcow2) for QEMU
 *   libvirt/qemu box (qcow2)             → virtualbox box (VDI) for VirtualBox
 */
import {convertForVirtualBox, convertVirtualBoxForQemu, type ConvertOptions} from '../../providers/virtualbox/convert.js'
import {COMPATIBLE_BOX_PROVIDERS} from '../box/metadata.js'
import {findOnPath} from '../core/exec.js'

export interface BoxConversion {
  /** The box provider the converted copy is stored under. */
  storedAs: string
  /** What the conversion is for, in progress lines: "QEMU (VMDK → qcow2)". */
  label: string
  convert(sourceDir: string, targetDir: string, options: ConvertOptions): Promise<unknown>
}

const CONVERSIONS: Array<BoxConversion & {hostProvider: string; from: readonly string[]}> = [
  {hostProvider: 'qemu', from: ['virtualbox'], storedAs: 'libvirt', label: 'QEMU (VMDK → qcow2)', convert: convertVirtualBoxForQemu},
  {hostProvider: 'virtualbox', from: COMPATIBLE_BOX_PROVIDERS.qemu!, storedAs: 'virtualbox', label: 'VirtualBox (qcow2 → VDI)', convert: convertForVirtualBox},
]

/** How a box for `boxProvider` becomes one `hostProvider` runs; undefined when it runs as it is, or cannot be converted. */
export function conversionFor(boxProvider: string, hostProvider: string): BoxConversion | undefined {
  return CONVERSIONS.find((conversion) => conversion.hostProvider === hostProvider && conversion.from.includes(boxProvider))
}

/** Box providers an installed box may have to be converted from for `hostProvider`. */
export function providersConvertibleFor(hostProvider: string): readonly string[] {
  return CONVERSIONS.find((conversion) => conversion.hostProvider === hostProvider)?.from ?? []
}

/**
 * The host providers `box add` stores a box for: QEMU always (box's default provider;
 * qemu-img is one of its required tools), VirtualBox when VBoxManage is on PATH.
 */
export async function hostProvidersOnThisHost(): Promise<string[]> {
  return ['qemu', ...((await findOnPath('VBoxManage')) ? ['virtualbox'] : [])]
}
