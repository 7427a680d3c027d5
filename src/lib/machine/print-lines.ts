import {createInterface} from 'node:readline'

import type {MachineContext} from './context.js'

/**
 * A child's stdout and stderr line by line as they come, the machine's name first: to
 * context.output (--json), else the progress display. `show` may leave a line out.
 */
export async function printChildLines(
  context: MachineContext,
  machineName: string,
  child: {stdout: NodeJS.ReadableStream | null; stderr: NodeJS.ReadableStream | null},
  show: (line: string) => boolean = () => true,
): Promise<void> {
  const print = (line: string) => {
    if (!show(line)) return
    const shown = `${machineName}: ${line}`
    if (context.output) context.output(shown)
    else context.progress.print(shown)
  }
  const pump = (stream: NodeJS.ReadableStream | null) =>
    stream && new Promise<void>((resolve) => createInterface({input: stream}).on('line', print).on('close', resolve))
  await Promise.all([pump(child.stdout), pump(child.stderr)])
}
