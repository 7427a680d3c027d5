/** The local engine: box batch's own lanes on this host (batch.ts). */
import {runBatch, type BatchOptions} from '../batch.js'
import type {BatchEngine} from './engine.js'

export const localEngine: BatchEngine<BatchOptions> = {
  name: 'local',
  run: (options) => runBatch(options),
}
