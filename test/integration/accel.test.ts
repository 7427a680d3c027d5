import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {BoxError} from '../../src/lib/core/errors.js'
import {candidateAccels, probeFirmware, probeOnce, resolveAccel} from '../../src/providers/qemu/accel.js'
import {writeFile} from 'node:fs/promises'

describe('acceleration probe (real QEMU)', () => {
  let cacheDir: string
  beforeAll(async () => {
    cacheDir = await mkdtemp(join(tmpdir(), 'box-accel-'))
  })
  afterAll(async () => {
    await rm(cacheDir, {recursive: true, force: true})
  })

  it('the probe guest reaches long mode and exits under TCG', async () => {
    const firmware = join(cacheDir, 'fw.bin')
    await writeFile(firmware, probeFirmware())
    const attempt = await probeOnce('qemu-system-x86_64', 'tcg', firmware, 10_000)
    expect(attempt).toMatchObject({accel: 'tcg', ok: true})
  })

  it('answers within a few seconds, never hangs, and caches the answer', async () => {
    const started = Date.now()
    const result = await resolveAccel({cacheDir, env: {}, deadlineMs: 3000})
    const elapsed = Date.now() - started
    expect(await candidateAccels()).toContain(result.accel)
    expect(result.source).toBe('probe')
    // Each candidate gets the deadline at most: KVM hanging here costs 3 s, then TCG answers.
    expect(elapsed).toBeLessThan(3000 * result.attempts.length + 5000)
    const cached = JSON.parse(await readFile(join(cacheDir, 'accel.json'), 'utf8'))
    expect(cached.result.accel).toBe(result.accel)
    expect((await resolveAccel({cacheDir, env: {}})).source).toBe('cache')
  })

  it('honours BOX_ACCEL and rejects unknown values', async () => {
    expect(await resolveAccel({cacheDir, env: {BOX_ACCEL: 'tcg'}})).toEqual({accel: 'tcg', source: 'env', attempts: []})
    await expect(resolveAccel({cacheDir, env: {BOX_ACCEL: 'xen'}})).rejects.toThrow(BoxError)
  })
})
