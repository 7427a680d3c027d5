import type {ForwardedPort} from '../../lib/ports.js'
import {accelArgs, type Accel} from './accel.js'

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
  qmpSocket: string
  serialLog: string
  pidFile: string
  /** systemd credentials handed to the guest through SMBIOS type 11 (no secrets: visible in the process list). */
  smbiosCredentials?: Record<string, string>
  /** Fork into the background once the guest is set up (the parent exits with QEMU's startup status). */
  daemonize?: boolean
}

export function hostfwd(forward: ForwardedPort): string {
  return `hostfwd=${forward.protocol}:${forward.hostIp}:${forward.host}-:${forward.guest}`
}

export function buildQemuArgs(spec: QemuLaunchSpec): string[] {
  const args = [
    '-name', `box-${spec.name},process=box-${spec.name}`,
    '-machine', 'pc',
    ...accelArgs(spec.accel),
    '-smp', String(spec.cpus),
    '-m', String(spec.memoryMiB),
    '-nodefaults', '-no-user-config', '-display', 'none',
    // discard=unmap lets an lvremove in the guest give blocks back to the overlay.
    '-drive', `file=${spec.disk},if=virtio,format=qcow2,discard=unmap,detect-zeroes=unmap`,
    '-netdev', ['user', 'id=net0', ...spec.forwards.map(hostfwd)].join(','),
    // romfile= skips the iPXE option ROM: nothing boots from the network.
    '-device', 'virtio-net-pci,netdev=net0,romfile=',
    // sshd and the kernel want entropy early; without it a TCG boot can stall.
    '-device', 'virtio-rng-pci',
    '-serial', `file:${spec.serialLog}`,
    '-qmp', `unix:${spec.qmpSocket},server=on,wait=off`,
    '-pidfile', spec.pidFile,
  ]
  if (spec.directBoot) {
    args.push('-kernel', spec.directBoot.kernel)
    if (spec.directBoot.initrd) args.push('-initrd', spec.directBoot.initrd)
    args.push('-append', spec.directBoot.append)
  }
  for (const [name, value] of Object.entries(spec.smbiosCredentials ?? {})) {
    args.push('-smbios', `type=11,value=io.systemd.credential:${name}=${value}`)
  }
  if (spec.daemonize) args.push('-daemonize')
  return args
}
