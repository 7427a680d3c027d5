/**
 * Resnap through the box's own grub: under VirtualBox, and under QEMU when it boots
 * the disk's firmware (a box without a kernel for direct boot). Neither passes a kernel
 * command line then, so the box's grub decides which entry boots. The host tells grub
 * its choice for one boot through SMBIOS: VirtualBox's DMI "System SKU" (extradata, set
 * while the VM is off) or QEMU's `-smbios type=1,sku=…`, read by grub's `smbios` command.
 * A guest can still pick the next boot itself with grub's `next_entry` (`grub-reboot
 * origin`), kept in grubenv on the plain /boot partition; that one-shot choice wins over
 * the host's.
 */
import type {BootChoice} from './resnap.js'

/** Where VirtualBox takes the SMBIOS type 1 SKU string from (BIOS firmware). */
export const DMI_SYSTEM_SKU_KEY = 'VBoxInternal/Devices/pcbios/0/Config/DmiSystemSKU'

/** grub menu entry ids (`menuentry … --id`): the default, and the two one-boot alternatives. */
export const GRUB_ENTRY = {
  resnap: 'resnap',
  keep: 'keep',
  origin: 'origin',
} as const
export type GrubEntry = (typeof GRUB_ENTRY)[keyof typeof GRUB_ENTRY]

/** The entry a boot choice needs: --base boots the origin, --no-resnap keeps the snapshot. */
export function grubEntryFor(choice: BootChoice): GrubEntry {
  if (choice.base) return GRUB_ENTRY.origin
  return choice.resnap ? GRUB_ENTRY.resnap : GRUB_ENTRY.keep
}

/** The SKU string the provider writes ("box-boot=origin"); grub compares it verbatim. */
export function dmiSkuFor(choice: BootChoice): string {
  return `box-boot=${grubEntryFor(choice)}`
}

/**
 * The lines grub.cfg needs before its menu entries (src/build/image.ts writes grub.cfg;
 * this is the text to put there, next to `--id resnap|keep|origin` on the entries).
 * Order: a one-shot next_entry from grubenv, then the host's SKU, else the default (resnap).
 * An unknown or unreadable SKU leaves the default: a worker box never boots stale by accident.
 */
export function grubBootSelection(): string {
  return `# box: which entry boots. 1) a one-shot next_entry in grubenv (grub-reboot in the guest);
# 2) the host's choice in the SMBIOS system SKU (VirtualBox DMI / QEMU -smbios type=1,sku=…);
# 3) the default: resnap.
set default=${GRUB_ENTRY.resnap}
if [ -s $prefix/grubenv ]; then
  load_env
fi
if [ "\${next_entry}" ]; then
  set default="\${next_entry}"
  set next_entry=
  save_env next_entry
else
  insmod smbios
  if smbios --type 1 --get-string 25 --set box_sku; then
    if [ "\${box_sku}" = "${dmiSkuFor({resnap: false, base: true})}" ]; then set default=${GRUB_ENTRY.origin}; fi
    if [ "\${box_sku}" = "${dmiSkuFor({resnap: false})}" ]; then set default=${GRUB_ENTRY.keep}; fi
  fi
fi
`
}
