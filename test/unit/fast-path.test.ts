import {describe, expect, it} from 'vitest'

import {FAST_RUN_FLAGS, parseFastPath} from '../../src/cli/fast-path.js'
import Run from '../../src/commands/run.js'
import {BaseCommand} from '../../src/cli/base-command.js'

describe('the fast path of box ssh, status, snapshot restore and run', () => {
  it('takes the plain forms of ssh', () => {
    expect(parseFastPath(['ssh'])).toEqual({command: 'ssh', names: [], words: [], json: false})
    expect(parseFastPath(['ssh', 'web', '-c', 'echo hi'])).toEqual({
      command: 'ssh',
      names: ['web'],
      shell: 'echo hi',
      words: [],
      json: false,
    })
    expect(parseFastPath(['ssh', '--command=ls'])).toMatchObject({shell: 'ls'})
    // Words after -- belong to the guest, flags among them included.
    expect(parseFastPath(['ssh', 'web', '--', 'ls', '-la', '--', 'x'])).toEqual({
      command: 'ssh',
      names: ['web'],
      words: ['ls', '-la', '--', 'x'],
      json: false,
    })
  })

  it('takes the plain forms of status', () => {
    expect(parseFastPath(['status'])).toEqual({command: 'status', names: [], words: [], json: false})
    expect(parseFastPath(['status', 'web', 'db', '--json'])).toEqual({
      command: 'status',
      names: ['web', 'db'],
      words: [],
      json: true,
    })
  })

  it('takes the plain forms of snapshot restore', () => {
    expect(parseFastPath(['snapshot', 'restore', 'ready'])).toEqual({
      command: 'snapshot restore',
      names: [],
      snapshot: 'ready',
      json: false,
      plain: false,
    })
    expect(parseFastPath(['snapshot', 'restore', 'web', 'ready', '--json', '--no-color'])).toEqual({
      command: 'snapshot restore',
      names: ['web'],
      snapshot: 'ready',
      json: true,
      plain: true,
    })
  })

  it('takes box run with its flags and the command after --', () => {
    expect(
      parseFastPath([
        'run',
        '--box',
        'grader',
        '--in',
        'a:/tmp/a',
        '--in=b',
        '--out',
        '/tmp/o',
        '--timeout',
        '2m',
        '--output-limit=1M',
        '--network',
        'on',
        '--user',
        'nobody2',
        '--follow',
        '--json',
        '--',
        'make',
        '-C',
        '/tmp/job',
        '--',
        'x',
      ]),
    ).toEqual({
      command: 'run',
      flags: {
        box: 'grader',
        in: ['a:/tmp/a', 'b'],
        out: ['/tmp/o'],
        timeout: '2m',
        'output-limit': '1M',
        network: 'on',
        user: 'nobody2',
        follow: true,
      },
      words: ['make', '-C', '/tmp/job', '--', 'x'],
      json: true,
      plain: false,
    })
    // The library's defaults apply to what is not given (src/lib/jobs/run.ts).
    expect(parseFastPath(['run', '--machine', 'w', '--', 'true'])).toEqual({
      command: 'run',
      flags: {machine: 'w', in: [], out: [], network: 'off', follow: false},
      words: ['true'],
      json: false,
      plain: false,
    })
  })

  it("knows every flag of box run's oclif command (a new flag must be added to both)", () => {
    const oclifFlags = Object.keys({...Run.flags, ...BaseCommand.baseFlags, json: true}).sort()
    expect([...FAST_RUN_FLAGS].sort()).toEqual(oclifFlags)
  })

  it('leaves everything else to oclif: other commands, help, other flags, mistakes', () => {
    for (const argv of [
      [],
      ['up'],
      ['ssh-config'],
      ['ssh', '--help'],
      ['ssh', '-h'],
      ['status', '--help'],
      ['status', '--no-color'],
      ['ssh', '-c'],
      ['ssh', '--json'],
      ['status', '-c', 'x'],
      ['status', '--', 'x'],
      ['snapshot', 'save', 'x'],
      ['snapshot', 'restore'],
      ['snapshot', 'restore', 'a', 'b', 'c'],
      ['snapshot', 'restore', 'x', '--help'],
      ['snapshot', 'restore', 'x', '--', 'y'],
      ['run', '--box', 'b'],
      ['run', '--box', 'b', 'echo', 'hi'],
      ['run', '--box', 'b', '--'],
      ['run', '--box', 'b', '--machine', 'm', '--', 'true'],
      ['run', '--network', 'maybe', '--', 'true'],
      ['run', '--help', '--', 'true'],
      ['run', '--timeout', '--', 'true'],
      ['run', '--exclusive', '--', 'true'],
    ]) {
      expect(parseFastPath(argv), argv.join(' ')).toBeUndefined()
    }
  })
})
