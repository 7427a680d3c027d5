import {providerFor} from '../../providers/index.js'
import type {HostCheck} from '../../providers/provider.js'
import {BugError} from '../core/errors.js'
import {findOnPath, spawn} from '../core/exec.js'
import {HOST_TOOLS} from '../core/host-tools.js'

export interface ToolReport {
  command: string
  found: boolean
  version?: string
  package: string
  purpose: string
  required: boolean
}

export interface DoctorReport {
  tools: ToolReport[]
  accel?: HostCheck
  accelError?: string
  /** False when a required tool is missing or no accelerator works. */
  ok: boolean
}

/** Check every host tool (found + version, or the package that provides it) and the accelerator. */
export async function runDoctor(options: {
  cacheDir: string
  refreshAccel?: boolean
  jobs?: boolean
}): Promise<DoctorReport> {
  const tools = await Promise.all(
    HOST_TOOLS.map(async (tool): Promise<ToolReport> => {
      const base = {
        command: tool.command,
        package: tool.package,
        purpose: tool.purpose,
        required: tool.required || (options.jobs === true && tool.jobs === true),
      }
      if (!(await findOnPath(tool.command))) return {...base, found: false}
      if (!tool.versionArgs) return {...base, found: true}
      const result = await spawn(tool.command, tool.versionArgs, {
        reject: false,
        timeout: 10_000,
        stdin: 'ignore',
        all: true,
      })
      return {...base, found: true, version: firstVersionLine(String(result.all ?? ''))}
    }),
  )
  let accel: HostCheck | undefined
  let accelError: string | undefined
  if (tools.find((tool) => tool.command === 'qemu-system-x86_64')?.found) {
    const qemu = providerFor('qemu', options.cacheDir)
    if (!qemu.checkHost) throw new BugError('the QEMU provider has no host check')
    try {
      accel = await qemu.checkHost({refresh: options.refreshAccel})
    } catch (error) {
      accelError = (error as Error).message
    }
  } else {
    accelError = 'qemu-system-x86_64 is missing'
  }
  const ok = tools.every((tool) => tool.found || !tool.required) && accel !== undefined
  return {tools, accel, accelError, ok}
}

/** The line of a tool's version output that carries a version number. */
function firstVersionLine(output: string): string | undefined {
  const lines = output
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
  const line = lines.find((l) => /\d+\.\d+/.test(l)) ?? lines[0]
  return line?.replace(/^usage:.*$/i, '').slice(0, 80) || undefined
}
