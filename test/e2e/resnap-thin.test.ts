/**
 * The thin box (boxes/debian-bookworm-thin: `snapshot: thin`), booted for real through the
 * CLI: root and root_snap are thin volumes of one pool, resnapped by the initramfs-tools
 * script (initramfs/scripts/local-top/resnap, its lvpool= branch), and it must keep the
 * promises the reference box keeps (test/support/resnap-kind.ts); `box status` shows the
 * pool's fill. Boots QEMU: run under `flock /tmp/box-qemu.lock`.
 */
import {expect, it} from 'vitest'

import {describeResnapKind} from '../support/resnap-kind.js'

describeResnapKind({
  recipe: 'debian-bookworm-thin',
  resetBy: 'the initramfs-tools script (thin)',
  resnapLine:
    /resnap: (recreated|created missing) box\/root_snap \(thin, in box\/pool\) from box\/root in (\d+\.\d+) s/g,
  status: {
    initramfs: 'initramfs-tools',
    snapshotKind: 'thin',
    poolDataPercent: expect.any(Number),
    poolMetadataPercent: expect.any(Number),
  },
  statusText: /thin pool \d+\.\d% data, \d+\.\d% metadata used \(thin, resnap by initramfs-tools\)$/m,
  firstBoot: async (ssh, status) => {
    // root_snap is a thin snapshot of root in the pool (V: thin volume), active, without the
    // activation-skip flag; the pool fails writes when full instead of queueing them.
    const lvs = await ssh(
      'sudo -n lvm lvs --noheadings --separator , -o lv_name,lv_attr,origin,pool_lv,lv_when_full box | tr -d " "',
    )
    const rows = Object.fromEntries(lvs.split('\n').map((row) => [row.split(',')[0], row.split(',').slice(1)]))
    expect(rows.root_snap).toEqual([expect.stringMatching(/^Vwi-ao/), 'root', 'pool', ''])
    expect(rows.root).toEqual([expect.stringMatching(/^Vwi-a-/), '', 'pool', ''])
    expect(rows.pool).toEqual([expect.stringMatching(/^twi-aot/), '', '', 'error'])
    expect(await ssh('sudo -n lvm lvs --noheadings -o skip_activation box/root_snap | xargs')).toBe('')
    // The status figure is the pool's own, as lvs reports it.
    const dataPercent = Number(await ssh('sudo -n lvm lvs --noheadings -o data_percent box/pool | xargs'))
    expect(dataPercent).toBeGreaterThan(5)
    expect(status.poolDataPercent).toBeCloseTo(dataPercent, 0)
  },
  moreTests: ({ssh, up, halt, status, cli}) => {
    it('fills / to the end: the filesystem runs out, never the pool (twice root_size); the next resnap boot frees it', async () => {
      // O_DIRECT: every block goes through to the thin volume, none is held in the page cache.
      const written = await ssh(
        'sudo -n dd if=/dev/zero of=/var/tmp/fill bs=4M oflag=direct status=none 2>&1; echo "dd=$?"',
      )
      expect(written).toMatch(/No space left on device[\s\S]*dd=1$/)
      expect(Number(await ssh('sudo -n lvm lvs --noheadings -o data_percent box/root_snap | xargs'))).toBeGreaterThan(
        95,
      )
      // The pool has room (rw, not out_of_data_space): no write failed with an I/O error, / is still read-write.
      expect((await ssh('sudo -n dmsetup status box-pool-tpool')).split(/\s+/)[7]).toBe('rw')
      expect(await ssh('findmnt -no OPTIONS /')).toMatch(/^rw,/)
      const full = await status()
      expect(full.poolDataPercent).toBeGreaterThan(40)
      expect(full.poolDataPercent).toBeLessThan(80)
      expect(full.warning).toBeUndefined()
      await halt()
      expect(await up()).toEqual([expect.stringMatching(/^resnap: recreated /)])
      expect(await ssh('test -e /var/tmp/fill && echo present || echo absent')).toBe('absent')
      // The old snapshot's blocks went back to the pool with it.
      expect((await status()).poolDataPercent).toBeLessThan(Number(full.poolDataPercent) / 3)
    })

    it('box package refuses a thin-snapshot box, saying what to do instead', async () => {
      const packaged = await cli(['package', '--output', 'thin.box'])
      expect(packaged.exitCode).toBe(2)
      expect(packaged.stderr).toMatch(/runs a thin-snapshot box \(kind\): box package cannot package one yet/)
      expect(packaged.stderr).toMatch(/box build RECIPE_DIR/)
    })
  },
})
