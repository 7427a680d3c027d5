/**
 * Progress read off a real terminal (tmux): other output (a guest's lines) appears above
 * the live stage line, never run together with it, and the stage line redraws below; the
 * real `box add` of a local .box shows a spinner and its time, never a byte counter.
 */
import {mkdir} from 'node:fs/promises'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'
import {screenRows, Terminal, uncleanRow} from '../support/terminal.js'

const SCRIPT = `
const {createProgress} = await import(${JSON.stringify(join(PROJECT_ROOT, 'dist', 'lib', 'core', 'progress.js'))})
const progress = createProgress()
const stage = progress.stage('default: securing as worker of example.org')
await new Promise((r) => setTimeout(r, 400))
progress.print('default: runsecure: lockdown in force')
await new Promise((r) => setTimeout(r, 400))
progress.print('default: runsecure: done')
await new Promise((r) => setTimeout(r, 300))
stage.done()
console.log('END')
`

describe('progress on a terminal', () => {
  const socket = `box-progress-test-${process.pid}`
  afterAll(async () => {
    await execa('tmux', ['-L', socket, 'kill-server'], {reject: false})
  })

  it('prints guest lines above the spinner, each on its own row', async () => {
    await execa(
      'tmux',
      [
        '-L',
        socket,
        'new-session',
        '-d',
        '-s',
        'p',
        '-x',
        '120',
        '-y',
        '20',
        'sh',
        '-c',
        'node --input-type=module -e "$0"; sleep 60',
        SCRIPT,
      ],
      {stdin: 'ignore'},
    )
    const deadline = Date.now() + 20_000
    let screen = ''
    while (!/^END$/m.test(screen)) {
      if (Date.now() > deadline) throw new Error(`the terminal never showed END; it shows:\n${screen}`)
      await sleep(100)
      screen = (await execa('tmux', ['-L', socket, 'capture-pane', '-p', '-t', 'p'])).stdout
    }
    const rows = screen.split('\n').filter((row) => row.trim() !== '')
    expect(rows.slice(0, 2)).toEqual(['default: runsecure: lockdown in force', 'default: runsecure: done'])
    expect(rows[2]).toMatch(/^✔ default: securing as worker of example\.org \(\d+(\.\d+)? s\)$/)
    expect(rows[3]).toBe('END')
    expect(rows).toHaveLength(4)
  })
})

describe('box add of a local .box on a terminal', () => {
  const terminal = new Terminal('progress-add')
  let cleanup: (() => Promise<void>) | undefined
  afterAll(async () => {
    await terminal.kill()
    await cleanup?.()
  })

  it('shows a spinner and the time while extracting, no byte counter, and reads cleanly after', async () => {
    const temp = await makeTempDir('box-progress-add-')
    cleanup = temp.cleanup
    const project = join(temp.dir, 'project')
    await mkdir(project)
    // 100 MB of random data: extracting it lasts long enough (0.8 s here) for the live line to be read.
    const file = await makeBoxFile(temp.dir, {
      imageBytes: 100_000_000,
      metadata: {provider: 'qemu', format: 'qcow2', box: {version: '1.0', user: 'box'}},
    })
    const exitFile = join(temp.dir, 'exit')
    const env = {cwd: project, dataDir: join(temp.dir, 'data'), cacheDir: join(temp.dir, 'cache')}
    await terminal.start('add', env, exitFile, ['add', 'big', file, '--no-convert'])
    const {exitCode, lines} = await terminal.sampleUntilExit(exitFile, 60_000, 20)
    const screen = await terminal.screen(true)
    expect(exitCode, screen).toBe('0')

    const live = lines.filter((line) => line.includes('Extracting big') && !line.startsWith('✔'))
    expect(live.length, `the live line was never seen; the pane showed:\n${lines.join('\n')}`).toBeGreaterThan(0)
    for (const line of live) expect(line).toMatch(/^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] Extracting big \(\d+(\.\d)? s\)$/)

    const rows = screenRows(screen)
    expect(uncleanRow(rows), screen).toBeUndefined()
    expect(rows).toHaveLength(2)
    expect(rows[0]).toMatch(/^✔ Extracting big \(\d+(\.\d)? s\): 100 MB$/)
    expect(rows[1]).toBe('Added box big 1.0 (qemu), 100 MB')
  })
})
