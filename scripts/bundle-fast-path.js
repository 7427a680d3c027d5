// Bundles the fast path (dist/cli/fast-path.js, run by bin/run.js: box ssh, status, snapshot restore, run) into one
// file after `tsc`: Node 20 spends about 2 ms on each ES module it loads, and their two dozen
// modules were a fifth of `box ssh -c true`. The bundle sits in dist/lib/bundle/, at the depth
// of every dist/lib/<layer>/ folder, so the paths its modules derive from import.meta.url
// (PROJECT_ROOT, the Boxfile parser) stay right.
// What the bundled modules load lazily stays a separate dist/lib module, and so does
// core/errors.js: BoxError must be one class, whichever copy of the code throws it.
import {build} from 'esbuild'
import {dirname, relative, resolve} from 'node:path'

const outfile = 'dist/lib/bundle/fast-path.js'
const outDir = resolve(dirname(outfile))
const sharedErrors = resolve('dist/lib/core/errors.js')
// What the fast path itself loads lazily (box run's and snapshot restore's library, completion)
// is bundled too, as chunks beside it (0.05 s of a `box run` here): only what those load lazily stays separate.
const entry = resolve('dist/cli/fast-path.js')

await build({
  entryPoints: [entry],
  outdir: outDir,
  splitting: true,
  chunkNames: 'chunk-[hash]',
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
          const chunk = args.kind === 'dynamic-import' && args.importer === entry
          if ((args.kind !== 'dynamic-import' || chunk) && target !== sharedErrors) return undefined
          // Rewritten to mean the same module from the bundle's folder.
          return {path: `./${relative(outDir, target)}`, external: true}
        })
      },
    },
  ],
})
console.log(`${outfile}: bundled`)
