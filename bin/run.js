#!/usr/bin/env node
import {runFastPath} from '../dist/lib/bundle/fast-path.js'

// box ssh and box status answer without loading oclif when their arguments are plain (src/cli/fast-path.ts).
if (!(await runFastPath(process.argv.slice(2)))) {
  const {execute, settings} = await import('@oclif/core')
  // Always the compiled commands: under NODE_ENV=test or development oclif would look for
  // the TypeScript sources to run with tsx (and warn that it found none).
  settings.enableAutoTranspile = false
  await execute({dir: import.meta.url})
}
