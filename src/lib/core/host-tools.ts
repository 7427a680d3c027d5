/**
 * The host programs box runs, and the Debian/Ubuntu package that provides each.
 * `box doctor` reports them; the exec wrapper names the package when one is missing.
 */
export interface HostTool {
  command: string
  package: string
  /** Arguments that print a version (first line is shown); omitted when the tool has none. */
  versionArgs?: string[]
  /** What needs it; a missing `required` tool makes `box doctor` fail. */
  purpose: string
  required: boolean
  /** Needed to run jobs (box run, box batch): required by `box doctor --jobs`, a Slurm node's health check. */
  jobs?: boolean
}

export const HOST_TOOLS: HostTool[] = [
  {
    command: 'qemu-system-x86_64',
    package: 'qemu-system-x86',
    versionArgs: ['--version'],
    purpose: 'runs machines',
    required: true,
  },
  {
    command: 'qemu-img',
    package: 'qemu-utils',
    versionArgs: ['--version'],
    purpose: 'overlays, box images',
    required: true,
  },
  {command: 'ssh', package: 'openssh-client', versionArgs: ['-V'], purpose: 'box ssh, provisioning', required: true},
  {command: 'ssh-keygen', package: 'openssh-client', purpose: 'per-machine keys', required: true},
  {command: 'zstd', package: 'zstd', versionArgs: ['--version'], purpose: 'zstd-compressed boxes', required: true},
  {command: 'xz', package: 'xz-utils', versionArgs: ['--version'], purpose: 'xz-compressed boxes', required: false},
  {command: 'bzip2', package: 'bzip2', purpose: 'bzip2-compressed boxes', required: false},
  {
    command: 'xorriso',
    package: 'xorriso',
    versionArgs: ['-version'],
    purpose: 'cloud-init seeds for cloud-image boxes',
    required: false,
  },
  {command: 'debootstrap', package: 'debootstrap', versionArgs: ['--version'], purpose: 'box build', required: false},
  {
    command: 'mke2fs',
    package: 'e2fsprogs',
    versionArgs: ['-V'],
    purpose: 'box build, job input disks',
    required: false,
    jobs: true,
  },
  {
    command: 'debugfs',
    package: 'e2fsprogs',
    versionArgs: ['-V'],
    purpose: 'job output disks',
    required: false,
    jobs: true,
  },
  {
    command: 'busybox',
    package: 'busybox-static',
    versionArgs: ['--help'],
    purpose: 'box build (builder appliance)',
    required: false,
  },
  {
    command: 'cpio',
    package: 'cpio',
    versionArgs: ['--version'],
    purpose: 'box build (builder appliance)',
    required: false,
  },
  {
    command: 'ansible-playbook',
    package: 'ansible-core',
    versionArgs: ['--version'],
    purpose: 'ansible provisioners',
    required: false,
  },
  {command: 'rsync', package: 'rsync', versionArgs: ['--version'], purpose: 'synced folders', required: false},
  {
    command: 'sbatch',
    package: 'slurm-client',
    versionArgs: ['--version'],
    purpose: 'box batch --on slurm',
    required: false,
  },
  {
    command: 'VBoxManage',
    package: 'virtualbox (from Oracle)',
    versionArgs: ['--version'],
    purpose: 'VirtualBox provider',
    required: false,
  },
]

export function packageFor(command: string): string | undefined {
  return HOST_TOOLS.find((tool) => tool.command === command)?.package
}
