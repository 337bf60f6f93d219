import type { CommandModule } from 'yargs';
import { trainCommand } from './train.js';
import { evalCommand } from './eval.js';
import { checkpointsCommand } from './checkpoints.js';
import { compareCommand } from './compare.js';
import { dataCommand } from './data.js';
import { demoCommand } from './demo.js';
import { doctorCommand } from './doctor.js';
import { embedCommand } from './embed.js';
import { exportCommand } from './export.js';
import { probeCommand } from './probe.js';
import { reportCommand } from './report.js';
import { textEmbedCommand } from './text-embed.js';

/**
 * Every `coordinator` sub-command, one module each. The training command is the default
 * (`coordinator --workers 4 ...`).
 */
// biome-ignore lint/suspicious/noExplicitAny: yargs commands differ in their argument types; the list holds them all
export const commands: CommandModule<any, any>[] = [
  trainCommand,
  evalCommand,
  dataCommand,
  demoCommand,
  exportCommand,
  checkpointsCommand,
  probeCommand,
  reportCommand,
  compareCommand,
  doctorCommand,
  embedCommand,
  textEmbedCommand,
];
