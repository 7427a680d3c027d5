/** Small figures the benches share. */
import {loadavg} from 'node:os'

/** The median; the mean of the two middle values when there is an even number of them. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

/** The host's 1, 5 and 15 minute load averages, for a bench to print before and after (the machine is shared). */
export function loadAverages(): string {
  return loadavg()
    .map((value) => value.toFixed(2))
    .join(' ')
}
