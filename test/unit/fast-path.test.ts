import {describe, expect, it} from 'vitest'

import {parseFastPath} from '../../src/cli/fast-path.js'

describe('the fast path of box ssh and box status', () => {
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
    ]) {
      expect(parseFastPath(argv), argv.join(' ')).toBeUndefined()
    }
  })
})
