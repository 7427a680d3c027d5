import {createHash, randomBytes} from 'node:crypto'
import {copyFile} from 'node:fs/promises'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {mapperPath} from '../../src/lib/box/resnap.js'
import type {BootChoice} from '../../src/lib/box/resnap.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from '../support/cache.js'
import {TestGuest} from '../support/guest.js'

/**
 * Power cuts inside the resnap window (issue 21): QEMU is SIGKILLed at a different moment
 * of a resnap boot each time — before the initramfs script, while it resets the snapshot's
 * header, while lvremove/lvcreate run after a forced recreate (another lvsize), right after
 * — chosen from the script's own lines on the serial console plus delays measured in an
 * uncut boot. Nothing the guest did not flush reaches the disk (QEMU's qcow2 metadata and
 * the guest's page cache die with it). Cut boots are not waited on past the cut; the boots
 * that verify (with and without resnap) check:
 *   - the box boots, and / is the root snapshot;
 *   - after a resnap boot, / is fresh: files written to /root and a change to /etc/issue in
 *     the snapshot before the cuts are gone;
 *   - after a boot without resnap, / is the old snapshot whole (every stale file there with
 *     its checksum) or fresh — never a mix — and fresh whenever the cut came after the
 *     script had said it was done;
 *   - ext4 reports no error; /persistent holds every file synced before a cut.
 */

interface Phase {
  /** Serial-console line that starts the moment (a RegExp on the whole log), or undefined: QEMU's start. */
  after?: RegExp
  /** Delay after it, as a fraction of the measured span `span` (or ms when span is undefined). */
  delay: number
  span?: 'reset' | 'remove' | 'create' | 'untilHook'
  name: string
}

const RESETTING = /resnap: resetting /
const REMOVING = /resnap: removing /
const CREATING = /resnap: creating /
const DONE = /resnap: (reset|recreated|created missing) \S+ \(/

/** What the snapshot holds, as far as the host can know after the cuts so far. */
type SnapshotState = 'stale' | 'fresh' | 'either'

interface Cut {
  name: string
  /** Lines of the script seen before the kill. */
  seen: string[]
  atMs: number
}

describe('resnap survives power cuts', {timeout: 600_000}, () => {
  let guest: TestGuest
  let rootSnap: string
  let boxSize: string
  const persistent = new Map<string, string>() // path in the guest → sha256
  const staleFiles = new Map<string, string>()
  let pristineIssue = ''
  let state: SnapshotState = 'fresh'
  const spans = {reset: 0, remove: 0, create: 0, untilHook: 0}
  const cuts: Cut[] = []
  let round = 0

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    guest = await TestGuest.fromBox(boxFile)
    const lvm = guest.box.metadata.box!.lvm!
    rootSnap = mapperPath(lvm.vg, lvm.snapshot)
    boxSize = lvm.snapshot_size!
  })

  afterAll(async () => {
    console.log(
      `power cuts: ${cuts.length} survived\n` +
        cuts
          .map(
            (cut, i) =>
              `  ${i + 1}. ${cut.name} at ${cut.atMs} ms; script had said: ${cut.seen.join(' | ') || '(nothing)'}`,
          )
          .join('\n'),
    )
    await guest?.dispose()
  })

  /** Milliseconds from QEMU's start until `pattern` is in the serial log. */
  async function waitForLine(startedAt: number, pattern: RegExp, timeoutMs = 180_000): Promise<number> {
    while (Date.now() - startedAt < timeoutMs) {
      if (pattern.test(await guest.serialLog())) return Date.now() - startedAt
      await sleep(5)
    }
    throw new Error(
      `no ${pattern} on the serial console after ${timeoutMs} ms:\n${(await guest.serialLog()).slice(-3000)}`,
    )
  }

  const scriptLines = (log: string) =>
    log
      .split('\n')
      .filter((line) => /resnap: /.test(line))
      .map((line) => line.trim())

  /** A verifying boot: to ssh, then the checks of the header comment against what the host expects. */
  async function verifyBoot(choice: BootChoice, lvsize?: string, inspect?: () => Promise<void>): Promise<void> {
    await guest.boot(choice, {lvsize})
    const expected: SnapshotState = choice.resnap ? 'fresh' : state
    // One ssh round trip for the checks (each costs seconds on a busy host).
    const report = await guest.root(
      [
        'echo "root $(findmnt -no SOURCE /)"',
        'dmesg | grep -E "EXT4-fs (error|warning)|Buffer I/O error|snapshot.*(invalid|corrupt)" | sed "s/^/kernel /" || true',
        `for f in ${[...persistent.keys(), ...staleFiles.keys(), '/etc/issue'].join(' ')}; do`,
        '  if [ -e $f ]; then echo "file $(sha256sum $f)"; else echo "absent $f"; fi',
        'done',
      ].join('\n'),
    )
    const rows = report.split('\n')
    expect(
      rows.filter((row) => row.startsWith('root ')),
      'the root device',
    ).toEqual([`root ${rootSnap}`])
    expect(
      rows.filter((row) => row.startsWith('kernel ')),
      'kernel errors',
    ).toEqual([])
    const found = new Map(
      rows
        .filter((row) => row.startsWith('file '))
        .map((row) => row.split(/\s+/).slice(1).reverse() as [string, string]),
    )
    for (const [path, sum] of persistent) expect(found.get(path), path).toBe(sum)
    const issue = found.get('/etc/issue')
    for (const path of [...persistent.keys(), '/etc/issue']) found.delete(path)
    const isFresh = found.size === 0 && issue === pristineIssue
    const isStale =
      found.size === staleFiles.size &&
      [...staleFiles].every(([f, sum]) => found.get(f) === sum) &&
      issue !== pristineIssue
    const seen = isFresh
      ? 'fresh'
      : isStale
        ? 'stale'
        : `a mix (${found.size}/${staleFiles.size} stale files, /etc/issue ${issue === pristineIssue ? 'pristine' : 'changed'})`
    if (expected === 'either') expect(['fresh', 'stale'], `the snapshot after the cuts is ${seen}`).toContain(seen)
    else expect(seen, `${choice.resnap ? 'resnap' : 'no-resnap'} boot after the cuts`).toBe(expected)
    state = seen as SnapshotState
    await inspect?.()
    await dirtyAndCut()
  }

  /**
   * Writes stale files to / (a fresh set when / is fresh) and a new file to /persistent, syncs,
   * and cuts the power: what was synced must survive; the stale files must not survive a resnap.
   */
  async function dirtyAndCut(): Promise<void> {
    round++
    const data = randomBytes(48 * 1024).toString('base64')
    const path = `/persistent/cut-${round}`
    const script = [`cat > ${path} <<'DATA'\n${data}\nDATA`]
    // 3 MiB over several files: the exception table spans more than one area (256 chunks of 4 KiB each).
    const sizesKiB = [1, 2048, 1024, 64]
    if (state === 'fresh') {
      script.push(
        ...sizesKiB.map(
          (kib, i) => `f=/root/stale-${round}-${i}; head -c ${kib * 1024} /dev/urandom > $f; sha256sum $f`,
        ),
        `echo "changed in round ${round}" >> /etc/issue`,
      )
    }
    const sums = await guest.root([...script, 'sync'].join('\n'))
    if (state === 'fresh') {
      staleFiles.clear()
      for (const line of sums.split('\n')) {
        const [sum, file] = line.split(/\s+/)
        staleFiles.set(file!, sum!)
      }
    }
    persistent.set(path, createHash('sha256').update(`${data}\n`).digest('hex'))
    state = state === 'fresh' ? 'stale' : state
    await guest.powerCut()
  }

  /**
   * Boots with `choice`, cuts the power at `phase`, records what the script had said by then.
   * Returns when (ms from QEMU's start) each of `timed` appeared on the console, waited for in order first.
   */
  async function cutBoot(choice: BootChoice, phase: Phase, lvsize?: string, timed: RegExp[] = []): Promise<number[]> {
    const startedAt = Date.now()
    await guest.start(choice, {lvsize})
    // When the script first speaks in this boot: later early cuts aim at a fraction of it
    // (the first boot of a new disk is slower than the rest).
    let watching = true
    const hookAt = (async () => {
      while (watching) {
        if (/resnap: (resetting|removing|creating) /.test(await guest.serialLog())) return Date.now() - startedAt
        await sleep(5)
      }
      return undefined
    })()
    const times: number[] = []
    for (const line of timed) times.push(await waitForLine(startedAt, line))
    let at = 0
    if (phase.after) at = await waitForLine(startedAt, phase.after)
    const delay = phase.span ? Math.round(spans[phase.span] * phase.delay) : phase.delay
    await sleep(Math.max(0, at + delay - (Date.now() - startedAt)))
    const atMs = Date.now() - startedAt
    await guest.powerCut()
    watching = false
    const spoke = await hookAt
    if (spoke !== undefined) spans.untilHook = spoke
    const log = await guest.serialLog()
    await copyFile(guest.files.serialLog, join(guest.workDir, `cut-${cuts.length + 1}.log`))
    const seen = scriptLines(log)
    cuts.push({name: phase.name, seen, atMs})
    console.log(
      `cut ${cuts.length}: ${phase.name} at ${atMs} ms; the script had said: ${seen.join(' | ') || '(nothing)'}`,
    )
    // The script changes the snapshot only after its first line; once it says it is done, the
    // old snapshot is gone for good, with or without resnap on the next boot.
    if (DONE.test(log)) state = 'fresh'
    else if (seen.length > 0 && state === 'stale') state = 'either'
    return times
  }

  /** Guest uptime in ms at each of the script's lines in this boot's kernel log. */
  async function scriptTimes(): Promise<Array<[string, number]>> {
    const lines = await guest.root('dmesg | grep "resnap: " || true')
    return [...lines.matchAll(/^\[\s*([\d.]+)\] (resnap: .*)$/gm)].map((m) => [m[2]!, Math.round(Number(m[1]) * 1000)])
  }

  const timeOf = (times: Array<[string, number]>, pattern: RegExp) => {
    const found = times.find(([line]) => pattern.test(line))
    if (!found) throw new Error(`no ${pattern} in the kernel log: ${JSON.stringify(times)}`)
    return found[1]
  }

  it('first boot: a reset, timed; the snapshot made stale', async () => {
    const startedAt = Date.now()
    const [untilHook] = await Promise.all([waitForLine(startedAt, RESETTING), guest.boot({resnap: true})])
    spans.untilHook = untilHook
    const times = await scriptTimes()
    spans.reset = timeOf(times, DONE) - timeOf(times, RESETTING)
    pristineIssue = await guest.root('sha256sum /etc/issue | cut -d" " -f1')
    console.log(
      `QEMU start → "resetting": ${spans.untilHook} ms; reset: ${spans.reset} ms; boot to ssh ${guest.lastBootMs} ms`,
    )
    await dirtyAndCut()
  })

  it('cuts around the header reset, then boots without resnap', async () => {
    await cutBoot({resnap: true}, {name: 'header reset starts', after: RESETTING, delay: 0})
    await cutBoot({resnap: true}, {name: 'header reset, 0.2 in', after: RESETTING, span: 'reset', delay: 0.2})
    await verifyBoot({resnap: false})
    await cutBoot({resnap: true}, {name: 'kernel (0.3 of the way to the script)', span: 'untilHook', delay: 0.3})
    await cutBoot(
      {resnap: true},
      {name: 'early initramfs (0.8 of the way to the script)', span: 'untilHook', delay: 0.8},
    )
    // If the script had not started, a boot without resnap finds the stale snapshot whole.
    await verifyBoot({resnap: false})
    await cutBoot({resnap: true}, {name: 'header reset, 0.5 in', after: RESETTING, span: 'reset', delay: 0.5})
    await cutBoot({resnap: true}, {name: 'header reset, 0.8 in', after: RESETTING, span: 'reset', delay: 0.8})
    await cutBoot({resnap: true}, {name: 'switch to the real root (1.5 s after the reset)', after: DONE, delay: 1500})
    await cutBoot({resnap: true}, {name: 'right after the reset', after: DONE, delay: 0})
    // The script had said it was done: fresh, although this boot does not reset.
    await verifyBoot({resnap: false})
  })

  it('cuts while lvremove and lvcreate recreate it (another lvsize), then boots with and without resnap', async () => {
    // Each resnap boot asks for a size the snapshot has never had, so it recreates it (or
    // creates it, when a cut left none) however many earlier cuts came before the change.
    // (A cycle of three sizes once failed: two cuts before lvremove kept the size of three boots ago.)
    let next = 0
    const size = () => `${1024 + 32 * next++}M`
    // The first recreate is timed on the console (removing → creating → done) and cut at its end.
    const [removing, creating, done] = await cutBoot(
      {resnap: true},
      {name: 'right after lvcreate', after: DONE, delay: 0},
      size(),
      [REMOVING, CREATING, DONE],
    )
    spans.remove = creating! - removing!
    spans.create = done! - creating!
    console.log(`lvremove: ${spans.remove} ms; lvcreate: ${spans.create} ms (from the console)`)
    await verifyBoot({resnap: false})
    // A cut may leave no snapshot: then there is no lvremove, and the cut comes in lvcreate.
    const REMOVING_OR_CREATING = /resnap: (removing|creating) /
    await cutBoot({resnap: true}, {name: 'lvremove starts', after: REMOVING_OR_CREATING, delay: 0}, size())
    await cutBoot(
      {resnap: true},
      {name: 'lvremove, 0.5 in', after: REMOVING_OR_CREATING, span: 'remove', delay: 0.5},
      size(),
    )
    await cutBoot({resnap: true}, {name: 'lvcreate starts', after: CREATING, delay: 0}, size())
    // No snapshot, or only its store as a plain LV: a boot without resnap makes it rather than waiting for root=.
    await verifyBoot({resnap: false}, undefined, async () => {
      console.log(
        `boot without resnap after a cut in lvcreate: ${scriptLines(await guest.serialLog()).join(' | ') || '(the snapshot was whole)'}`,
      )
    })
    await cutBoot({resnap: true}, {name: 'lvcreate, 0.3 in', after: CREATING, span: 'create', delay: 0.3}, size())
    await cutBoot({resnap: true}, {name: 'lvcreate, 0.7 in', after: CREATING, span: 'create', delay: 0.7}, size())
    await verifyBoot({resnap: true}, boxSize, async () => {
      expect(await guest.root(`lvm lvs --noheadings --units m --nosuffix -o lv_size,origin ${rootSnap} | xargs`)).toBe(
        `${Number.parseInt(boxSize, 10) * (boxSize.endsWith('G') ? 1024 : 1)}.00 root`,
      )
    })
    expect(cuts.length).toBeGreaterThanOrEqual(10)
  })
})
