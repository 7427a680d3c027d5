import {describe, expect, it} from 'vitest'

import {snapshotDataPercent} from '../../src/lib/machine/status.js'

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
