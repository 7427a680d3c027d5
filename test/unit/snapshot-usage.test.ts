import {describe, expect, it} from 'vitest'

import {printStatuses, snapshotDataPercent} from '../../src/lib/machine/status.js'

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
})
