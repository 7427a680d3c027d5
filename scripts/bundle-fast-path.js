// Bundles box ssh's and box status's path (dist/fast-path.js, run by bin/run.js) into one
// file after `tsc`: Node 20 spends about 2 ms on each ES module it loads, and their two dozen
// modules were a fifth of `box ssh -c true`. The bundle sits in dist/lib/ so the paths its
// modules derive from import.meta.url (PROJECT_ROOT, the Boxfile parser) stay right.
// What the bundled modules load lazily stays a separate dist/lib module, and so does
// errors.js: BoxError must be one class, whichever copy of the code throws it.
import {build} from 'esbuild'
import {dirname, relative, resolve} from 'node:path'

const outfile = 'dist/lib/fast-path.bundle.js'
const outDir = resolve(dirname(outfile))

await build({
  entryPoints: ['dist/fast-path.js'],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  logLevel: 'warning',
  plugins: [
    {
      name: 'keep-lazy-and-shared-modules-external',
      setup(bundle) {
        bundle.onResolve({filter: /^\.\.?\//}, (args) => {
          const target = resolve(args.resolveDir, args.path)
          const shared = target === resolve(outDir, 'errors.js')
          if (args.kind !== 'dynamic-import' && !shared) return undefined
          // The specifier is kept as written, so it must mean the same from the bundle's folder.
          if (!shared && args.resolveDir !== outDir) throw new Error(`${args.importer}: lazy import of ${args.path} outside dist/lib cannot stay external`)
          return {path: `./${relative(outDir, target)}`, external: true}
        })
      },
    },
  ],
})
console.log(`${outfile}: bundled`)
