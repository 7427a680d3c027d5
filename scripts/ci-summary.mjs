// Reads vitest's JSON report (.ci/run): prints the plain "N passed, N failed, N skipped" line CI
// reads, and fails when a test skipped that CI is meant to run. CI runs as root, with tmpfs and
// vagrant installed, so every test can run there: a skip is a missing install step or a broken
// probe, not a condition to live with. Allowed skips are named, with why, in test/allowed-skips.json.
import {readFileSync} from 'node:fs'

const [reportFile, allowedFile = 'test/allowed-skips.json'] = process.argv.slice(2)
const report = JSON.parse(readFileSync(reportFile, 'utf8'))
const allowed = new Map(Object.entries(JSON.parse(readFileSync(allowedFile, 'utf8')).allowed ?? {}))

const skipped = []
for (const file of report.testResults ?? []) {
  for (const test of file.assertionResults ?? []) {
    if (['skipped', 'pending', 'todo', 'disabled'].includes(test.status)) skipped.push(test.fullName)
  }
}
const refused = skipped.filter((name) => !allowed.has(name))
console.log(
  `${report.numPassedTests} passed, ${report.numFailedTests + refused.length} failed, ${skipped.length} skipped`,
)
for (const name of refused) console.error(`skipped in CI, which must run it: ${name}`)
process.exit(refused.length > 0 ? 1 : 0)
