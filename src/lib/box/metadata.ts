import {z} from 'zod'

/** The LVM layout a resnap box was built with (box's own key in metadata.json). */
export const LvmLayoutSchema = z
  .strictObject({
    vg: z.string().regex(/^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/, 'a volume group name ([A-Za-z0-9+_.-])'),
    root: z.string(),
    snapshot: z.string(),
    /** Size of the classic snapshot's copy-on-write area, as lvcreate -L takes it ("2G"). */
    snapshot_size: z
      .string()
      .regex(/^\d+(\.\d+)?[KMGT]$/i, 'a size such as 512M or 2G')
      .optional(),
    /** The thin pool holding root and its thin snapshot (a thin box has this instead of snapshot_size). */
    pool: z.string().optional(),
    persistent: z.string(),
    swap: z.string().optional(),
  })
  .refine((lvm) => lvm.snapshot_size !== undefined || lvm.pool !== undefined, {
    message: 'needs snapshot_size (a classic snapshot) or pool (a thin one)',
  })
export type LvmLayout = z.infer<typeof LvmLayoutSchema>

/** box's own part of metadata.json: what a provider needs to boot and log in. */
export const BoxInfoSchema = z.object({
  version: z.string(),
  /** Login user; the box ships the documented insecure key for it until `up` replaces it. */
  user: z.string(),
  /** Kernel and initrd shipped next to box.img, for direct kernel boot. */
  kernel: z.string().optional(),
  initrd: z.string().optional(),
  /** Kernel arguments besides root/resnap ones ("console=ttyS0 quiet"). */
  kernel_args: z.string().default(''),
  lvm: LvmLayoutSchema.optional(),
  /**
   * What resets the root snapshot at boot, as the recipe named it (`initramfs-tools`, `dracut`),
   * and what kind of snapshot it is (`classic`, `thin`). A string, not an enum: a box built by a newer
   * box may name a kind this one does not know, and still boots.
   */
  initramfs: z.string().optional(),
  snapshot: z.string().optional(),
  recipe_hash: z.string().optional(),
  /** Protocol version of box-agent, when the image runs it (status then asks it, not ssh + sudo). */
  agent: z.number().int().positive().optional(),
  /**
   * A bare cloud image (`box add NAME IMAGE.qcow2`): no login of its own, configured at each
   * boot by cloud-init from the NoCloud seed box hands it (src/lib/box/cloud-init.ts).
   */
  cloud_init: z.boolean().optional(),
})
export type BoxInfo = z.infer<typeof BoxInfoSchema>

/**
 * metadata.json of a .box: Vagrant's keys (provider, format, virtual_size in GB as
 * vagrant-libvirt writes it) plus box's own under `box`. Unknown keys are kept.
 */
export const BoxMetadataSchema = z.looseObject({
  provider: z.string(),
  format: z.string().optional(),
  virtual_size: z.number().optional(),
  /** The provider of the box this one was converted from by box (box-conversion.ts). */
  converted_from: z.string().optional(),
  box: BoxInfoSchema.optional(),
})
export type BoxMetadata = z.infer<typeof BoxMetadataSchema>

/** Box providers a host provider can run as they are (vagrant-libvirt boxes are QEMU boxes). */
export const COMPATIBLE_BOX_PROVIDERS: Record<string, string[]> = {
  qemu: ['qemu', 'libvirt'],
  virtualbox: ['virtualbox'],
}
