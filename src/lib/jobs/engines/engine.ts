/**
 * Where a batch's jobs run. Both engines take the same job file and fill the same results
 * layout (results/<id>/result.json, stdout, stderr, the out: files); the local engine runs the
 * workers on this host (batch.ts), the Slurm engine hands them to a cluster as one job array.
 */
import type {BatchEvent, BatchResult} from '../batch.js'
import type {Progress} from '../../core/progress.js'

export type EngineName = 'local' | 'slurm'

/** What every engine is given: the job file and where its results go. */
export interface EngineOptions {
  jobFile: string
  resultsDir?: string
  cwd: string
  dataDir: string
  cacheDir: string
  version: string
  progress: Progress
  onEvent?: (event: BatchEvent) => void
  signal?: AbortSignal
}

export interface BatchEngine<Options extends EngineOptions = EngineOptions, Result = BatchResult> {
  readonly name: EngineName
  /** Run (or submit) every job of the job file. */
  run(options: Options): Promise<Result>
}
