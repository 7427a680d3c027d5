import {describe, expect, it} from 'vitest'

import {compareVersions, parseConstraint, satisfies, VersionSyntaxError} from '../../src/lib/core/versions.js'

describe('parseConstraint (box_version)', () => {
  it('reads operators, bare versions and comma-separated lists', () => {
    expect(parseConstraint('>= 1.2, < 2')).toEqual([
      {operator: '>=', version: '1.2'},
      {operator: '<', version: '2'},
    ])
    expect(parseConstraint('1.0.3')).toEqual([{operator: '=', version: '1.0.3'}])
    expect(parseConstraint('~>1.4')).toEqual([{operator: '~>', version: '1.4'}])
    expect(parseConstraint(' != 20240101.0.1 ')).toEqual([{operator: '!=', version: '20240101.0.1'}])
  })

  it.each([
    ['', 'empty version constraint'],
    ['>= 1.2,', 'empty requirement in ">= 1.2," (a stray comma?)'],
    ['=> 1', '"=> 1" is not a requirement'],
    ['>= one', '">= one": "one" is not a version'],
    ['>= 1..2', '"1..2" is not a version'],
    ['latest', '"latest" is not a version'],
  ])('rejects %j', (text, message) => {
    expect(() => parseConstraint(text)).toThrow(VersionSyntaxError)
    expect(() => parseConstraint(text)).toThrow(message)
  })
})

describe('compareVersions and satisfies', () => {
  it('compares segment by segment, missing segments as 0, pre-releases first', () => {
    expect(compareVersions('1.10', '1.9')).toBe(1)
    expect(compareVersions('1.0', '1')).toBe(0)
    expect(compareVersions('1.0.0-beta1', '1.0.0')).toBe(-1)
    expect(compareVersions('2.0.0.rc1', '1.9')).toBe(1)
  })

  it.each([
    ['1.5', '>= 1.2, < 2', true],
    ['2.0', '>= 1.2, < 2', false],
    ['1.4.9', '~> 1.4', true],
    ['2.0', '~> 1.4', false],
    ['1.4.9', '~> 1.4.2', true],
    ['1.5.0', '~> 1.4.2', false],
    ['1.0', '!= 1.0.0', false],
  ])('%s meets %j: %s', (version, constraint, expected) => {
    expect(satisfies(version, constraint)).toBe(expected)
  })
})
