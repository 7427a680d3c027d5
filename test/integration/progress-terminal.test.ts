/**
 * Progress read off a real terminal (tmux): other output (a guest's lines) appears above
 * the live stage line, never run together with it, and the stage line redraws below.
 */
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

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
