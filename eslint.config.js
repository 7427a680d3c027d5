// oclif's shared config (what `oclif generate` sets up), with the rules prettier owns turned off
// (eslint-config-prettier) and the type-aware rules that catch a lost promise added.
//
// eslint-config-oclif 6 is the line that runs on Node 20 (7 pulls xo 0.58, unicorn 72 and
// jsdoc 63, which need Node 22). The rules turned off below each fired on this tree only
// where the code is deliberate; each group says why. A rule not listed stays as oclif sets it.
import {fileURLToPath} from 'node:url'

import oclif from 'eslint-config-oclif'
import prettier from 'eslint-config-prettier'

/** The mocha plugin's rules, all off: the tests use vitest, whose hooks and suites mocha's rules misread. */
const mochaOff = Object.fromEntries(
  oclif
    .flatMap((config) => Object.keys(config.rules ?? {}))
    .filter((rule) => rule.startsWith('mocha/'))
    .map((rule) => [rule, 'off']),
)

/** no-restricted-imports as oclif's set has it (Node's deprecated modules): the block for src/ below adds to it. */
const inheritedRestrictedImports = oclif
  .flatMap((config) => config.rules?.['no-restricted-imports'] ?? [])
  .filter((option) => typeof option === 'string' && option !== 'error' && option !== 'warn')

/**
 * Child processes in src/ only through src/lib/core/exec.ts (run, spawn, runAttached): a program
 * and an argument array, never a shell string built from input (README, Layout).
 */
const CHILD_PROCESS_MESSAGE =
  'box starts programs only through src/lib/core/exec.ts (run, spawn, runAttached), with argument arrays'
const childProcessModules = ['execa', 'child_process', 'node:child_process']
const childProcessSelector = `/^(${childProcessModules.join('|')})$/`
/** import('execa'), require('node:child_process'), a createRequire()'d require of them: what an import declaration rule misses. */
const childProcessLoads = [
  {selector: `ImportExpression[source.value=${childProcessSelector}]`, message: CHILD_PROCESS_MESSAGE},
  {selector: `CallExpression[arguments.0.value=${childProcessSelector}]`, message: CHILD_PROCESS_MESSAGE},
]
/** execa's and node's shell option: the program runs under /bin/sh -c, its arguments joined into a string. */
const noShell = {
  selector: "Property[key.name='shell'][value.value=true], Property[key.value='shell'][value.value=true]",
  message: 'no shell: true: pass the program and an argument array (src/lib/core/exec.ts)',
}

export default [
  {ignores: ['dist/', 'node_modules/', 'oclif.manifest.json']},
  ...oclif,
  prettier,
  {
    rules: {
      ...mochaOff,

      // Order is chosen for meaning here (metadata keys in Vagrant's order, flags in help order,
      // imports node → packages → local); sorting object keys would also change the key order of
      // --json output and of the metadata.json a .box carries.
      'perfectionist/sort-array-includes': 'off',
      'perfectionist/sort-classes': 'off',
      'perfectionist/sort-heritage-clauses': 'off',
      'perfectionist/sort-imports': 'off',
      'perfectionist/sort-interfaces': 'off',
      'perfectionist/sort-named-exports': 'off',
      'perfectionist/sort-named-imports': 'off',
      'perfectionist/sort-object-types': 'off',
      'perfectionist/sort-objects': 'off',
      'perfectionist/sort-sets': 'off',
      'perfectionist/sort-switch-case': 'off',
      'perfectionist/sort-union-types': 'off',
      'perfectionist/sort-intersection-types': 'off',

      // Layout prettier does not own; blank lines are placed by hand to group statements.
      '@stylistic/lines-between-class-members': 'off',
      '@stylistic/padding-line-between-statements': 'off',

      // snake_case names mirror file formats (Vagrant's metadata.json, recipe and Boxfile keys).
      camelcase: 'off',
      // Loops await one step at a time on purpose: guests share 2 cores, stages depend on each other.
      'no-await-in-loop': 'off',
      // Bit operations are file modes and block alignment.
      'no-bitwise': 'off',
      // `new Promise((resolve) => setTimeout(resolve, ms))` returns a timer nobody reads.
      'no-promise-executor-return': 'off',
      // `void promise` is how a promise is marked as deliberately not awaited (no-floating-promises' own escape).
      'no-void': 'off',

      // Taste: the tree's style differs and no bug hides behind it.
      'object-shorthand': 'off',
      'prefer-arrow-callback': 'off',
      'prefer-destructuring': 'off',
      'no-implicit-coercion': 'off',
      'no-return-assign': 'off',
      'no-sequences': 'off',
      'unicorn/catch-error-name': 'off',
      'unicorn/consistent-function-scoping': 'off',
      'unicorn/no-array-callback-reference': 'off',
      'unicorn/no-array-reduce': 'off',
      'unicorn/no-negated-condition': 'off',
      'unicorn/no-object-as-default-parameter': 'off',
      'unicorn/no-unreadable-array-destructuring': 'off',
      'unicorn/no-useless-undefined': 'off',
      'unicorn/numeric-separators-style': 'off',
      'unicorn/prefer-array-find': 'off',
      'unicorn/prefer-at': 'off',
      'unicorn/prefer-code-point': 'off',
      'unicorn/prefer-native-coercion-functions': 'off',
      'unicorn/prefer-string-raw': 'off',
      'unicorn/prefer-string-replace-all': 'off',
      'unicorn/prefer-ternary': 'off',
      'unicorn/switch-case-braces': 'off',
      'unicorn/prefer-switch': 'off',
      // Size heuristics (warnings in oclif's set): judged in review, not by a count.
      complexity: 'off',
      'max-depth': 'off',
      'max-params': 'off',

      // Idioms the rules misread: a for-await that reads one line, an execa transform that
      // drops output (a generator with no yield), an exhaustive switch in a callback, a loop
      // flag cleared by another function, got's default export named got.
      'array-callback-return': 'off',
      'import/no-named-as-default': 'off',
      'no-unmodified-loop-condition': 'off',
      'no-unreachable-loop': 'off',
      'require-yield': 'off',
      // Two literal spaces in a pattern stand for the two-space YAML indent they match.
      'no-regex-spaces': 'off',
      // One module imported twice (once for types) is harmless; tsc checks the names.
      'import/no-duplicates': 'off',
      // The CLI calls process.exit once, after oclif's output is flushed (cli/base-command.ts).
      'n/no-process-exit': 'off',
      'unicorn/no-process-exit': 'off',

      // `_name` marks a value left unused on purpose (also a rest sibling that drops a key).
      '@typescript-eslint/no-unused-vars': [
        'error',
        {argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true},
      ],
      // fetch and fs.cp work on Node 20 (engines >= 20.19), only their stability label differs.
      'n/no-unsupported-features/node-builtins': ['error', {ignores: ['fetch', 'fs/promises.cp']}],
      // bin/run.js loads the build output, which exists after `npm run build`.
      'import/no-unresolved': ['error', {ignore: ['^\\.\\./dist/']}],
    },
  },
  {
    // Type-aware rules: a promise nobody awaits loses its rejection (an unhandled rejection ends
    // the process; a failed cleanup goes unseen).
    files: ['**/*.ts'],
    languageOptions: {
      parserOptions: {
        projectService: {allowDefaultProject: ['vitest.config.ts']},
        tsconfigRootDir: fileURLToPath(new URL('.', import.meta.url)),
      },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      // An async function handed where a callback's result is ignored (setInterval, a Writable's
      // write/final/destroy) is fine when it catches inside, as each one here does; the rule
      // cannot see that, so it checks conditions and spreads only.
      '@typescript-eslint/no-misused-promises': ['error', {checksVoidReturn: {arguments: false, properties: false}}],
    },
  },
  {
    files: ['src/**'],
    ignores: ['src/lib/core/exec.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            ...inheritedRestrictedImports,
            ...childProcessModules.map((name) => ({name, message: CHILD_PROCESS_MESSAGE})),
          ],
        },
      ],
      'no-restricted-syntax': ['error', ...childProcessLoads, noShell],
    },
  },
  {
    files: ['src/lib/core/exec.ts'],
    rules: {'no-restricted-syntax': ['error', noShell]},
  },
  {
    files: ['**/*.cjs'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: {module: 'writable', require: 'readonly', __dirname: 'readonly'},
    },
  },
]
