// Writes oclif.manifest.json after `tsc`, so a command run loads only its own module
// instead of importing every command to read their flags (oclif's slow path).
import {writeFile} from 'node:fs/promises'
import {Plugin} from '@oclif/core'

const plugin = new Plugin({root: process.cwd(), type: 'core', ignoreManifest: true, errorOnManifestCreate: true})
await plugin.load()
await writeFile('oclif.manifest.json', JSON.stringify(plugin.manifest, null, 2))
console.log(`oclif.manifest.json: ${Object.keys(plugin.manifest.commands).length} commands`)
