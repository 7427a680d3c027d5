/**
 * Stage "configure": turn a copy of the cached debootstrap tree into the worker box's
 * root, on the host (chroot, no mounts needed): users and keys, fstab for the resnap
 * layout, networkd, per-machine ssh host keys in /persistent, trimmed units, the
 * resnap initramfs script, provisiond, then update-initramfs — ~3 s here against
 * minutes inside a TCG guest.
 */
import {chmod, mkdir, readdir, readFile, rm, symlink, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'

import {BoxError} from '../lib/core/errors.js'
import {run} from '../lib/core/exec.js'
import {PROJECT_ROOT} from '../lib/core/paths.js'
import type {Stage} from '../lib/core/progress.js'
import {mapperPath} from '../lib/box/resnap.js'
import {AGENT_PORT_NAME} from '../lib/box/agent-protocol.js'
import type {Recipe} from './recipe.js'

/**
 * Modules the box's initramfs needs on QEMU/libvirt (ext4 and the serial console are built
 * into Debian's cloud kernel). `button` answers QEMU's ACPI power button (box halt, through
 * acpid) and `virtio_console` carries box-agent's port: loaded here they stay loaded, and
 * systemd-modules-load (~1.5 s under TCG) is masked.
 */
export const INITRAMFS_MODULES = [
  'virtio_pci',
  'virtio_blk',
  'virtio_net',
  'dm_mod',
  'dm_snapshot',
  'button',
  'virtio_console',
]
/** And for a box whose root_snap is a thin snapshot (`snapshot: thin`). */
export const THIN_MODULES = ['dm_thin_pool']

/**
 * systemd generators a worker box never needs (no GPT auto-root, LUKS, verity, integrity,
 * hibernation, offline updates, rc.local, SysV scripts without a native unit, systemd.run=):
 * each is a process systemd waits for before it loads units, a few hundred ms under TCG.
 * Masked by a link to /dev/null in /etc/systemd/system-generators.
 */
export const MASKED_GENERATORS = [
  'systemd-gpt-auto-generator',
  'systemd-cryptsetup-generator',
  'systemd-veritysetup-generator',
  'systemd-integritysetup-generator',
  'systemd-hibernate-resume-generator',
  'systemd-system-update-generator',
  'systemd-rc-local-generator',
  'systemd-sysv-generator',
  'systemd-run-generator',
]

/**
 * Units a worker does not need; each one cost boot time under TCG or writes in the
 * background (which fills the root snapshot). Masking a unit that is not installed is harmless.
 */
export const MASKED_UNITS = [
  'lvm2-monitor.service', // dmeventd monitoring: we use no autoextend; slow at boot
  'lvm2-lvmpolld.socket',
  'dm-event.socket',
  'systemd-networkd-wait-online.service',
  'systemd-udev-settle.service',
  'systemd-timesyncd.service', // the hypervisor's clock is enough; kvm-clock
  'systemd-pstore.service',
  'getty@tty1.service', // no VGA console; serial-getty on ttyS0 stays
  'apt-daily.timer',
  'apt-daily-upgrade.timer',
  'man-db.timer',
  'dpkg-db-backup.timer',
  'e2scrub_all.timer',
  'e2scrub_reap.service',
  'fstrim.timer',
  'logrotate.timer',
  'systemd-tmpfiles-clean.timer',
  // Early-boot units that each cost seconds under TCG and do nothing useful on a worker VM:
  'systemd-network-generator.service', // ip= on the kernel command line: unused
  'getty-static.service',
  'systemd-sysusers.service', // the image's users are made at build time
  'systemd-update-utmp.service',
  'systemd-update-utmp-runlevel.service',
  'systemd-journal-flush.service', // journald is volatile: nothing to flush
  'systemd-random-seed.service', // / is recreated every boot: a saved seed would repeat
  'kmod-static-nodes.service',
  'modprobe@configfs.service',
  'modprobe@dm_mod.service', // loaded by the initramfs
  'modprobe@drm.service',
  'modprobe@efi_pstore.service',
  'modprobe@fuse.service',
  'modprobe@loop.service',
  'dev-hugepages.mount',
  'dev-mqueue.mount',
  'sys-kernel-debug.mount',
  'sys-kernel-tracing.mount',
  'sys-kernel-config.mount',
  'sys-fs-fuse-connections.mount',
  'proc-sys-fs-binfmt_misc.automount',
  'systemd-binfmt.service',
  'systemd-machine-id-commit.service', // each resnap boot gets a fresh machine-id anyway
  'systemd-modules-load.service', // its modules (`button`, `virtio_console`) are loaded by the initramfs (INITRAMFS_MODULES)
]

export interface ConfigureOptions {
  recipe: Recipe
  /** The tree to change (a private copy of the cached rootfs). */
  root: string
  stage?: Stage
  signal?: AbortSignal
}

/** Directory of the project's shipped guest files (initramfs/, provisioners/, static/). */
export function projectFile(...parts: string[]): string {
  return join(PROJECT_ROOT, ...parts)
}

/** Write a file inside the tree, replacing whatever is there (never writing through a symlink to the host). */
async function put(root: string, path: string, content: string | Buffer, mode = 0o644): Promise<void> {
  const target = join(root, path)
  await mkdir(dirname(target), {recursive: true})
  await rm(target, {force: true})
  await writeFile(target, content, {mode, flag: 'wx'})
  await chmod(target, mode)
}

async function symlinkIn(root: string, path: string, target: string): Promise<void> {
  const link = join(root, path)
  await mkdir(dirname(link), {recursive: true})
  await rm(link, {force: true})
  await symlink(target, link)
}

/** A user's home directory as the tree's /etc/passwd has it (useradd just made it). */
async function homeOf(root: string, user: string): Promise<string> {
  const entry = (await readFile(join(root, 'etc/passwd'), 'utf8'))
    .split('\n')
    .map((line) => line.split(':'))
    .find((fields) => fields[0] === user)
  const home = entry?.[5]
  if (!home || !/^\/[A-Za-z0-9._/-]+$/.test(home))
    throw new BoxError(`no usable home directory for ${user} in the image's /etc/passwd`)
  return home
}

async function install(root: string, source: string, path: string, mode: number): Promise<void> {
  await put(root, path, await readFile(source), mode)
}

async function chroot(root: string, args: string[], purpose: string, signal?: AbortSignal): Promise<string> {
  const {stdout} = await run('chroot', [root, ...args], {
    purpose,
    cancelSignal: signal,
    env: {DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C', PATH: '/usr/sbin:/usr/bin:/sbin:/bin'},
    stdin: 'ignore',
  })
  return stdout
}

export async function configureRootfs(options: ConfigureOptions): Promise<void> {
  const {recipe, root, stage, signal} = options
  const step = (text: string) => {
    signal?.throwIfAborted()
    stage?.update(text)
  }

  step('users')
  for (const [index, user] of recipe.users.entries()) {
    await chroot(
      root,
      ['useradd', '--create-home', '--shell', '/bin/bash', '--user-group', user.name],
      `creating user ${user.name}`,
      signal,
    )
    // '*' (not '!'): no password login, but not "locked", so key login works with or without PAM.
    await chroot(root, ['usermod', '--password', '*', user.name], `setting ${user.name}'s password field`, signal)
    if (user.sudo === 'nopasswd')
      await put(root, `etc/sudoers.d/90-box-${user.name}`, `${user.name} ALL=(ALL) NOPASSWD:ALL\n`, 0o440)
    // sshd reads authorized keys from /persistent only, so the key `box up` installs
    // survives every resnap and the insecure key never comes back with the snapshot.
    // The box's own keys are the seed, copied there at first boot (box-ssh-setup).
    const keys = await Promise.all(recipe.authorizedKeyFiles[index]!.map((file) => readFile(file, 'utf8')))
    await put(root, `etc/box/authorized_keys/${user.name}`, keys.map((key) => `${key.trim()}\n`).join(''), 0o644)
    // ~/.ssh lives in /persistent too (box-ssh-setup makes it), so the key `vagrant up`
    // writes into ~/.ssh/authorized_keys survives resnap like box's own.
    await symlinkIn(root, `${await homeOf(root, user.name)}/.ssh`.slice(1), `/persistent/ssh/home/${user.name}`)
  }
  // Vagrant logs in with its published insecure key, which it then replaces (~/.ssh starts
  // with it); /etc/ssh/sshrc drops every published key once the machine has its own.
  const vagrantKeys = await readFile(projectFile('static', 'vagrant-insecure-keys.pub'), 'utf8')
  await put(root, 'etc/box/vagrant_authorized_keys', vagrantKeys, 0o644)
  await put(
    root,
    'etc/box/insecure_keys',
    `${(await readFile(projectFile('static', 'insecure_key.pub'), 'utf8')).trim()}\n${vagrantKeys}`,
    0o644,
  )

  step('hostname, fstab, network')
  await put(root, 'etc/hostname', `${recipe.hostname}\n`)
  await put(
    root,
    'etc/hosts',
    `127.0.0.1\tlocalhost\n127.0.1.1\t${recipe.hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n`,
  )
  await put(root, 'etc/fstab', fstab(recipe))
  await mkdir(join(root, 'persistent'), {recursive: true})
  await put(
    root,
    'etc/systemd/network/20-box-wired.network',
    '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nUseDomains=yes\n',
  )
  // No systemd-resolved (it needs dbus, which costs boot time): the resolver of QEMU's
  // user networking, where box runs its machines. Other networks: provisioning can replace it.
  await put(root, 'etc/resolv.conf', '# box: DNS of QEMU user networking (slirp)\nnameserver 10.0.2.3\n')
  // machine-id is created at first boot (each resnap boot gets a fresh one).
  await put(root, 'etc/machine-id', '')
  await rm(join(root, 'var/lib/dbus/machine-id'), {force: true})
  // Kernel upgrades keep /boot/vmlinuz and /boot/initrd.img pointing at the newest kernel (grub.cfg uses them).
  await put(root, 'etc/kernel-img.conf', 'do_symlinks = yes\nlink_in_boot = yes\n')

  // box halt presses the ACPI power button; without logind (no dbus) acpid is what answers it.
  // The button driver is a module, and the trimmed udev coldplug never loads it by alias:
  // the initramfs loads it (INITRAMFS_MODULES).
  await put(root, 'etc/acpi/events/box-power-button', 'event=button/power.*\naction=/usr/bin/systemctl poweroff\n')

  step('ssh')
  await removeHostKeys(root)
  await put(
    root,
    'etc/ssh/sshd_config.d/box.conf',
    [
      '# box: host key and authorized keys are per machine, in /persistent (they survive resnap):',
      "# box's own file, then ~/.ssh (a link into /persistent/ssh/home), where Vagrant writes.",
      'HostKey /persistent/ssh/ssh_host_ed25519_key',
      'AuthorizedKeysFile /persistent/ssh/authorized_keys/%u .ssh/authorized_keys',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UseDNS no',
      '',
    ].join('\n'),
  )
  await put(root, 'etc/systemd/system/box-ssh-hostkey.service', SSH_HOSTKEY_UNIT)
  await install(root, projectFile('provisioners', 'box-ssh-setup'), 'usr/local/sbin/box-ssh-setup', 0o755)
  await install(root, projectFile('provisioners', 'box-ssh-rc'), 'etc/ssh/sshrc', 0o644)
  await put(
    root,
    'etc/systemd/system/ssh.service',
    sshServiceOverride(await readFile(join(root, 'lib/systemd/system/ssh.service'), 'utf8')),
  )
  await put(root, 'etc/pam.d/sshd', withoutDynamicMotd(await readFile(join(root, 'etc/pam.d/sshd'), 'utf8')))

  step('systemd units')
  // Coldplug only what a worker uses (disks, LVs, the NIC, the serial console): the full
  // trigger (every PCI, ACPI, CPU and memory device) took ~10 s under TCG.
  await put(
    root,
    'etc/systemd/system/systemd-udev-trigger.service.d/box.conf',
    '[Service]\nExecStart=\nExecStart=-udevadm trigger --type=devices --action=add --subsystem-match=block --subsystem-match=net --subsystem-match=tty --subsystem-match=virtio-ports\n',
  )
  // The initramfs activates the VG (initramfs/scripts/local-top/resnap); lvm2's udev rule
  // would pvscan and activate it again from the real root's coldplug (~1.5 s of CPU under
  // TCG while sshd starts). A worker box has one disk: nothing else to autoactivate.
  await symlinkIn(root, 'etc/udev/rules.d/69-lvm.rules', '/dev/null')
  await put(root, 'etc/systemd/journald.conf.d/box.conf', '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n')
  await install(root, projectFile('provisioners', 'provisiond'), 'usr/local/sbin/provisiond', 0o755)
  await install(root, projectFile('provisioners', 'provisiond.service'), 'etc/systemd/system/provisiond.service', 0o644)
  await install(
    root,
    projectFile('provisioners', 'box-lockdown.service'),
    'etc/systemd/system/box-lockdown.service',
    0o644,
  )
  // box-agent (box status's questions on a virtio-serial port) starts when udev sees its port.
  await install(root, projectFile('provisioners', 'box-agent'), 'usr/local/sbin/box-agent', 0o755)
  await install(root, projectFile('provisioners', 'box-agent.service'), 'etc/systemd/system/box-agent.service', 0o644)
  // box-job runs box run's jobs as an unprivileged user with limits (started by box-agent's job-start).
  await install(root, projectFile('provisioners', 'box-job'), 'usr/local/sbin/box-job', 0o755)
  await put(
    root,
    'etc/udev/rules.d/60-box-agent.rules',
    `SUBSYSTEM=="virtio-ports", ATTR{name}=="${AGENT_PORT_NAME}", TAG+="systemd", ENV{SYSTEMD_WANTS}+="box-agent.service"\n`,
  )
  const units = [
    'systemd-networkd.service',
    'ssh.service',
    'box-ssh-hostkey.service',
    'provisiond.service',
    'box-lockdown.service',
  ]
  if (recipe.lvm.swap) {
    await put(root, 'etc/systemd/system/box-swap.service', swapUnit(mapperPath(recipe.lvm.vg, recipe.lvm.swap)))
    units.push('box-swap.service')
  }
  await chroot(root, ['systemctl', 'enable', ...units], 'enabling units', signal)
  await chroot(root, ['systemctl', 'mask', ...MASKED_UNITS], 'masking units a worker does not need', signal)
  for (const generator of MASKED_GENERATORS)
    await symlinkIn(root, `etc/systemd/system-generators/${generator}`, '/dev/null')

  step('lvm.conf')
  await put(root, 'etc/lvm/lvm.conf', tuneLvmConf(await readFile(join(root, 'etc/lvm/lvm.conf'), 'utf8')))

  step(`initramfs (${recipe.initramfs})`)
  if (recipe.initramfs === 'dracut') await configureDracut(root, signal)
  else await configureInitramfsTools(root, recipe.snapshot === 'thin', signal)

  step('shrinking')
  await shrinkTree(root)
}

/** initramfs-tools with box's local-top resnap script and a small, narrowly coldplugged initramfs. */
async function configureInitramfsTools(root: string, thin: boolean, signal?: AbortSignal): Promise<void> {
  await install(root, projectFile('initramfs', 'hooks', 'resnap'), 'etc/initramfs-tools/hooks/resnap', 0o755)
  await install(
    root,
    projectFile('initramfs', 'scripts', 'local-top', 'resnap'),
    'etc/initramfs-tools/scripts/local-top/resnap',
    0o755,
  )
  const modules = thin ? [...INITRAMFS_MODULES, ...THIN_MODULES] : INITRAMFS_MODULES
  await put(
    root,
    'etc/initramfs-tools/modules',
    `# box: only what a QEMU/libvirt worker needs (MODULES=list)\n${modules.join('\n')}\n`,
  )
  await put(root, 'etc/initramfs-tools/conf.d/box.conf', '# box: small initramfs\nMODULES=list\nCOMPRESS=zstd\n')
  // Swap is not a resume device: without this the initramfs may wait for it.
  await put(root, 'etc/initramfs-tools/conf.d/resume', 'RESUME=none\n')
  const udevScript = narrowInitramfsUdev(
    await readFile(join(root, 'usr/share/initramfs-tools/scripts/init-top/udev'), 'utf8'),
  )
  if (udevScript) await put(root, 'etc/initramfs-tools/scripts/init-top/udev', udevScript, 0o755)
  await chroot(root, ['update-initramfs', '-u', '-k', 'all'], 'update-initramfs in the rootfs', signal)
}

/**
 * dracut with box's resnap module (initramfs/dracut/90resnap) and only the dracut modules a
 * QEMU worker needs to find an LVM root: dracut's own shell init (no systemd in the
 * initramfs), and the kernel modules of INITRAMFS_MODULES only (`drivers=` replaces
 * kernel-modules' generic set of every block and input driver). The file in dracut.conf.d and
 * the module in /usr/lib/dracut/modules.d are picked up by every later dracut run (Debian's
 * kernel postinst hook included).
 */
async function configureDracut(root: string, signal?: AbortSignal): Promise<void> {
  const module = projectFile('initramfs', 'dracut', '90resnap')
  for (const name of await readdir(module))
    await install(root, join(module, name), `usr/lib/dracut/modules.d/90resnap/${name}`, 0o755)
  await put(root, 'etc/dracut.conf.d/90-box.conf', DRACUT_CONF)
  const versions = (await readdir(join(root, 'lib/modules')).catch(() => [] as string[])).filter((name) =>
    /^[0-9][A-Za-z0-9._+-]*$/.test(name),
  )
  if (versions.length === 0) throw new BoxError('the rootfs has no kernel modules in /lib/modules for dracut')
  for (const version of versions)
    await chroot(
      root,
      ['dracut', '--force', `/boot/initrd.img-${version}`, version],
      `dracut in the rootfs (${version})`,
      signal,
    )
}

export const DRACUT_CONF = `# box: a small generic initramfs for QEMU/libvirt workers, with box's resnap module
hostonly="no"
dracutmodules=" bash base udev-rules kernel-modules rootfs-block fs-lib dm lvm resnap "
drivers=" ${INITRAMFS_MODULES.join(' ')} "
# fsck.mode=skip: a fresh snapshot needs no check, and the initramfs no fsck
nofscks="yes"
compress="zstd"
`

/** fstab for the resnap layout: / is the snapshot, /boot by label, the rest by mapper path and nofail. */
export function fstab(recipe: Pick<Recipe, 'lvm'>): string {
  const {lvm} = recipe
  const lines = [
    '# box: / is the resnap snapshot of the origin LV (see /proc/cmdline); fsck is pointless on a fresh snapshot.',
    `${mapperPath(lvm.vg, lvm.snapshot)}\t/\text4\tdefaults,errors=remount-ro\t0\t0`,
    'LABEL=boot\t/boot\text4\tdefaults,nofail\t0\t0',
    `${mapperPath(lvm.vg, lvm.persistent)}\t/persistent\text4\tdefaults,nofail\t0\t0`,
  ]
  // noauto: box-swap.service turns it on after boot, so waiting for the device never delays sysinit (and ssh).
  if (lvm.swap) lines.push(`${mapperPath(lvm.vg, lvm.swap)}\tnone\tswap\tsw,noauto,nofail\t0\t0`)
  return `${lines.join('\n')}\n`
}

/** issue_discards so freed extents reach the qcow2; no dmeventd monitoring (lvm2-monitor is masked). */
export function tuneLvmConf(text: string): string {
  let out = text
  const set = (key: string, value: string) => {
    const re = new RegExp(`^(\\s*)#?\\s*${key}\\s*=.*$`, 'm')
    if (!re.test(out)) throw new BoxError(`lvm.conf has no ${key} setting to change`)
    out = out.replace(re, `$1${key} = ${value}`)
  }
  set('issue_discards', '1')
  set('monitoring', '0')
  return out
}

/** Swap on after boot instead of from fstab: an fstab swap orders swap.target (hence sysinit and sshd) after its device. */
function swapUnit(device: string): string {
  const deviceUnit = systemdDeviceUnit(device)
  return `[Unit]
Description=box: swap on ${device} (after boot, off the critical path to sshd)
Requires=${deviceUnit}
After=${deviceUnit}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/swapon ${device}
ExecStop=/usr/sbin/swapoff ${device}

[Install]
WantedBy=multi-user.target
`
}

/** `systemd-escape -p --suffix=device PATH` for the names the recipe allows ([A-Za-z0-9_.+-]). */
export function systemdDeviceUnit(path: string): string {
  const escaped = path
    .replace(/^\/+/, '')
    .split('/')
    .map((part) => part.replace(/[^A-Za-z0-9_.:]/g, (char) => `\\x${char.charCodeAt(0).toString(16).padStart(2, '0')}`))
    .join('-')
  return `${escaped}.device`
}

/**
 * Debian's sshd PAM stack without the dynamic motd: pam_motd runs /etc/update-motd.d at every
 * login, 0.4 s of each new ssh connection under TCG (up's first login, provisioners, ssh
 * masters). The static /etc/motd is still shown.
 */
export function withoutDynamicMotd(pamSshd: string): string {
  const line = /^session\s+optional\s+pam_motd\.so\s+motd=\/run\/motd\.dynamic\s*$/m
  if (!line.test(pamSshd)) throw new BoxError('unexpected /etc/pam.d/sshd: no pam_motd line for /run/motd.dynamic')
  return pamSshd.replace(
    line,
    (found) => `# box: no update-motd scripts at every login (slow under emulation)\n#${found}`,
  )
}

/**
 * Debian's ssh.service, ordered after our host key instead of network.target: sshd
 * listens on the wildcard address, so it need not wait for DHCP (networkd took ~10 s
 * to start under TCG). Without the `sshd -t` before start (~1 s under TCG, on the way to
 * ssh; sshd checks its configuration itself and fails the unit just the same); reload
 * keeps it. A full unit in /etc, because a drop-in cannot remove an After=.
 */
export function sshServiceOverride(vendorUnit: string): string {
  if (!/^After=.*network\.target/m.test(vendorUnit))
    throw new BoxError('unexpected ssh.service: no After=network.target to replace')
  return vendorUnit
    .replace(
      /^After=.*network\.target.*$/m,
      'After=auditd.service box-ssh-hostkey.service\nWants=box-ssh-hostkey.service',
    )
    .replace(/^ExecStartPre=\/usr\/sbin\/sshd -t\n/m, '')
    .replace(/^\[Unit\]$/m, "[Unit]\n# box: Debian's unit, started without waiting for network.target (see box build)")
}

/**
 * initramfs-tools' init-top/udev coldplugs every device (ACPI, CPUs, memory blocks,
 * platform…) and settles: seconds under TCG. The box's initramfs only needs PCI/virtio
 * (module autoload), disks and the NIC; MODULES=list loads the rest explicitly. The
 * copy in /etc/initramfs-tools/scripts replaces the vendor script of the same name.
 * Undefined when the vendor script is not the one this was written for.
 */
export function narrowInitramfsUdev(vendorScript: string): string | undefined {
  const triggers = 'udevadm trigger --type=subsystems --action=add\nudevadm trigger --type=devices --action=add\n'
  if (!vendorScript.includes(triggers)) return undefined
  return vendorScript.replace(
    triggers,
    '# box: coldplug only what a QEMU worker needs to find its root (see box build, configure.ts)\nudevadm trigger --type=devices --action=add --subsystem-match=pci --subsystem-match=virtio --subsystem-match=block --subsystem-match=net\n',
  )
}

const SSH_HOSTKEY_UNIT = `[Unit]
Description=box: per-machine ssh host key and authorized keys in /persistent/ssh (survive resnap)
RequiresMountsFor=/persistent
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/box-ssh-setup

[Install]
WantedBy=multi-user.target
`

async function removeHostKeys(root: string): Promise<void> {
  const dir = join(root, 'etc/ssh')
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.startsWith('ssh_host_')) await rm(join(dir, name), {force: true})
  }
}

/** Docs, man pages, locales, apt lists and logs: not needed on a worker, and later installs skip docs too. */
async function shrinkTree(root: string): Promise<void> {
  const emptyDir = async (path: string, keep: (name: string) => boolean = () => false) => {
    for (const name of await readdir(join(root, path)).catch(() => [] as string[])) {
      if (!keep(name)) await rm(join(root, path, name), {recursive: true, force: true})
    }
  }
  await emptyDir('usr/share/doc')
  await emptyDir('usr/share/man')
  await emptyDir('usr/share/info')
  await emptyDir('usr/share/locale', (name) => name === 'locale.alias')
  await emptyDir('var/lib/apt/lists', (name) => name === 'partial')
  await emptyDir('var/cache/apt', (name) => name === 'archives')
  await emptyDir('var/cache/apt/archives', (name) => name === 'partial' || name === 'lock')
  await emptyDir('var/cache/debconf', (name) => !name.endsWith('-old'))
  await emptyDir('var/log')
  await put(
    root,
    'etc/dpkg/dpkg.cfg.d/box-nodoc',
    '# box: keep the worker small; later installs skip docs, man pages and translations too\npath-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\npath-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\npath-include=/usr/share/locale/locale.alias\n',
  )
}

/** Copy the cached rootfs into a private tree (reflink where the filesystem can). */
export async function copyRootfs(source: string, target: string, signal?: AbortSignal): Promise<void> {
  await run('cp', ['-a', '--reflink=auto', source, target], {
    purpose: 'copying the cached rootfs',
    cancelSignal: signal,
  })
}
