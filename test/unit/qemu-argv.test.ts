import {join} from 'node:path'
import {describe, expect, it} from 'vitest'

import {kernelCommandLine, mapperPath} from '../../src/lib/box/resnap.js'
import {shJoin, shQuote} from '../../src/lib/core/shell-quote.js'
import {socketPath} from '../../src/lib/core/short-socket.js'
import {buildQemuArgs, type QemuLaunchSpec} from '../../src/providers/qemu/argv.js'
import {probeFirmware} from '../../src/providers/qemu/accel.js'
import {directBootFor, launchSpecFor, TCG_KERNEL_ARGS} from '../../src/providers/qemu/instance.js'

const spec: QemuLaunchSpec = {
  name: 'web',
  accel: 'tcg',
  cpus: 2,
  memoryMiB: 1024,
  disk: '/p/.box/machines/web/disk.qcow2',
  forwards: [
    {guest: 22, host: 2222, hostIp: '127.0.0.1', protocol: 'tcp'},
    {guest: 80, host: 8080, hostIp: '127.0.0.1', protocol: 'tcp'},
  ],
  qmpSocket: '/p/qmp.sock',
  serialLog: '/p/serial.log',
  pidFile: '/p/qemu.pid',
}

describe('QEMU argv', () => {
  it('forwards ports on loopback only and wires QMP, serial and pid file', () => {
    const args = buildQemuArgs(spec)
    const netdev = args[args.indexOf('-netdev') + 1]
    expect(netdev).toBe('user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80')
    expect(args).toContain('socket,id=qmp,path=/p/qmp.sock,server=on,wait=off')
    expect(args).toContain('file,id=serial,path=/p/serial.log')
    expect(args.slice(args.indexOf('-accel'), args.indexOf('-accel') + 4)).toEqual([
      '-accel',
      'tcg,thread=multi',
      '-cpu',
      'max,la57=off,erms=off',
    ])
    expect(args).not.toContain('-kernel')
    expect(args).not.toContain('-daemonize')
  })

  it('puts the NIC at 00:03.0 without ACPI slot numbers, before any other PCI device (enp0s3, as under VirtualBox)', () => {
    for (const variant of [
      spec,
      {...spec, directBoot: undefined, drives: [{file: '/m/seed.iso', serial: 'box-cidata', readOnly: true}]},
    ]) {
      const args = buildQemuArgs(variant)
      const nic = args.indexOf('virtio-net-pci,netdev=net0,romfile=,addr=0x3')
      expect(nic).toBeGreaterThan(0)
      expect(args.indexOf('-device')).toBe(nic - 1)
      expect(args.slice(args.indexOf('-global'), args.indexOf('-global') + 2)).toEqual([
        '-global',
        'PIIX4_PM.acpi-root-pci-hotplug=off',
      ])
    }
  })

  it('a job worker without network has no NIC at all, and its job disks carry their serials', () => {
    const args = buildQemuArgs({
      ...spec,
      noNetwork: true,
      drives: [
        {file: '/j/in,1.img', serial: 'box-job-in', readOnly: true},
        {file: '/j/out.img', serial: 'box-job-out'},
      ],
    })
    expect(args).not.toContain('-netdev')
    expect(args.join(' ')).not.toMatch(/virtio-net|hostfwd/)
    expect(args).toContain('file=/j/in,,1.img,if=none,id=extra0,format=raw,readonly=on')
    expect(args).toContain('virtio-blk-pci,drive=extra0,serial=box-job-in')
    expect(args).toContain('file=/j/out.img,if=none,id=extra1,format=raw')
    expect(args).toContain('virtio-blk-pci,drive=extra1,serial=box-job-out')
  })

  it('a firmware boot with more disks names the machine disk as the one to boot (SeaBIOS boots the first disk it finds)', () => {
    const args = buildQemuArgs({
      ...spec,
      directBoot: undefined,
      drives: [{file: '/m/cloud-seed.iso', serial: 'box-cidata', readOnly: true}],
    })
    const main = args.indexOf('virtio-blk-pci,drive=disk0,bootindex=0')
    expect(main).toBeGreaterThan(0)
    expect(args.slice(main - 3, main)).toEqual([
      '-drive',
      expect.stringMatching(/if=none,id=disk0,format=qcow2/),
      '-device',
    ])
    expect(main).toBeLessThan(args.indexOf('virtio-blk-pci,drive=extra0,serial=box-cidata'))
    expect(args.join(' ')).not.toMatch(/if=virtio/)
  })

  it('doubles commas in paths inside option lists, where a single one would start the next option', () => {
    const args = buildQemuArgs({
      ...spec,
      disk: '/a,b/disk.qcow2',
      serialLog: '/a,b/serial.log',
      qmpSocket: '/a,b/qmp.sock',
      agentFifo: '/a,b/agent',
    })
    expect(args).toContain('file=/a,,b/disk.qcow2,if=virtio,format=qcow2,discard=unmap,detect-zeroes=unmap')
    expect(args).toContain('file,id=serial,path=/a,,b/serial.log')
    expect(args).toContain('socket,id=qmp,path=/a,,b/qmp.sock,server=on,wait=off')
    expect(args).toContain('pipe,id=agent,path=/a,,b/agent')
    expect(args).toContain('virtserialport,bus=serial0.0,chardev=agent,name=box.agent')
  })

  it('gives every QEMU a new VM generation ID (the guest reseeds its RNG after a restore)', () => {
    expect(buildQemuArgs(spec).join(' ')).toContain('-device vmgenid,guid=auto')
  })

  it('cuts the network off but keeps the forwards when asked, and waits for a saved state with -incoming defer', () => {
    const args = buildQemuArgs({...spec, restrictNetwork: true, incoming: true, daemonize: true})
    expect(args[args.indexOf('-netdev') + 1]).toBe(
      'user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80',
    )
    expect(args.slice(-4)).toEqual(['-S', '-incoming', 'defer', '-daemonize'])
    expect(buildQemuArgs(spec)).not.toContain('-incoming')
  })

  it('has no agent port unless asked', () => {
    expect(buildQemuArgs(spec).join(' ')).not.toContain('virtserialport')
  })

  it('boots the kernel directly when asked', () => {
    const args = buildQemuArgs({
      ...spec,
      accel: 'kvm',
      directBoot: {kernel: '/b/vmlinuz', initrd: '/b/initrd.img', append: 'root=/dev/x ro resnap'},
      daemonize: true,
    })
    expect(args.slice(args.indexOf('-kernel'))).toEqual([
      '-kernel',
      '/b/vmlinuz',
      '-initrd',
      '/b/initrd.img',
      '-append',
      'root=/dev/x ro resnap',
      '-daemonize',
    ])
    expect(args).toContain('host')
  })
})

describe('resnap command line', () => {
  const lvm = {
    vg: 'vagrant-pipeline',
    root: 'root',
    snapshot: 'root_snap',
    snapshot_size: '45G',
    persistent: 'persistent',
  }

  it("is the seed's grub line, with dashes doubled in mapper names", () => {
    expect(kernelCommandLine(lvm, {resnap: true})).toBe(
      'root=/dev/mapper/vagrant--pipeline-root_snap ro volgroup=vagrant-pipeline lvroot=root lvsnap=root_snap lvsize=45G resnap',
    )
    expect(kernelCommandLine(lvm, {resnap: false}, 'console=ttyS0')).toBe(
      'root=/dev/mapper/vagrant--pipeline-root_snap ro volgroup=vagrant-pipeline lvroot=root lvsnap=root_snap lvsize=45G console=ttyS0',
    )
  })

  it('boots the origin with --base and never resnaps it', () => {
    expect(kernelCommandLine(lvm, {resnap: true, base: true})).toMatch(
      /^root=\/dev\/mapper\/vagrant--pipeline-root ro .* lvsize=45G$/,
    )
    expect(mapperPath('a-b', 'c-d')).toBe('/dev/mapper/a--b-c--d')
  })
})

describe('shell quoting', () => {
  it('quotes what the remote shell would interpret', () => {
    expect(shQuote('plain-word_1.2/x')).toBe('plain-word_1.2/x')
    expect(shQuote("it's $HOME; rm -rf /")).toBe(`'it'\\''s $HOME; rm -rf /'`)
    expect(shJoin(['echo', 'a b', ''])).toBe("echo 'a b' ''")
  })
})

describe('socket paths', () => {
  it('moves sockets of deep folders out of the 108-byte limit', () => {
    expect(socketPath('/p/.box/machines/web', 'qmp.sock')).toBe('/p/.box/machines/web/qmp.sock')
    const deep = `/${'d'.repeat(120)}/.box/machines/web`
    const short = socketPath(deep, 'qmp.sock')
    expect(short.length).toBeLessThan(108)
    expect(short).toBe(socketPath(deep, 'qmp.sock'))
  })

  it('leaves room for the 17 characters ssh adds to a ControlPath while it binds it', () => {
    // 91 bytes in the folder: ssh would bind 108 and fail.
    const stateDir = `/${'d'.repeat(64)}/.box/machines/web`
    expect(join(stateDir, 'ssh.ctl').length).toBe(91)
    expect(socketPath(stateDir, 'ssh.ctl').length + 17).toBeLessThanOrEqual(107)
    expect(socketPath(stateDir.slice(1), 'ssh.ctl')).toBe(join(stateDir.slice(1), 'ssh.ctl'))
  })
})

describe('accel probe firmware', () => {
  it('is 64 KiB with the reset vector jumping to the code at F000:0000', () => {
    const image = probeFirmware()
    expect(image.length).toBe(0x10000)
    expect(image.subarray(0xfff0, 0xfff5).toString('hex')).toBe('ea000000f0')
    expect(image[0]).toBe(0xfa) // cli
  })
})

describe('direct kernel boot command line', () => {
  const box = {
    dir: '/b',
    metadata: {
      provider: 'libvirt',
      format: 'qcow2',
      virtual_size: 8,
      box: {
        version: '1',
        user: 'box',
        kernel: 'vmlinuz',
        initrd: 'initrd.img',
        kernel_args: 'console=ttyS0',
        lvm: {vg: 'box', root: 'root', snapshot: 'root_snap', snapshot_size: '2G', persistent: 'persistent'},
      },
    },
  } as unknown as Parameters<typeof directBootFor>[0]

  it('adds the TCG-only arguments under TCG, and only there', () => {
    const tcg = directBootFor(box, {resnap: true}, 'tcg')!
    const kvm = directBootFor(box, {resnap: true}, 'kvm')!
    expect(kvm.append).toBe(
      'root=/dev/mapper/box-root_snap ro volgroup=box lvroot=root lvsnap=root_snap lvsize=2G resnap console=ttyS0',
    )
    expect(tcg.append).toBe(`${kvm.append} ${TCG_KERNEL_ARGS}`)
    expect(TCG_KERNEL_ARGS.split(' ')).toEqual(['mitigations=off', 'tsc=reliable'])
    expect(kvm.kernel).toBe('/b/vmlinuz')
  })
  describe('the boot choice on a firmware boot (SMBIOS type 1 SKU, read by the box grub)', () => {
    const boot = (image: typeof box, choice: {resnap: boolean; base?: boolean}, firmwareBoot?: boolean) =>
      launchSpecFor(
        {
          name: 'web',
          files: {overlay: '/p/disk.qcow2', qmpSocket: '/p/qmp', serialLog: '/p/serial', pidFile: '/p/pid'},
          box: image,
          accel: 'tcg',
          cpus: 1,
          memoryMiB: 512,
          choice,
          firmwareBoot,
        } as unknown as Parameters<typeof launchSpecFor>[0],
        2222,
        [],
      )
    const noKernel = {...box, metadata: {...box.metadata, box: {...box.metadata.box!, kernel: undefined}}}
    const skuArg = (spec: QemuLaunchSpec) => {
      const args = buildQemuArgs(spec)
      return args.flatMap((arg, i) => (arg === '-smbios' && args[i + 1]!.startsWith('type=1,') ? [args[i + 1]] : []))
    }

    it('passes the entry for each choice when the box has no kernel for direct boot, or firmware boot is asked', () => {
      expect(skuArg(boot(noKernel, {resnap: true}))).toEqual(['type=1,sku=box-boot=resnap'])
      expect(skuArg(boot(noKernel, {resnap: false}))).toEqual(['type=1,sku=box-boot=keep'])
      expect(skuArg(boot(noKernel, {resnap: false, base: true}))).toEqual(['type=1,sku=box-boot=origin'])
      expect(skuArg(boot(box, {resnap: false}, true))).toEqual(['type=1,sku=box-boot=keep'])
    })

    it('passes none on a direct kernel boot (the command line says it) or for a box without the LVM layout', () => {
      expect(skuArg(boot(box, {resnap: true}))).toEqual([])
      const plain = {...noKernel, metadata: {...noKernel.metadata, box: {...noKernel.metadata.box!, lvm: undefined}}}
      expect(skuArg(boot(plain, {resnap: false}))).toEqual([])
    })
  })
})
