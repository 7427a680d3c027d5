import {parseCatalogText, type Catalog} from '../../src/lib/store/catalog.js'

/** A catalog object as box reads one: serialized, then parsed and validated like a fetched catalog. */
export function parseCatalog(json: unknown, location: string): Catalog {
  return parseCatalogText(JSON.stringify(json), location)
}
