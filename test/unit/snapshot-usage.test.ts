import {describe, expect, it} from 'vitest'

import {fillWarning, printStatuses, snapshotDataPercent, thinPoolPercents} from '../../src/lib/machine/status.js'

describe('the root snapshot fill from dmsetup status', () => {
  it('is used/total sectors in percent with two decimals, as lvs shows Data%', () => {
    // Read from the reference box, where lvs said 0.05 at the same moment.
    expect(snapshotDataPercent('0 6291456 snapshot 1928/4194304 16\n')).toBe(0.05)
    expect(snapshotDataPercent('0 6291456 snapshot 3523215/4194304 6896')).toBe(84)
  })

  it('is 100 for a snapshot that filled up', () => {
    expect(snapshotDataPercent('0 6291456 snapshot Invalid')).toBe(100)
  })

  it('is unknown for anything but a snapshot', () => {
    expect(snapshotDataPercent('0 6291456 linear')).toBeUndefined()
    expect(snapshotDataPercent('')).toBeUndefined()
  })
})

describe('thinPoolPercents', () => {
  it('reads data and metadata blocks used/total from a thin pool line (as lvs rounds them)', () => {
    // A 5 GiB pool of 64 KiB chunks (81920), 16 MiB of metadata in 4 KiB blocks (4096).
    const line = '0 10485760 thin-pool 3 171/4096 9640/81920 - rw no_discard_passdown error_if_no_space - 1024\n'
    expect(thinPoolPercents(line)).toEqual({data: 11.77, metadata: 4.17})
  })
  it('is 100 % for a pool out of data space or failed', () => {
    expect(
      thinPoolPercents(
        '0 10485760 thin-pool 3 171/4096 81920/81920 - out_of_data_space no_discard_passdown error_if_no_space - 1024',
      ),
    ).toEqual({data: 100, metadata: 4.17})
    expect(thinPoolPercents('0 10485760 thin-pool Fail')).toEqual({data: 100, metadata: 100})
  })
  it('is undefined for other targets and garbage', () => {
    expect(thinPoolPercents('0 6291456 snapshot 1928/4194304 16')).toBeUndefined()
    expect(thinPoolPercents('0 6291456 thin-pool 3 x/y')).toBeUndefined()
    expect(thinPoolPercents('')).toBeUndefined()
  })
})

describe('the status line of a running machine', () => {
  const base = {name: 'default', state: 'running' as const, provider: 'qemu', ssh: '127.0.0.1:2222', forwardedPorts: []}
  const line = (status: Parameters<typeof printStatuses>[0][number]) => {
    const lines: string[] = []
    printStatuses(
      [status],
      (text) => lines.push(text),
      () => undefined,
    )
    return lines[0]
  }

  it('names the snapshot kind and what resnaps it, as the box metadata says', () => {
    expect(line({...base, snapshotUsedPercent: 1.25, snapshotKind: 'classic', initramfs: 'dracut'})).toMatch(
      /ssh 127\.0\.0\.1:2222 {2}root snapshot 1\.3% used \(classic, resnap by dracut\)$/,
    )
    // Unknown fill (the guest did not answer): the kinds still.
    expect(line({...base, snapshotKind: 'classic', initramfs: 'initramfs-tools'})).toMatch(
      /root snapshot \(classic, resnap by initramfs-tools\)$/,
    )
    // A box built before the metadata named them.
    expect(line({...base, snapshotUsedPercent: 3})).toMatch(/root snapshot 3\.0% used$/)
    expect(line(base)).not.toMatch(/snapshot/)
  })

  it("shows a thin pool's data and metadata fill instead of a snapshot's, and warns above 80 %", () => {
    const thin = {
      ...base,
      snapshotKind: 'thin',
      initramfs: 'initramfs-tools',
      poolDataPercent: 11.77,
      poolMetadataPercent: 4.17,
    }
    expect(line(thin)).toMatch(/thin pool 11\.8% data, 4\.2% metadata used \(thin, resnap by initramfs-tools\)$/)
    expect(fillWarning(thin)).toBeUndefined()
    expect(fillWarning({...thin, poolDataPercent: 90})).toMatch(/^thin pool is 90\.0% full: at 100% writes to \/ fail/)
    expect(fillWarning({...thin, poolMetadataPercent: 85.5})).toMatch(/^thin pool is 85\.5% full/)
    expect(fillWarning({...base, snapshotUsedPercent: 81})).toMatch(/^root snapshot is 81\.0% full/)
  })
})
