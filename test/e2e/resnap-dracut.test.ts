/**
 * The dracut box (boxes/debian-bookworm-dracut: Debian's dracut 059 instead of
 * initramfs-tools), booted for real through the CLI: its resnap runs through box's dracut
 * module (initramfs/dracut/90resnap), and it must keep the promises the reference box keeps
 * (test/support/resnap-kind.ts). Boots QEMU: run under `flock /tmp/box-qemu.lock`.
 */
import {expect} from 'vitest'

import {describeResnapKind} from '../support/resnap-kind.js'

describeResnapKind({
  recipe: 'debian-bookworm-dracut',
  resetBy: 'the dracut module',
  resnapLine: /resnap: (recreated|created missing) box\/root_snap \(2G\) from box\/root in (\d+\.\d+) s/g,
  status: {initramfs: 'dracut', snapshotKind: 'classic', snapshotUsedPercent: expect.any(Number)},
  statusText: /root snapshot \d+\.\d% used \(classic, resnap by dracut\)$/m,
  firstBoot: async (ssh) => {
    // The initramfs that booted is dracut's, with box's module and no initramfs-tools in the image.
    expect(
      await ssh('sudo -n lsinitrd "$(readlink -f /boot/initrd.img)" | grep -c "hooks/pre-mount/10-resnap.sh"'),
    ).toBe('1')
    const selections = (await ssh('dpkg --get-selections dracut initramfs-tools 2>/dev/null')).split('\n')
    expect(selections.map((line) => line.split(/\s+/).join(' '))).toContain('dracut install')
    expect(selections.join('\n')).not.toMatch(/^initramfs-tools\s+install$/m)
  },
})
