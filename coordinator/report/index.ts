/** Run reports: the public surface the trainer and the CLI use. */
export { writeReport, type WriteReportOptions, type WrittenReport } from './write.js';
export {
  writeRunEmbeddings,
  readRunEmbeddings,
  EMBEDDINGS_FILE,
  type RunEmbeddingsInput,
  type RunEmbeddings,
} from '../../shared/run/embeddings.js';
export { writeRunEnvironment, captureEnvironment, type EnvironmentInfo } from './environment.js';
export { readRunDir, type RunData, type EvalResult, type MetricsLine } from './run-dir.js';
export { compareEvals, formatComparisonTable, SIGNIFICANT_POINTS, type ComparisonRow } from './compare.js';
