import type { CommandModule } from 'yargs';
import { compareCommand } from './compare.js';
import { doctorCommand } from './doctor.js';
import { reportCommand } from './report.js';

/**
 * Every `coordinator` sub-command, one module each. The training command is the default
 * (`coordinator --workers 4 ...`).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<any, any>[] = [reportCommand, compareCommand, doctorCommand];
