/**
 * The Vagrantfile a box made by box carries (box build, and box package when the source
 * box had none): what Vagrant with vagrant-libvirt needs to run it as box does — the
 * box's user, no /vagrant share, a virtio disk, box's default memory.
 */

export interface VagrantfileOptions {
  /** The first comment line: "Written by `box build` for worker 1.0.0." */
  origin: string
  /** Further comment lines. */
  notes?: string[]
  /** The user Vagrant logs in as (only name characters are kept). */
  username: string
}

export function vagrantfileText(options: VagrantfileOptions): string {
  const comments = [options.origin, ...(options.notes ?? [])].map((line) => `# ${line}\n`).join('')
  return `${comments}Vagrant.configure("2") do |config|
  config.ssh.username = "${options.username.replace(/[^A-Za-z0-9._-]/g, '')}"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "kvm"
    libvirt.disk_bus = "virtio"
    libvirt.memory = 1024
  end
end
`
}
