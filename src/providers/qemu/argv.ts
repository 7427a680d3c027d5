import type {ForwardedPort} from '../../lib/core/ports.js'
import type {ExtraDrive} from '../provider.js'
import {accelArgs, type Accel} from './accel.js'
import {AGENT_PORT_NAME} from '../../lib/box/agent-protocol.js'

export interface DirectBoot {
  kernel: string
  initrd?: string
  append: string
}

/** Everything one QEMU process needs; the argv is a pure function of it. */
export interface QemuLaunchSpec {
  name: string
  accel: Accel
  cpus: number
  memoryMiB: number
  /** The machine's qcow2 overlay. */
  disk: string
  /** Direct kernel boot; without it the disk's own boot loader (grub) runs. */
  directBoot?: DirectBoot
  forwards: ForwardedPort[]
  /** No NIC at all (box run --network off); forwards are ignored then. */
  noNetwork?: boolean
  /** Raw disks after the machine's own (box run's input and output images). */
  drives?: ExtraDrive[]
  qmpSocket: string
  serialLog: string
  pidFile: string
  /** Base path of the FIFOs behind the box-agent port (agent.ts); no port without it. */
  agentFifo?: string
  /** systemd credentials handed to the guest through SMBIOS type 11 (no secrets: visible in the process list). */
  smbiosCredentials?: Record<string, string>
  /** SMBIOS type 1 SKU: the boot choice the box's grub reads on a firmware boot (boot-choice.ts). */
  smbiosSku?: string
  /** Fork into the background once the guest is set up (the parent exits with QEMU's startup status). */
  daemonize?: boolean
  /** Guest without a network: user-mode networking isolated from host and outside (forwards still reach it). */
  restrictNetwork?: boolean
  /** Wait for a saved state instead of booting: QMP `migrate-incoming` names it (snapshot.ts). */
  incoming?: boolean
}

export function hostfwd(forward: ForwardedPort): string {
  return `hostfwd=${forward.protocol}:${forward.hostIp}:${forward.host}-:${forward.guest}`
}

/** A path inside a QEMU option list ("file=PATH,if=virtio"): a comma is written twice. */
export function optionValue(path: string): string {
  return path.replaceAll(',', ',,')
}

/** No direct kernel boot and more disks than the machine's own (a cloud image's seed, a persistent disk). */
function firmwareBootWithDrives(spec: QemuLaunchSpec): boolean {
  return !spec.directBoot && (spec.drives?.length ?? 0) > 0
}

export function buildQemuArgs(spec: QemuLaunchSpec): string[] {
  const args = [
    '-name',
    `box-${spec.name},process=box-${spec.name}`,
    '-machine',
    'pc',
    ...accelArgs(spec.accel),
    '-smp',
    String(spec.cpus),
    '-m',
    String(spec.memoryMiB),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    // No ACPI hotplug on the root bus (box never hotplugs): QEMU then gives its slots no _SUN,
    // so a guest names its NIC by PCI path alone, and the NIC sits at 00:03.0 as VirtualBox
    // puts it: enp0s3, the name a guest installed on VirtualBox wrote in its network config
    // (with _SUN it would be ens3). Made before every other PCI device so no automatically
    // placed one takes slot 3 first.
    '-global',
    'PIIX4_PM.acpi-root-pci-hotplug=off',
    ...(spec.noNetwork
      ? []
      : [
          '-netdev',
          ['user', 'id=net0', ...(spec.restrictNetwork ? ['restrict=on'] : []), ...spec.forwards.map(hostfwd)].join(
            ',',
          ),
          // romfile= skips the iPXE option ROM: nothing boots from the network.
          '-device',
          'virtio-net-pci,netdev=net0,romfile=,addr=0x3',
        ]),
    // discard=unmap lets an lvremove in the guest give blocks back to the overlay.
    ...(firmwareBootWithDrives(spec)
      ? [
          // The firmware boots the first disk it finds, and -drive if=virtio devices are made after
          // every -device: the machine's own disk must say it is the one (bootindex), or SeaBIOS
          // tries the seed or the persistent disk and hangs silently.
          '-drive',
          `file=${optionValue(spec.disk)},if=none,id=disk0,format=qcow2,discard=unmap,detect-zeroes=unmap`,
          '-device',
          'virtio-blk-pci,drive=disk0,bootindex=0',
        ]
      : ['-drive', `file=${optionValue(spec.disk)},if=virtio,format=qcow2,discard=unmap,detect-zeroes=unmap`]),
    ...(spec.drives ?? []).flatMap((drive, index) => [
      '-drive',
      `file=${optionValue(drive.file)},if=none,id=extra${index},format=raw${drive.readOnly ? ',readonly=on' : ''}`,
      '-device',
      `virtio-blk-pci,drive=extra${index},serial=${drive.serial}`,
    ]),
    // sshd and the kernel want entropy early; without it a TCG boot can stall.
    '-device',
    'virtio-rng-pci',
    // A new generation ID at every start: a kernel with the vmgenid driver reseeds its RNG
    // when a saved state is restored (guid=auto: a fresh one per QEMU process).
    '-device',
    'vmgenid,guid=auto',
    '-chardev',
    `file,id=serial,path=${optionValue(spec.serialLog)}`,
    '-serial',
    'chardev:serial',
    '-chardev',
    `socket,id=qmp,path=${optionValue(spec.qmpSocket)},server=on,wait=off`,
    '-mon',
    'chardev=qmp,mode=control',
    '-pidfile',
    spec.pidFile,
  ]
  if (spec.agentFifo) {
    args.push(
      '-device',
      'virtio-serial-pci,id=serial0',
      '-chardev',
      `pipe,id=agent,path=${optionValue(spec.agentFifo)}`,
      '-device',
      `virtserialport,bus=serial0.0,chardev=agent,name=${AGENT_PORT_NAME}`,
    )
  }
  if (spec.directBoot) {
    args.push('-kernel', spec.directBoot.kernel)
    if (spec.directBoot.initrd) args.push('-initrd', spec.directBoot.initrd)
    args.push('-append', spec.directBoot.append)
  }
  if (spec.smbiosSku) args.push('-smbios', `type=1,sku=${optionValue(spec.smbiosSku)}`)
  for (const [name, value] of Object.entries(spec.smbiosCredentials ?? {})) {
    args.push('-smbios', `type=11,value=io.systemd.credential:${name}=${value}`)
  }
  // -S: paused after the load whatever state was saved, so box checks the checksum before the guest runs.
  if (spec.incoming) args.push('-S', '-incoming', 'defer')
  if (spec.daemonize) args.push('-daemonize')
  return args
}
