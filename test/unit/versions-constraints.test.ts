import {describe, expect, it} from 'vitest'

import {compareVersions, parseConstraint, satisfies, VersionSyntaxError} from '../../src/lib/core/versions.js'

describe('version constraints (Vagrant / RubyGems rules)', () => {
  it.each([
    ['1.2.0', '>= 1.2, < 2', true],
    ['1.9.9', '>= 1.2, < 2', true],
    ['2.0', '>= 1.2, < 2', false],
    ['1.1.9', '>= 1.2, < 2', false],
    ['1.2', '~> 1.2', true],
    ['1.9', '~> 1.2', true],
    ['2.0', '~> 1.2', false],
    ['1.2.3', '~> 1.2.3', true],
    ['1.2.9', '~> 1.2.3', true],
    ['1.3.0', '~> 1.2.3', false],
    ['1.2.2', '~> 1.2.3', false],
    ['1.5', '~> 1', true],
    ['2.0', '~> 1', false],
    ['1.0', '= 1.0', true],
    ['1.0.0', '= 1.0', true],
    ['1.0.1', '= 1.0', false],
    ['1.0', '1.0', true],
    ['1.1', '1.0', false],
    ['1.0', '!= 1.0', false],
    ['1.1', '!= 1.0', true],
    ['1.10.0', '> 1.9', true],
    ['1.0.0.beta1', '< 1.0.0', true],
    ['20240101.0.1', '>= 20231231', true],
  ])('%s satisfies %j: %s', (version, constraint, expected) => {
    expect(satisfies(version, constraint)).toBe(expected)
  })

  it('compares numerically with missing segments as zero', () => {
    expect(compareVersions('1.10', '1.9')).toBe(1)
    expect(compareVersions('1.0', '1.0.0')).toBe(0)
    expect(compareVersions('1.0.0.beta', '1.0.0')).toBe(-1)
  })

  it.each([[''], ['>= '], ['>= 1.2,'], ['=> 1.2'], ['>= one'], ['1.2 || 2.0']])(
    'rejects %j with a clear error',
    (text) => {
      expect(() => parseConstraint(text)).toThrow(VersionSyntaxError)
    },
  )

  it('names the bad part', () => {
    expect(() => parseConstraint('>= 1.2, < two')).toThrow(/"< two": "two" is not a version/)
  })
})
