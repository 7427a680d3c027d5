/**
 * The dracut module (initramfs/dracut/90resnap), checked statically; test/e2e/resnap-dracut.test.ts
 * boots it in boxes/debian-bookworm-dracut. Its hooks (and their helpers) are sourced by
 * dracut's init, so a syntax error or an `exit` in one would stop the boot.
 */
import {readFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'
import {describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

const MODULE = join(PROJECT_ROOT, 'initramfs', 'dracut', '90resnap')
const HOOKS = ['resnap.sh', 'resnap-repair.sh', 'box-resnap-lib.sh']

/** Lines of shell code, comments and blank lines left out. */
async function codeLines(file: string): Promise<string[]> {
  return (await readFile(join(MODULE, file), 'utf8'))
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
}

describe('the dracut resnap module', () => {
  it('parses: the hooks as POSIX sh (dash), module-setup.sh as bash', async () => {
    for (const hook of HOOKS) expect((await execa('dash', ['-n', join(MODULE, hook)], {reject: false})).stderr).toBe('')
    expect((await execa('bash', ['-n', join(MODULE, 'module-setup.sh')], {reject: false})).stderr).toBe('')
  })

  it('never exits from a sourced hook', async () => {
    for (const hook of HOOKS) {
      const exits = (await codeLines(hook)).filter((line) => /(^|[;&|{(]\s*)exit\b/.test(line))
      expect(exits, hook).toEqual([])
    }
  })

  it('makes a missing snapshot while dracut waits for root= (as local-top does), and resets at pre-mount', async () => {
    const setup = await codeLines('module-setup.sh')
    expect(setup).toContain('inst_hook initqueue/settled 90 "$moddir/resnap-repair.sh"')
    expect(setup).toContain('inst_hook pre-mount 10 "$moddir/resnap.sh"')
    // The helpers both hooks source, where they look for them.
    expect(setup).toContain('inst_simple "$moddir/box-resnap-lib.sh" /lib/box-resnap-lib.sh')
    const repair = (await codeLines('resnap-repair.sh')).join('\n')
    // Only where root= is the snapshot, and only when device-mapper has no snapshot there.
    expect(repair).toContain('[ "$rootdev" = "/dev/mapper/$snapdm" ]')
    expect(repair).toContain('*" snapshot "*) return 0 ;;')
    expect(repair).toContain('lvm lvcreate -y -s -L "$lvsize" -n "$lvsnap" "$vg/$lvroot"')
    // The same words on the console as the initramfs-tools script's repair.
    const localTop = await readFile(join(PROJECT_ROOT, 'initramfs', 'scripts', 'local-top', 'resnap'), 'utf8')
    expect(localTop).toContain('(no resnap asked, but it was missing or half made)')
    expect(repair).toContain('(no resnap asked, but it was missing or half made)')
    expect((await codeLines('resnap.sh')).join('\n')).toContain('[ -e /run/box-resnap-created ] && return 0')
  })
})
