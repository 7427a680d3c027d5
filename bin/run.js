#!/usr/bin/env node
// Checked before anything else loads: on an older Node (Debian bookworm's is 18) box's modules
// would fail with an error that does not say what to do.
const [major, minor] = process.versions.node.split('.').map(Number)
if (major < 20 || (major === 20 && minor < 19)) {
  process.stderr.write(
    `Error: box needs Node.js >= 20.19; this is ${process.versions.node} (${process.execPath}).\n` +
      'Install Node.js 20.19 or newer (nodejs.org, NodeSource or nvm; Debian bookworm ships 18) and put it first on PATH.\n',
  )
  process.exit(1)
}

// box ssh, status, snapshot restore and run answer without loading oclif when their arguments are plain (src/cli/fast-path.ts).
const {runFastPath} = await import('../dist/lib/bundle/fast-path.js')
if (!(await runFastPath(process.argv.slice(2)))) {
  const {execute, settings} = await import('@oclif/core')
  // Always the compiled commands: under NODE_ENV=test or development oclif would look for
  // the TypeScript sources to run with tsx (and warn that it found none).
  settings.enableAutoTranspile = false
  await execute({dir: import.meta.url})
}
