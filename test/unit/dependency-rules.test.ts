/**
 * The import rules in .dependency-cruiser.cjs, run by the real dependency-cruiser over a small
 * fixture tree: each rule must fire on the import it forbids, and the allowed imports (one of
 * each kind the layers need) must pass. Proves `npm run lint:deps` can fail, and fails for the
 * right reason.
 */
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join} from 'node:path'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

/** Fixture files: path → the imports it makes (each an import line). */
const TREE: Record<string, string[]> = {
  'src/lib/core/errors.ts': [`import {readFileSync} from 'node:fs'`],
  'src/lib/core/cycle-a.ts': [`import {b} from './cycle-b.js'`],
  'src/lib/core/cycle-b.ts': [`import {a} from './cycle-a.js'`],
  'src/lib/core/bad.ts': [`const lazy = () => import('../box/metadata.js')`],
  'src/lib/box/metadata.ts': [`import {x} from '../core/errors.js'`],
  'src/lib/box/bad.ts': [`import {x} from '../store/store.js'`],
  'src/lib/boxfile/types.ts': [`import type {x} from '../core/errors.js'`],
  'src/lib/boxfile/load.ts': [`import type {x} from './types.js'`, `import {y} from '../box/metadata.js'`],
  'src/lib/boxfile/bad.ts': [`import {x} from '../machine/up.js'`],
  'src/lib/store/store.ts': [
    `import {x} from '../boxfile/load.js'`,
    `import type {P} from '../../providers/provider.js'`,
  ],
  'src/lib/store/bad.ts': [`import {x} from '../../providers/qemu/index.js'`],
  'src/lib/store/updates.ts': [`import {x} from '../machine/up.js'`],
  'src/lib/machine/up.ts': [
    `import {x} from '../store/store.js'`,
    `import {providerFor} from '../../providers/index.js'`,
  ],
  'src/lib/machine/bad.ts': [`import {x} from '../jobs/run.js'`],
  'src/lib/jobs/run.ts': [`import {x} from '../machine/up.js'`, `import {y} from '../host/doctor.js'`],
  'src/lib/host/doctor.ts': [
    `import {x} from '../machine/up.js'`,
    `import {y} from '../../providers/virtualbox/index.js'`,
  ],
  'src/lib/stray.ts': [],
  'src/providers/provider.ts': [
    `import {x} from '../lib/box/metadata.js'`,
    `import type {I} from './qemu/instance.js'`,
  ],
  'src/providers/index.ts': [`import {q} from './qemu/index.js'`, `import {v} from './virtualbox/index.js'`],
  'src/providers/qemu/instance.ts': [`import {x} from '../../lib/core/errors.js'`],
  'src/providers/qemu/index.ts': [
    `import type {P} from '../provider.js'`,
    `import {i} from './instance.js'`,
    `import {v} from '../virtualbox/index.js'`,
  ],
  'src/providers/virtualbox/index.ts': [
    `import {i} from '../qemu/instance.js'`,
    `import {x} from '../../lib/boxfile/load.js'`,
  ],
  'src/builder/index.ts': [
    `import {x} from '../lib/box/metadata.js'`,
    `import type {I} from '../providers/qemu/instance.js'`,
  ],
  'src/cli/base.ts': [`import {x} from '../lib/core/errors.js'`],
  'src/cli/bad.ts': [`import {x} from '../commands/up.js'`],
  'src/commands/up.ts': [
    `import {b} from '../cli/base.js'`,
    `import {u} from '../lib/machine/up.js'`,
    `import {x} from '../builder/index.js'`,
    `import {s} from '../lib/stray.js'`,
  ],
  'src/commands/build.ts': [`import {x} from '../builder/index.js'`, `import {p} from '../providers/index.js'`],
}

/** Every violation the rules must report on TREE (cycles aside), as `rule: from → to`. */
const EXPECTED = [
  'core-imports-nothing: src/lib/core/bad.ts → src/lib/box/metadata.ts',
  'box-imports-core-only: src/lib/box/bad.ts → src/lib/store/store.ts',
  'boxfile-types-import-nothing: src/lib/boxfile/types.ts → src/lib/core/errors.ts',
  'boxfile-imports-no-use-case: src/lib/boxfile/bad.ts → src/lib/machine/up.ts',
  'store-imports-downward: src/lib/store/bad.ts → src/providers/qemu/index.ts',
  'store-imports-downward: src/lib/store/updates.ts → src/lib/machine/up.ts',
  'machine-imports-downward: src/lib/machine/bad.ts → src/lib/jobs/run.ts',
  'jobs-imports-downward: src/lib/jobs/run.ts → src/lib/host/doctor.ts',
  'host-imports-readers-only: src/lib/host/doctor.ts → src/providers/virtualbox/index.ts',
  'known-layers-only: src/commands/up.ts → src/lib/stray.ts',
  'provider-interface-no-implementation: src/providers/provider.ts → src/providers/qemu/instance.ts',
  'qemu-not-virtualbox: src/providers/qemu/index.ts → src/providers/virtualbox/index.ts',
  'virtualbox-not-qemu: src/providers/virtualbox/index.ts → src/providers/qemu/instance.ts',
  'providers-import-box-and-core: src/providers/virtualbox/index.ts → src/lib/boxfile/load.ts',
  'builder-imports-box-and-core: src/builder/index.ts → src/providers/qemu/instance.ts',
  'cli-imports-lib-only: src/cli/bad.ts → src/commands/up.ts',
  'commands-are-thin: src/commands/up.ts → src/builder/index.ts',
  'commands-are-thin-build: src/commands/build.ts → src/providers/index.ts',
].sort()

interface Violation {
  from: string
  to: string
  rule: {name: string; severity: string}
  cycle?: {name: string}[]
}

let root: string
let violations: Violation[]
let exitCode: number | undefined

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'box-deprules-'))
  for (const [file, imports] of Object.entries(TREE)) {
    await mkdir(dirname(join(root, file)), {recursive: true})
    await writeFile(join(root, file), [...imports, 'export const a = 1, b = 1, x = 1', ''].join('\n'))
  }
  await writeFile(join(root, 'package.json'), JSON.stringify({name: 'fixture', type: 'module'}))
  await writeFile(
    join(root, 'tsconfig.json'),
    JSON.stringify({compilerOptions: {module: 'NodeNext', moduleResolution: 'NodeNext'}, include: ['src']}),
  )
  const cruiser = join(PROJECT_ROOT, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs')
  // The same arguments as `npm run lint:deps` (whose `err` report sets the exit code), and a JSON report to read.
  const run = (outputType: string) =>
    execa(
      process.execPath,
      [cruiser, 'src', '--config', join(PROJECT_ROOT, '.dependency-cruiser.cjs'), '--output-type', outputType],
      {cwd: root, reject: false},
    )
  const [json, err] = await Promise.all([run('json'), run('err')])
  violations = JSON.parse(json.stdout).summary.violations
  exitCode = err.exitCode
}, 60_000)
afterAll(async () => {
  await rm(root, {recursive: true, force: true})
})

describe('dependency rules', () => {
  it('report exactly the forbidden imports, type-only and dynamic ones included', () => {
    const found = violations
      .filter((v) => v.rule.name !== 'no-circular')
      .map((v) => `${v.rule.name}: ${v.from} → ${v.to}`)
    expect(found.sort()).toEqual(EXPECTED)
  })

  it('report the one cycle and nothing else as one', () => {
    const cycles = violations
      .filter((v) => v.rule.name === 'no-circular')
      .map((v) => [v.from, ...v.cycle!.map((step) => step.name)])
    expect(cycles).toEqual([['src/lib/core/cycle-a.ts', 'src/lib/core/cycle-b.ts', 'src/lib/core/cycle-a.ts']])
  })

  it('are all errors, so the run fails', () => {
    expect(violations.every((v) => v.rule.severity === 'error')).toBe(true)
    expect(exitCode).toBe(EXPECTED.length + 1)
  })
})
