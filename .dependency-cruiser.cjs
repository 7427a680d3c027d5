/**
 * The import rules of src/ (docs/architecture.md; DESIGN §2). Layers import only inward:
 *
 *   commands → cli → lib use cases (jobs → machine → store → boxfile; host) → lib/box → lib/core
 *   providers → lib/box, lib/core        builder → lib/box, lib/core
 *
 * Each rule forbids what a layer must not import; the allowed set is spelled out in its
 * `pathNot`. Type-only and dynamic imports count like any other: a type that lives in the
 * wrong layer couples the layers just the same, and `await import()` does not break a cycle,
 * it hides it. Run with `npm run lint:deps` (part of `npm test`).
 */

/** The lib folders whose rules are written below; code anywhere else in src/lib escapes them. */
const LIB_FOLDERS = '(core|box|boxfile|store|machine|jobs|host)'
/** Every top-level home in src/; a file outside these has no rule and so no place. */
const LAYERS = `^src/(cli|commands|builder|providers|lib/${LIB_FOLDERS})/`
/** What every lib use case may import besides the use cases below it. */
/** The provider registry is providers/index.ts (providers) and providers/conversions.ts (the box conversions they offer). */
const LIB_BASE = ['^src/lib/box/', '^src/lib/core/', '^src/providers/(index|conversions|provider)\\.ts$']

/** Forbid `from` importing anything in src/ outside its own folder and `allowed`. */
const onlyInward = (name, comment, from, allowed) => ({
  name,
  comment,
  severity: 'error',
  from: {path: `^${from}`},
  to: {path: '^src/', pathNot: [`^${from}`, ...allowed]},
})

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment:
        'A cycle means no module in it can be understood, tested or loaded alone, and an import-order ' +
        'change can surface a half-initialised module at run time. Move the shared part (often a type) down a layer.',
      severity: 'error',
      from: {path: '^src/'},
      to: {circular: true},
    },
    {
      name: 'known-layers-only',
      comment:
        'Every file in src/ lives in one of the layers these rules know (cli, commands, builder, providers, ' +
        `lib/${LIB_FOLDERS}); a file elsewhere (say src/lib/foo.ts) would be checked by no rule.`,
      severity: 'error',
      from: {path: '^src/'},
      to: {path: '^src/', pathNot: LAYERS},
    },
    {
      name: 'known-layers-only-from',
      comment: 'The same as known-layers-only, for the importing side.',
      severity: 'error',
      from: {path: '^src/', pathNot: LAYERS},
      to: {path: '^src/'},
    },

    // The command line.
    {
      name: 'commands-are-thin',
      comment:
        'A command parses, makes one lib call and prints: it reaches cli (base commands) and lib, never ' +
        'providers (commands do not talk to QEMU or VBoxManage), the builder, nor another command.',
      severity: 'error',
      from: {path: '^src/commands/', pathNot: '^src/commands/build\\.ts$'},
      to: {path: '^src/', pathNot: ['^src/cli/', '^src/lib/']},
    },
    {
      name: 'commands-are-thin-build',
      comment:
        'commands-are-thin for `box build`, which also runs the builder (a separate program no other command needs).',
      severity: 'error',
      from: {path: '^src/commands/build\\.ts$'},
      to: {path: '^src/', pathNot: ['^src/cli/', '^src/lib/', '^src/builder/']},
    },
    onlyInward(
      'cli-imports-lib-only',
      'The base commands and the fast path sit under the commands and over lib: they import lib, never a ' +
        'command (that is the wrong direction), a provider or the builder.',
      'src/cli/',
      ['^src/lib/'],
    ),

    // lib use cases, each only downward: jobs → machine → store → boxfile; host beside jobs.
    onlyInward(
      'jobs-imports-downward',
      'Jobs drive machines (create → run → destroy); they build on machine, store and boxfile, and reach ' +
        'providers only through the registry and the interface.',
      'src/lib/jobs/',
      ['^src/lib/(machine|store|boxfile)/', ...LIB_BASE],
    ),
    onlyInward(
      'machine-imports-downward',
      'Machine use cases (up, halt, ssh, provision, package…) use the store and the Boxfile, and the ' +
        'provider interface and registry, never a provider implementation (packaging a VirtualBox machine ' +
        'must not read a QEMU path), nor jobs or host above them.',
      'src/lib/machine/',
      ['^src/lib/(store|boxfile)/', ...LIB_BASE],
    ),
    onlyInward(
      'store-imports-downward',
      'The box store (add, import, query, remove, updates, prune) knows boxes, not machines: it may read a ' +
        'Boxfile, but a store module importing machine code makes the store depend on its own user.',
      'src/lib/store/',
      ['^src/lib/boxfile/', ...LIB_BASE],
    ),
    onlyInward(
      'boxfile-imports-no-use-case',
      'The Boxfile (types, find, schema, load, init template) is the lowest use case: the machine and store ' +
        'code read it, so it importing them is a cycle in waiting.',
      'src/lib/boxfile/',
      LIB_BASE,
    ),
    onlyInward(
      'host-imports-readers-only',
      'Host checks (doctor) read the store and machines and ask providers through the interface; nothing in ' +
        'lib imports host, so it may sit above machine and store.',
      'src/lib/host/',
      ['^src/lib/(machine|store|boxfile)/', ...LIB_BASE],
    ),
    {
      name: 'boxfile-types-import-nothing',
      comment:
        'The Boxfile types are the vocabulary every layer above shares; importing nothing keeps them loadable ' +
        'from anywhere without pulling a schema, a parser or a cycle along. The one exception is the type ' +
        'ForwardedPort from lib/core/ports (providers take it too, and they may not import the Boxfile); ' +
        'types.ts imports it with `import type`, which loads nothing.',
      severity: 'error',
      from: {path: '^src/lib/boxfile/types\\.ts$'},
      to: {pathNot: '^src/lib/core/ports\\.ts$'},
    },

    // The .box format and the core.
    onlyInward(
      'box-imports-core-only',
      'The .box format (metadata, archive, resnap, boot choice) is shared by the store, the machines, the ' +
        'providers and the builder, so it may lean only on core.',
      'src/lib/box/',
      ['^src/lib/core/'],
    ),
    onlyInward(
      'core-imports-nothing',
      'Core (errors, exec, lock, paths, ports, progress…) is what everything stands on; it imports nothing ' +
        'else of src.',
      'src/lib/core/',
      [],
    ),

    // Providers and the builder.
    onlyInward(
      'providers-import-box-and-core',
      'A provider drives one hypervisor for the lib use cases; importing a use case would turn the ' +
        'boundary around.',
      'src/providers/',
      ['^src/lib/box/', '^src/lib/core/'],
    ),
    {
      name: 'qemu-not-virtualbox',
      comment: 'Providers are independent: what both need belongs in provider.ts, lib/box or lib/core.',
      severity: 'error',
      from: {path: '^src/providers/qemu/'},
      to: {path: '^src/providers/virtualbox/'},
    },
    {
      name: 'virtualbox-not-qemu',
      comment: 'Providers are independent: what both need belongs in provider.ts, lib/box or lib/core.',
      severity: 'error',
      from: {path: '^src/providers/virtualbox/'},
      to: {path: '^src/providers/qemu/'},
    },
    {
      name: 'provider-interface-no-implementation',
      comment:
        'provider.ts is the interface every provider implements and lib programs against; a type it takes ' +
        'from qemu/ or virtualbox/ ties the interface to one implementation.',
      severity: 'error',
      from: {path: '^src/providers/provider\\.ts$'},
      to: {path: '^src/providers/(qemu|virtualbox)/'},
    },
    onlyInward(
      'builder-imports-box-and-core',
      'The builder makes a .box from a recipe; it shares the .box format and core with the runtime, and a ' +
        'guest contract it needs (the agent protocol) belongs in lib/box, not in a provider.',
      'src/builder/',
      ['^src/lib/box/', '^src/lib/core/'],
    ),

    // Packages.
    {
      name: 'not-to-unresolvable',
      comment: 'An import that resolves to no file is a broken build or a typo.',
      severity: 'error',
      from: {path: '^src/'},
      to: {couldNotResolve: true},
    },
    {
      name: 'no-non-package-json',
      comment:
        'A package src/ imports must be in package.json, or the installed CLI gets whatever version happens to be there, or none.',
      severity: 'error',
      from: {path: '^src/'},
      to: {dependencyTypes: ['npm-no-pkg', 'npm-unknown']},
    },
    {
      name: 'not-to-dev-dep',
      comment:
        'src/ is what ships: a devDependency is not installed with the CLI (type-only imports erase at build time).',
      severity: 'error',
      from: {path: '^src/'},
      to: {dependencyTypes: ['npm-dev'], dependencyTypesNot: ['type-only']},
    },
  ],
  options: {
    doNotFollow: {path: 'node_modules'},
    // Type-only imports are kept (pre-compilation dependencies): they are part of the layering.
    tsPreCompilationDeps: true,
    tsConfig: {fileName: 'tsconfig.json'},
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
      extensions: ['.ts', '.js', '.d.ts'],
    },
    reporterOptions: {text: {highlightFocused: true}},
  },
}
