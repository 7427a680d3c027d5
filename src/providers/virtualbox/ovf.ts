/**
 * The little of an OVF descriptor (what VirtualBox exports and Vagrant's VirtualBox boxes
 * ship as box.ovf) box needs: which disk files the appliance's virtual disks are. Read
 * with a small tolerant scan rather than an XML library: namespace prefixes vary
 * (`ovf:href`, a default namespace, none), and only two elements and their attributes matter.
 */
import {BoxError, ExitCode} from '../../lib/core/errors.js'

export interface OvfDisk {
  /** ovf:diskId of the DiskSection's Disk. */
  id: string
  /** The disk's file, from the References File its ovf:fileRef names (relative to the .ovf). */
  file: string
}

/** The virtual disks of an appliance, in DiskSection order (the first is the boot disk VirtualBox exports first). */
export function ovfDisks(xml: string, ovfName = 'the OVF descriptor'): OvfDisk[] {
  const text = xml.replace(/<!--[\s\S]*?-->/g, '')
  const files = new Map(
    elementsIn(sectionOf(text, 'References') ?? '', 'File').map((file) => [file.get('id'), file.get('href')]),
  )
  const diskSection = sectionOf(text, 'DiskSection')
  if (diskSection === undefined) throw invalid(ovfName, 'it has no DiskSection')
  return elementsIn(diskSection, 'Disk').map((disk) => {
    const id = disk.get('diskId') ?? '?'
    const fileRef = disk.get('fileRef')
    const file = fileRef === undefined ? undefined : files.get(fileRef)
    if (file === undefined)
      throw invalid(ovfName, `disk ${id} names no file in References (ovf:fileRef ${JSON.stringify(fileRef ?? '')})`)
    // The file sits next to the descriptor: a path would reach outside the box.
    if (!/^[^/\\]+$/.test(file) || file === '.' || file === '..')
      throw invalid(ovfName, `disk file ${JSON.stringify(file)} is not a plain file name next to the descriptor`)
    return {id, file}
  })
}

function invalid(ovfName: string, problem: string): BoxError {
  return new BoxError(`cannot read the disks of ${ovfName}: ${problem}`, {exitCode: ExitCode.USAGE})
}

/** The content of the first `<prefix:Name …>…</prefix:Name>`; undefined when there is none. */
function sectionOf(text: string, name: string): string | undefined {
  const match = new RegExp(`<(?:[\\w.-]+:)?${name}\\b[^>]*>([\\s\\S]*?)</(?:[\\w.-]+:)?${name}\\s*>`).exec(text)
  return match?.[1]
}

const ATTRIBUTE = /(?:[\w.-]+:)?([\w.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g

/** The attributes (by local name, entities decoded) of each `<prefix:Name …>` in `text`. */
function elementsIn(text: string, name: string): Array<Map<string, string>> {
  const pattern = new RegExp(`<(?:[\\w.-]+:)?${name}((?:\\s+[^>]*?)?)\\s*/?>`, 'g')
  return [...text.matchAll(pattern)].map(
    (match) =>
      new Map(
        [...(match[1] ?? '').matchAll(ATTRIBUTE)].map((attribute) => [
          attribute[1]!,
          decodeEntities(attribute[2] ?? attribute[3] ?? ''),
        ]),
      ),
  )
}

function decodeEntities(value: string): string {
  const named: Record<string, string> = {amp: '&', lt: '<', gt: '>', quot: '"', apos: "'"}
  return value.replace(/&(#x[0-9a-f]+|#\d+|\w+);/gi, (entity, body: string) => {
    if (body.startsWith('#x') || body.startsWith('#X')) return String.fromCodePoint(Number.parseInt(body.slice(2), 16))
    if (body.startsWith('#')) return String.fromCodePoint(Number.parseInt(body.slice(1), 10))
    return named[body] ?? entity
  })
}
