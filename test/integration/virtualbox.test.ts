/**
 * The VirtualBox provider against the VBoxManage STAND-IN (test/fixtures/vboxmanage-standin):
 * VirtualBox is not installable on these machines, so these tests check the exact command
 * lines box sends and how it handles VirtualBox's documented errors, not real VMs.
 */
import {existsSync} from 'node:fs'
import {mkdir, readFile, readdir, writeFile} from 'node:fs/promises'
import {createServer, type Server} from 'node:net'
import {delimiter, join} from 'node:path'

import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {BoxError} from '../../src/lib/core/errors.js'
import {HOST_TOOLS} from '../../src/lib/core/host-tools.js'
import {providerFor} from '../../src/providers/index.js'
import {freePort} from '../../src/lib/core/ports.js'
import type {ForwardedPort} from '../../src/lib/core/ports.js'
import type {MachineHandle} from '../../src/providers/provider.js'
import {DMI_SYSTEM_SKU_KEY, dmiSkuFor, grubBootSelection, grubEntryFor} from '../../src/lib/box/boot-choice.js'
import {convertForVirtualBox} from '../../src/providers/virtualbox/convert.js'
import {
  baseVmName,
  readVirtualBoxRecord,
  removeVirtualBoxBase,
  VirtualBoxProvider,
} from '../../src/providers/virtualbox/index.js'
import {
  modifyVm,
  parseMachineReadable,
  showVmInfo,
  vboxVersion,
  VBoxManageError,
} from '../../src/providers/virtualbox/vboxmanage.js'
import {makeTempDir} from '../fixtures/boxes.js'

const STANDIN_DIR = new URL('../fixtures/vboxmanage-standin', import.meta.url).pathname
const STANDIN = join(STANDIN_DIR, 'VBoxManage')
const LVM = {vg: 'vagrant-pipeline', root: 'root', snapshot: 'root_snap', snapshot_size: '2G', persistent: 'persistent'}

let dir: string
let cleanup: () => Promise<void>
let basesDir: string
let provider: VirtualBoxProvider
const savedEnv = {
  PATH: process.env.PATH,
  state: process.env.VBOXMANAGE_STANDIN_STATE,
  acpi: process.env.VBOXMANAGE_STANDIN_ACPI,
}
const servers: Server[] = []

beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-vbox-'))
  basesDir = join(dir, 'data', 'virtualbox')
  process.env.VBOXMANAGE_STANDIN_STATE = join(dir, 'standin')
  process.env.PATH = `${STANDIN_DIR}${delimiter}${savedEnv.PATH}`
  delete process.env.VBOXMANAGE_STANDIN_ACPI
  provider = new VirtualBoxProvider({basesDir, pollMs: 20})
})
afterEach(async () => {
  for (const server of servers.splice(0)) await new Promise((done) => server.close(done))
  process.env.PATH = savedEnv.PATH
  if (savedEnv.state === undefined) delete process.env.VBOXMANAGE_STANDIN_STATE
  else process.env.VBOXMANAGE_STANDIN_STATE = savedEnv.state
  if (savedEnv.acpi === undefined) delete process.env.VBOXMANAGE_STANDIN_ACPI
  else process.env.VBOXMANAGE_STANDIN_ACPI = savedEnv.acpi
  await cleanup()
})

/** Every argv the stand-in received, in order. */
async function allCalls(): Promise<string[][]> {
  const text = await readFile(join(dir, 'standin', 'argv.jsonl'), 'utf8').catch(() => '')
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as string[])
}

/** The calls that change something (state queries left out: the liveness watch polls in the background). */
async function changingCalls(): Promise<string[][]> {
  return (await allCalls()).filter((argv) => argv[0] !== 'showvminfo' && argv[0] !== 'list')
}

/** Forget the calls so far, so a test can check the next step's calls alone. */
async function clearCalls(): Promise<void> {
  await writeFile(join(dir, 'standin', 'argv.jsonl'), '')
}

async function standin(...args: string[]) {
  return execa(STANDIN, args, {reject: false})
}

/** A Vagrant-style VirtualBox box: box.ovf + its VMDK, in the store's NAME/VERSION/PROVIDER layout. */
async function makeOvfBox(name = 'demo'): Promise<MachineHandle['box']> {
  const boxDir = join(dir, 'data', 'boxes', name, '1.0.0', 'virtualbox')
  await mkdir(boxDir, {recursive: true})
  await writeFile(join(boxDir, 'box-disk001.vmdk'), 'not really a vmdk: the stand-in only copies it')
  await writeFile(
    join(boxDir, 'box.ovf'),
    `<?xml version="1.0"?>\n<Envelope><References><File ovf:id="file1" ovf:href="box-disk001.vmdk"/></References></Envelope>\n`,
  )
  const metadata = {provider: 'virtualbox'}
  await writeFile(join(boxDir, 'metadata.json'), JSON.stringify(metadata))
  return {dir: boxDir, metadata}
}

/** A box built by box (libvirt format, LVM resnap layout), converted for VirtualBox with the real qemu-img. */
async function makeConvertedResnapBox(): Promise<MachineHandle['box']> {
  const boxDir = join(dir, 'data', 'boxes', 'worker', '2.0.0', 'virtualbox')
  await mkdir(boxDir, {recursive: true})
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', join(boxDir, 'box.img'), '16M'])
  await writeFile(
    join(boxDir, 'metadata.json'),
    JSON.stringify({
      provider: 'libvirt',
      format: 'qcow2',
      virtual_size: 1,
      box: {version: '2.0.0', user: 'vagrant', kernel_args: 'console=ttyS0', lvm: LVM},
    }),
  )
  await convertForVirtualBox(boxDir)
  const metadata = JSON.parse(await readFile(join(boxDir, 'metadata.json'), 'utf8'))
  return {dir: boxDir, metadata}
}

function machine(name: string, box: MachineHandle['box'], forwardedPorts: ForwardedPort[] = []): MachineHandle {
  return {name, stateDir: join(dir, 'project', '.box', 'machines', name), box, cpus: 2, memoryMiB: 1024, forwardedPorts}
}

async function vmOf(handle: MachineHandle): Promise<string> {
  const record = await readVirtualBoxRecord(handle.stateDir)
  if (!record) throw new Error(`no record in ${handle.stateDir}`)
  return record.vm
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise
  } catch (error) {
    return error as Error
  }
  throw new Error('expected a rejection')
}

/** A real listener holding a host port, as another program would. */
async function occupy(port: number): Promise<void> {
  const server = createServer()
  await new Promise<void>((done) => server.listen(port, '127.0.0.1', done))
  servers.push(server)
}

describe('create', () => {
  it('imports an OVF box once, snapshots it and makes each machine a linked clone in its state dir', async () => {
    const box = await makeOvfBox()
    const one = machine('one', box)
    const two = machine('two', box)
    await provider.create(one)
    await provider.create(two)
    const base = baseVmName(box.dir)
    expect(base).toMatch(/^box-base-demo-1\.0\.0-[0-9a-f]{10}$/)
    expect(await changingCalls()).toEqual([
      ['import', join(box.dir, 'box.ovf'), '--vsys', '0', '--vmname', base, '--basefolder', basesDir],
      ['snapshot', base, 'take', 'base'],
      [
        'clonevm',
        base,
        '--snapshot',
        'base',
        '--options',
        'link',
        '--name',
        await vmOf(one),
        '--basefolder',
        one.stateDir,
        '--register',
      ],
      [
        'clonevm',
        base,
        '--snapshot',
        'base',
        '--options',
        'link',
        '--name',
        await vmOf(two),
        '--basefolder',
        two.stateDir,
        '--register',
      ],
    ])
    expect(await vmOf(one)).toMatch(/^box-one-[0-9a-f]{8}$/)
    expect(await provider.state(one)).toBe('poweroff')
    expect(await provider.state(two)).toBe('poweroff')
    // The clone lives in the machine's own folder, its disk a differencing image.
    expect(existsSync(join(one.stateDir, await vmOf(one), `${await vmOf(one)}.vbox`))).toBe(true)
  })

  it('builds the base VM around a converted disk (createvm, virtio NIC, IDE, the store VDI) before snapshotting', async () => {
    const box = await makeConvertedResnapBox()
    const one = machine('one', box)
    await provider.create(one)
    const base = baseVmName(box.dir)
    expect(await changingCalls()).toEqual([
      ['createvm', '--name', base, '--ostype', 'Linux_64', '--basefolder', basesDir, '--register'],
      ['modifyvm', base, '--memory', '1024', '--nic1', 'nat', '--nictype1', 'virtio', '--rtcuseutc', 'on'],
      ['storagectl', base, '--name', 'IDE', '--add', 'ide', '--controller', 'PIIX4'],
      [
        'storageattach',
        base,
        '--storagectl',
        'IDE',
        '--port',
        '0',
        '--device',
        '0',
        '--type',
        'hdd',
        '--medium',
        join(box.dir, 'box.vdi'),
      ],
      ['snapshot', base, 'take', 'base'],
      [
        'clonevm',
        base,
        '--snapshot',
        'base',
        '--options',
        'link',
        '--name',
        await vmOf(one),
        '--basefolder',
        one.stateDir,
        '--register',
      ],
    ])
  })

  it('makes a base VM again when a crash left it half made (registered, never marked finished)', async () => {
    const box = await makeOvfBox()
    const base = baseVmName(box.dir)
    const ovf = join(box.dir, 'box.ovf')
    expect((await standin('import', ovf, '--vsys', '0', '--vmname', base, '--basefolder', basesDir)).exitCode).toBe(0)
    await clearCalls()
    const one = machine('one', box)
    await provider.create(one)
    expect(await changingCalls()).toEqual([
      ['unregistervm', base, '--delete'],
      ['import', ovf, '--vsys', '0', '--vmname', base, '--basefolder', basesDir],
      ['snapshot', base, 'take', 'base'],
      [
        'clonevm',
        base,
        '--snapshot',
        'base',
        '--options',
        'link',
        '--name',
        await vmOf(one),
        '--basefolder',
        one.stateDir,
        '--register',
      ],
    ])
  })

  it('says a libvirt box must be converted when the box folder has only box.img', async () => {
    const boxDir = join(dir, 'data', 'boxes', 'raw', '1', 'libvirt')
    await mkdir(boxDir, {recursive: true})
    await writeFile(join(boxDir, 'box.img'), 'qcow2')
    const error = await rejection(provider.create(machine('one', {dir: boxDir, metadata: {provider: 'libvirt'}})))
    expect(error).toBeInstanceOf(BoxError)
    expect(error.message).toMatch(/no VirtualBox disk/)
    expect((error as BoxError).suggestions.join('\n')).toMatch(/convert/)
  })
})

describe('start and halt', () => {
  it('configures the clone (cpus, memory, NAT on 127.0.0.1, serial log), boots it headless, halts it by ACPI', async () => {
    const box = await makeOvfBox()
    const one = machine('one', box, [{guest: 80, host: await freePort(), hostIp: '127.0.0.1', protocol: 'tcp'}])
    const web = one.forwardedPorts[0]
    await provider.create(one)
    const vm = await vmOf(one)
    await clearCalls()
    const wanted = await freePort()
    const started = await provider.start(one, {choice: {resnap: true}, sshPort: wanted})
    expect(started.sshPort).toBe(wanted)
    expect(started.serialLog).toBe(join(one.stateDir, 'serial.log'))
    expect(started.isAlive()).toBe(true)
    expect(await changingCalls()).toEqual([
      [
        'modifyvm',
        vm,
        '--cpus',
        '2',
        '--memory',
        '1024',
        '--ioapic',
        'on',
        '--nic1',
        'nat',
        '--uart1',
        '0x3F8',
        '4',
        '--uartmode1',
        'file',
        started.serialLog,
        '--natpf1',
        `ssh,tcp,127.0.0.1,${wanted},,22`,
        '--natpf1',
        `tcp${web.host},tcp,127.0.0.1,${web.host},,80`,
      ],
      // No LVM layout in this box's metadata: no boot choice to hand to grub.
      ['startvm', vm, '--type', 'headless'],
    ])
    expect(await provider.state(one)).toBe('running')
    const info = await showVmInfo(vm)
    expect(info.get('Forwarding(0)')).toBe(`ssh,tcp,127.0.0.1,${wanted},,22`)

    await clearCalls()
    expect(await provider.halt(one, {timeoutMs: 5000})).toBe('acpi')
    expect(await changingCalls()).toEqual([['controlvm', vm, 'acpipowerbutton']])
    expect(await provider.state(one)).toBe('poweroff')

    // The next boot replaces last boot's rules (deleted by name, then added, in one modifyvm).
    await clearCalls()
    await provider.start(one, {choice: {resnap: true}, sshPort: wanted})
    const [modify] = await changingCalls()
    expect(modify.join(' ')).toContain(
      `--natpf1 delete ssh --natpf1 delete tcp${web.host} --natpf1 ssh,tcp,127.0.0.1,${wanted},,22`,
    )
  })

  it('powers off a guest that ignores the ACPI button once the timeout has passed', async () => {
    process.env.VBOXMANAGE_STANDIN_ACPI = 'ignore'
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    await provider.start(one, {choice: {resnap: true}})
    const vm = await vmOf(one)
    await clearCalls()
    const began = Date.now()
    expect(await provider.halt(one, {timeoutMs: 300})).toBe('forced')
    expect(Date.now() - began).toBeGreaterThanOrEqual(300)
    expect(await changingCalls()).toEqual([
      ['controlvm', vm, 'acpipowerbutton'],
      ['controlvm', vm, 'poweroff'],
    ])
    expect(await provider.state(one)).toBe('poweroff')
    expect(await provider.halt(one, {timeoutMs: 300})).toBe('not-running')
  })

  it('waits for a slow guest to finish its ACPI shutdown', async () => {
    process.env.VBOXMANAGE_STANDIN_ACPI = '200'
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    await provider.start(one, {choice: {resnap: true}})
    await clearCalls()
    expect(await provider.halt(one, {timeoutMs: 5000})).toBe('acpi')
    expect((await changingCalls()).map((argv) => argv[2])).toEqual(['acpipowerbutton'])
  })

  it('halt --force pulls the plug without asking the guest', async () => {
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    await provider.start(one, {choice: {resnap: true}})
    await clearCalls()
    expect(await provider.halt(one, {force: true, timeoutMs: 0})).toBe('forced')
    expect(await changingCalls()).toEqual([['controlvm', await vmOf(one), 'poweroff']])
  })

  it('a state saved in VirtualBox is discarded before the boot (a saved VM refuses modifyvm)', async () => {
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    await provider.start(one, {choice: {resnap: true}})
    const vm = await vmOf(one)
    await standin('controlvm', vm, 'savestate')
    expect(await provider.state(one)).toBe('poweroff')
    const refused = (await rejection(modifyVm(vm, {cpus: 1}))) as VBoxManageError
    expect(refused.stderr).toContain('The machine is not mutable (state is Saved)')
    await clearCalls()
    await provider.start(one, {choice: {resnap: true}})
    expect((await changingCalls()).map((argv) => argv[0])).toEqual(['discardstate', 'modifyvm', 'startvm'])
    expect(await provider.state(one)).toBe('running')
  })

  it('reports a VM whose process died as aborted, and starts it again', async () => {
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    await provider.start(one, {choice: {resnap: true}})
    await standin('__standin', 'crash', await vmOf(one))
    expect(await provider.state(one)).toBe('aborted')
    expect(await provider.halt(one, {timeoutMs: 100})).toBe('not-running')
    await provider.start(one, {choice: {resnap: true}})
    expect(await provider.state(one)).toBe('running')
  })
})

describe('resnap under VirtualBox: the boot choice goes to grub through the SMBIOS system SKU', () => {
  it.each([
    [{resnap: true}, 'box-boot=resnap'],
    [{resnap: false}, 'box-boot=keep'],
    [{resnap: false, base: true}, 'box-boot=origin'],
    [{resnap: true, base: true}, 'box-boot=origin'],
  ])('%j → setextradata DmiSystemSKU %s before startvm', async (choice, sku) => {
    const one = machine('one', await makeConvertedResnapBox())
    await provider.create(one)
    const vm = await vmOf(one)
    await clearCalls()
    await provider.start(one, {choice})
    const calls = await changingCalls()
    expect(calls.slice(1)).toEqual([
      ['setextradata', vm, 'VBoxInternal/Devices/pcbios/0/Config/DmiSystemSKU', sku],
      ['startvm', vm, '--type', 'headless'],
    ])
    expect(dmiSkuFor(choice)).toBe(sku)
  })

  it('writes grub.cfg lines that read next_entry first, then the SKU, and default to resnap', () => {
    const text = grubBootSelection()
    expect(DMI_SYSTEM_SKU_KEY).toBe('VBoxInternal/Devices/pcbios/0/Config/DmiSystemSKU')
    expect(text).toContain('set default=resnap')
    expect(text).toContain('load_env')
    expect(text).toContain('save_env next_entry')
    // SMBIOS type 1, offset 0x19 (25): the SKU Number string.
    expect(text).toContain('smbios --type 1 --get-string 25 --set box_sku')
    expect(text).toContain('"box-boot=origin" ]; then set default=origin')
    expect(text).toContain('"box-boot=keep" ]; then set default=keep')
    expect(text.indexOf('next_entry')).toBeLessThan(text.indexOf('smbios'))
    expect(grubEntryFor({resnap: true})).toBe('resnap')
  })
})

describe('VirtualBox errors', () => {
  it('a VM deleted outside box: state not_created, halt not-running, start explains, destroy still succeeds', async () => {
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    const vm = await vmOf(one)
    const gone = await standin('unregistervm', vm, '--delete')
    expect(gone.exitCode).toBe(0)

    // The stand-in answers as VirtualBox does for a missing VM.
    const missing = await standin('showvminfo', vm, '--machinereadable')
    expect(missing.exitCode).toBe(1)
    expect(missing.stderr).toContain(`VBoxManage: error: Could not find a registered machine named '${vm}'`)
    expect(missing.stderr).toContain('VBOX_E_OBJECT_NOT_FOUND (0x80bb0001)')
    const driverError = await rejection(showVmInfo(vm))
    expect(driverError).toBeInstanceOf(VBoxManageError)
    expect((driverError as VBoxManageError).kind).toBe('vm-not-found')
    expect((driverError as VBoxManageError).vboxExitCode).toBe(1)

    expect(await provider.state(one)).toBe('not_created')
    expect(await provider.halt(one, {timeoutMs: 100})).toBe('not-running')
    const error = await rejection(provider.start(one, {choice: {resnap: true}}))
    expect(error).toBeInstanceOf(BoxError)
    expect(error.message).toMatch(/no longer knows VM .* deleted outside box/)
    await provider.destroy(one)
    expect(await readVirtualBoxRecord(one.stateDir)).toBeUndefined()
  })

  it('a running VM: modifyvm is refused as VirtualBox refuses it, and start says to halt first', async () => {
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    await provider.start(one, {choice: {resnap: true}})
    const vm = await vmOf(one)

    const driverError = await rejection(modifyVm(vm, {cpus: 1}))
    expect(driverError).toBeInstanceOf(VBoxManageError)
    expect((driverError as VBoxManageError).kind).toBe('vm-locked')
    expect((driverError as VBoxManageError).vboxExitCode).toBe(1)
    expect((driverError as VBoxManageError).stderr).toContain(
      `VBoxManage: error: The machine '${vm}' is already locked for a session (or being unlocked)`,
    )

    await clearCalls()
    const error = await rejection(provider.start(one, {choice: {resnap: true}}))
    expect(error).toBeInstanceOf(BoxError)
    expect(error.message).toMatch(/is running or held by another VirtualBox session/)
    expect((error as BoxError).suggestions).toContain('stop it first: box halt')
    expect((await changingCalls()).map((argv) => argv[0])).toEqual(['modifyvm'])

    const startvm = await standin('startvm', vm, '--type', 'headless')
    expect(startvm.exitCode).toBe(1)
    expect(startvm.stderr).toContain('is already locked by a session (or being locked or unlocked)')
    const unregister = await standin('unregistervm', vm, '--delete')
    expect(unregister.exitCode).toBe(1)
    expect(unregister.stderr).toContain(`Cannot unregister the machine '${vm}' while it is locked`)
  })

  it('a taken ssh port moves ssh to a free one; the old rule is replaced', async () => {
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    const taken = await freePort()
    await occupy(taken)
    const started = await provider.start(one, {choice: {resnap: true}, sshPort: taken})
    expect(started.sshPort).not.toBe(taken)
    expect((await showVmInfo(await vmOf(one))).get('Forwarding(0)')).toBe(`ssh,tcp,127.0.0.1,${started.sshPort},,22`)
  })

  it('a taken host port of a forwarded port moves to the next free one, as with QEMU', async () => {
    const taken = await freePort()
    await occupy(taken)
    const one = machine('one', await makeOvfBox(), [{guest: 80, host: taken, hostIp: '127.0.0.1', protocol: 'tcp'}])
    await provider.create(one)
    const started = await provider.start(one, {choice: {resnap: true}})
    const moved = started.forwardedPorts[0]!.host
    expect(moved).toBeGreaterThan(taken)
    expect((await showVmInfo(await vmOf(one))).get('Forwarding(1)')).toBe(`tcp${moved},tcp,127.0.0.1,${moved},,80`)
  })

  it('a forwarded port on the ssh port is VirtualBox NAT rule conflict, reported as such, and nothing starts', async () => {
    const port = await freePort()
    const one = machine('one', await makeOvfBox(), [{guest: 80, host: port, hostIp: '127.0.0.1', protocol: 'tcp'}])
    await provider.create(one)
    await clearCalls()
    const error = await rejection(provider.start(one, {choice: {resnap: true}, sshPort: port}))
    expect(error).toBeInstanceOf(BoxError)
    expect(error.message).toMatch(/use the same host port/)
    expect((error as BoxError).detail).toContain('A NAT rule for this host port and this host IP already exists')
    expect((await changingCalls()).map((argv) => argv[0])).toEqual(['modifyvm'])
    // modifyvm saves nothing when an option fails, as VBoxManage does.
    expect((await showVmInfo(await vmOf(one))).has('Forwarding(0)')).toBe(false)
    expect(await provider.state(one)).toBe('poweroff')
  })

  it('a NAT rule name used twice is refused with VirtualBox text and exit code 1', async () => {
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    const vm = await vmOf(one)
    const rule = {
      name: 'ssh',
      protocol: 'tcp' as const,
      hostIp: '127.0.0.1',
      hostPort: 2222,
      guestIp: '',
      guestPort: 22,
    }
    await modifyVm(vm, {addNatRules: [rule]})
    const error = (await rejection(modifyVm(vm, {addNatRules: [{...rule, hostPort: 2223}]}))) as VBoxManageError
    expect(error.kind).toBe('nat-rule-conflict')
    expect(error.vboxExitCode).toBe(1)
    expect(error.stderr.split('\n')[0]).toBe('VBoxManage: error: A NAT rule of this name already exists')
  })

  it('VirtualBox not installed: says it is not among Debian packages and where to get it', async () => {
    const one = machine('one', await makeOvfBox())
    await provider.create(one)
    const empty = join(dir, 'empty-bin')
    await mkdir(empty)
    process.env.PATH = empty
    const error = await rejection(provider.state(one))
    expect(error).toBeInstanceOf(BoxError)
    expect(error.message).toBe('VirtualBox is not installed: VBoxManage is not on PATH')
    const suggestions = (error as BoxError).suggestions.join('\n')
    expect(suggestions).toContain("VirtualBox is not among Debian's packages")
    expect(suggestions).toContain('https://www.virtualbox.org/wiki/Linux_Downloads')
    expect(suggestions).toContain('provider: qemu')
  })
})

describe('destroy', () => {
  it('powers off a running clone, unregisters and deletes it, and leaves nothing of it behind', async () => {
    const box = await makeOvfBox()
    const one = machine('one', box)
    const two = machine('two', box)
    await provider.create(one)
    await provider.create(two)
    await provider.start(one, {choice: {resnap: true}})
    const vm = await vmOf(one)
    await clearCalls()
    await provider.destroy(one)
    expect(await changingCalls()).toEqual([
      ['controlvm', vm, 'poweroff'],
      ['unregistervm', vm, '--delete'],
    ])
    expect(await provider.state(one)).toBe('not_created')
    expect(await readdir(one.stateDir)).toEqual([])
    const listed = (await standin('list', 'vms')).stdout
    expect(listed).not.toContain(vm)
    expect(listed).toContain(await vmOf(two))
    // Destroy twice (and on a machine never created) is fine.
    await provider.destroy(one)
    await provider.destroy(machine('never', box))

    // The base stays for other machines; VirtualBox refuses to delete it while a clone hangs from it.
    const base = baseVmName(box.dir)
    const busy = await rejection(removeVirtualBoxBase(box.dir, basesDir))
    expect(busy.message).toMatch(/still uses the base VM/)
    expect((busy as BoxError).detail).toMatch(/because it has 1 child media/)
    await provider.destroy(two)
    expect(await removeVirtualBoxBase(box.dir, basesDir)).toBe(true)
    expect((await standin('list', 'vms')).stdout).toBe('')
    expect(await readdir(basesDir)).toEqual([])
    expect(listed).toContain(base)
  })

  it('cleans up a clone that a crash left half made (recorded but never registered)', async () => {
    const one = machine('one', await makeOvfBox())
    await mkdir(one.stateDir, {recursive: true})
    await writeFile(join(one.stateDir, 'virtualbox.json'), JSON.stringify({vm: 'box-one-deadbeef', base: 'x'}))
    await mkdir(join(one.stateDir, 'box-one-deadbeef', 'Snapshots'), {recursive: true})
    expect(await provider.state(one)).toBe('not_created')
    await provider.destroy(one)
    expect(await readdir(one.stateDir)).toEqual([])
  })
})

describe('plumbing', () => {
  it('providerFor("virtualbox") is the VirtualBox provider', () => {
    expect(providerFor('virtualbox', join(dir, 'cache'))).toBeInstanceOf(VirtualBoxProvider)
  })

  it('convertForVirtualBox turns a libvirt box into a VirtualBox one (VDI disk, metadata kept)', async () => {
    const box = await makeConvertedResnapBox()
    expect(existsSync(join(box.dir, 'box.img'))).toBe(false)
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', join(box.dir, 'box.vdi')])).stdout)
    expect(info.format).toBe('vdi')
    expect(box.metadata).toMatchObject({
      provider: 'virtualbox',
      format: 'vdi',
      converted_from: 'libvirt',
      box: {lvm: LVM},
    })
    const into = join(dir, 'copy')
    const again = await rejection(convertForVirtualBox(box.dir, into))
    expect(again.message).toMatch(/already a VirtualBox box/)
  })

  it('box doctor finds VBoxManage and asks it for its version (here: the stand-in says so)', async () => {
    expect(HOST_TOOLS.find((tool) => tool.command === 'VBoxManage')?.versionArgs).toEqual(['--version'])
    expect(await vboxVersion()).toBe('7.0.20r0-box-standin')
  })

  it('parses showvminfo --machinereadable, quoted keys included', () => {
    const info = parseMachineReadable(
      'name="x"\nmemory=1024\n"SATA-0-0"="/a b/disk.vdi"\nForwarding(0)="ssh,tcp,127.0.0.1,2222,,22"\ndescription="say \\"hi\\""\n',
    )
    expect(info.get('name')).toBe('x')
    expect(info.get('memory')).toBe('1024')
    expect(info.get('SATA-0-0')).toBe('/a b/disk.vdi')
    expect(info.get('description')).toBe('say "hi"')
  })
})
