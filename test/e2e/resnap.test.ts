import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {mapperPath} from '../../src/lib/box/resnap.js'
import {testCacheDir} from '../support/cache.js'
import {TestGuest} from '../support/guest.js'

/**
 * The reference box, booted for real under QEMU: the resnap flow of DESIGN §4.
 * One guest is shared by the whole file; each test boots it the way it needs.
 */
describe('reference box: resnap boot flow', {timeout: 420_000}, () => {
  let guest: TestGuest
  let vg: string
  let rootSnap: string
  let rootOrigin: string

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    guest = await TestGuest.fromBox(boxFile)
    const lvm = guest.box.metadata.box!.lvm!
    vg = lvm.vg
    rootSnap = mapperPath(vg, lvm.snapshot)
    rootOrigin = mapperPath(vg, lvm.root)
  })

  afterAll(async () => {
    await guest?.dispose()
  })

  it('boots with / on the snapshot and prints the resnap line', async () => {
    await guest.boot({resnap: true})
    expect(await guest.root('findmnt -no SOURCE /')).toBe(rootSnap)
    expect(await guest.root('findmnt -no TARGET /persistent')).toBe('/persistent')
    // The built box has its snapshot already: it is reset in place (its store's header zeroed), not recreated.
    expect(await guest.serialLog()).toMatch(/resnap: reset \S+ .* in [\d.]+ s/)
    console.log(`boot to ssh (direct kernel, resnap): ${(guest.lastBootMs / 1000).toFixed(1)} s`)
  })

  it('throws away /root on a resnap boot, keeps /persistent, and provisiond runs runsetup', async () => {
    await guest.root(`
      echo gone > /root/scratch
      echo kept > /persistent/kept
      cat > /persistent/runsetup <<'SCRIPT'
#!/bin/sh
cat /proc/sys/kernel/random/boot_id >> /persistent/runsetup.ran
SCRIPT
      chmod 0755 /persistent/runsetup
      sync`)
    await guest.halt()
    await guest.boot({resnap: true})
    expect(await guest.root('test -e /root/scratch && echo present || echo absent')).toBe('absent')
    expect(await guest.root('cat /persistent/kept')).toBe('kept')
    const bootId = await guest.root('cat /proc/sys/kernel/random/boot_id')
    // provisiond is a boot-time unit: wait for it rather than racing ssh.
    const ran = await guest.root(
      'for i in $(seq 60); do grep -q . /persistent/runsetup.ran 2>/dev/null && break; sleep 1; done; cat /persistent/runsetup.ran',
    )
    expect(ran.split('\n')).toContain(bootId)
  })

  it("keeps this boot's changes when booted without resnap", async () => {
    await guest.root('echo stays > /root/no-resnap; sync')
    await guest.halt()
    await guest.boot({resnap: false})
    expect(await guest.root('cat /root/no-resnap')).toBe('stays')
    expect(await guest.root('findmnt -no SOURCE /')).toBe(rootSnap)
    expect(await guest.root('cat /proc/cmdline')).not.toMatch(/\bresnap\b/)
  })

  it('recreates a root_snap that was removed by hand', async () => {
    await guest.halt()
    await guest.boot({resnap: false, base: true})
    expect(await guest.root('findmnt -no SOURCE /')).toBe(rootOrigin)
    await guest.root(`lvm lvremove -y ${vg}/root_snap >/dev/null; lvm lvs --noheadings -o lv_name ${vg}`)
    expect(await guest.root(`lvm lvs --noheadings -o lv_name ${vg} | tr -d ' '`)).not.toMatch(/root_snap/)
    await guest.halt()
    await guest.boot({resnap: true})
    expect(await guest.root('findmnt -no SOURCE /')).toBe(rootSnap)
    expect(await guest.root(`lvm lvs --noheadings -o lv_name,origin ${vg}/root_snap | xargs`)).toBe('root_snap root')
    expect(await guest.serialLog()).toMatch(/resnap: created/)
  })

  it("boots through the box's own grub with the resnap entry", async () => {
    await guest.root('echo gone > /root/grub-scratch; sync')
    await guest.halt()
    await guest.boot({resnap: true}, {firmwareBoot: true})
    expect(await guest.root('cat /proc/cmdline')).toMatch(/\bresnap\b/)
    expect(await guest.root('findmnt -no SOURCE /')).toBe(rootSnap)
    expect(await guest.root('test -e /root/grub-scratch && echo present || echo absent')).toBe('absent')
    console.log(`boot to ssh (grub, resnap): ${(guest.lastBootMs / 1000).toFixed(1)} s`)
  })
})
