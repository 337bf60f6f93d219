/** Run reports: the public surface the trainer and the CLI use. */
export { writeReport, type WriteReportOptions, type WrittenReport } from './write.js';
export {
  writeRunEmbeddings,
  readRunEmbeddings,
  type RunEmbeddingsInput,
  type RunEmbeddings,
} from '../../shared/run/embeddings.js';
export { writeRunEnvironment, captureEnvironment, type EnvironmentInfo } from './environment.js';
export { readRunDir, type RunData } from './run-dir.js';
export { EMBEDDINGS_FILE, type EvalResult, type MetricsLine } from '../../shared/run/files.js';
export { compareEvals, formatComparisonTable, SIGNIFICANT_POINTS, type ComparisonRow } from './compare.js';
