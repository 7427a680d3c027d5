/** Which provisioners a run picks: by `run` (up, provision) or by name (provision --provision-with). */
import {describe, expect, it} from 'vitest'

import {parseBoxfile} from '../../src/lib/boxfile/load.js'
import {BoxError} from '../../src/lib/core/errors.js'
import {checkProvisionerNames, provisionersToRun} from '../../src/lib/machine/provision.js'

const BOXFILE = `box: reference
provisioners:
  - {type: shell, name: once, inline: "true"}
  - {type: shell, name: always, run: always, inline: "true"}
  - {type: shell, name: never, run: never, inline: "true"}
machines:
  web: {}
  db:
    provisioners:
      - {type: shell, name: db-only, run: never, inline: "true"}
`

describe('provisioner selection', () => {
  it('by run: once only the first time, always every time, never not at all', async () => {
    const [web] = (await parseBoxfile('/project/Boxfile', BOXFILE)).machines
    const names = (firstTime: boolean) => provisionersToRun(web!.provisioners, firstTime).map((p) => p.name)
    expect(names(true)).toEqual(['once', 'always'])
    expect(names(false)).toEqual(['always'])
  })

  it('by name: exactly those named, in Boxfile order, run: never included', async () => {
    const [web] = (await parseBoxfile('/project/Boxfile', BOXFILE)).machines
    expect(provisionersToRun(web!.provisioners, false, ['never', 'once']).map((p) => p.name)).toEqual(['once', 'never'])
  })

  it('a name no selected machine has is a usage error naming the ones there are', async () => {
    const machines = (await parseBoxfile('/project/Boxfile', BOXFILE)).machines
    expect(() => checkProvisionerNames(machines, ['db-only', 'never'])).not.toThrow()
    let error: unknown
    try {
      checkProvisionerNames([machines[0]!], ['db-only'])
    } catch (caught) {
      error = caught
    }
    expect(error).toBeInstanceOf(BoxError)
    expect((error as BoxError).exitCode).toBe(2)
    expect((error as BoxError).message).toBe('no provisioner named "db-only" in web')
    expect((error as BoxError).suggestions).toEqual(['name one of: once, always, never'])
  })
})
