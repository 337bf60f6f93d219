import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { UserError } from '../../shared/util/errors.js';
import { createLogger } from '../../shared/util/log.js';
import { loadCheckpoint } from '../../shared/checkpoint/load.js';
import { openClipTensors } from '../../shared/interop/open-clip.js';
import { writeSafetensors } from '../../shared/interop/safetensors.js';

interface ExportArgs {
  checkpoint: string;
  out: string;
  force: boolean;
}

/** `coordinator export`: a checkpoint's parameters as safetensors under open_clip's names and layouts. */
export const exportCommand: CommandModule<object, ExportArgs> = {
  command: 'export',
  describe: "a checkpoint's parameters as safetensors with open_clip names (PyTorch layouts)",
  builder: (y) =>
    y
      .option('checkpoint', {
        type: 'string',
        demandOption: true,
        describe: 'a step-NNNNNNN checkpoint directory, or a run directory (its latest committed checkpoint)',
      })
      .option('out', { type: 'string', demandOption: true, describe: 'the .safetensors file to write' })
      .option('force', { type: 'boolean', default: false, describe: 'replace --out if it exists' })
      .example('coordinator export --checkpoint runs/exp1 --out exp1.safetensors', 'export the latest committed checkpoint of a run'),
  handler: async (a) => {
    const log = createLogger('export');
    const out = path.resolve(a.out);
    if (existsSync(out) && !a.force) throw new UserError(`${out} exists; pass --force to replace it`);
    const ck = await loadCheckpoint(a.checkpoint, {
      world: 1,
      rank: 0,
      layout: 'checkpoint',
      moments: false,
      onWarning: (m) => log.warn(m),
    });
    const tensors = openClipTensors(ck.layout, ck.params);
    const bytes = await writeSafetensors(out, tensors, {
      format: 'pt',
      'cxr_align.step': String(ck.step),
      'cxr_align.epoch': String(ck.epoch),
      'cxr_align.checkpoint': ck.dir,
      'cxr_align.config': JSON.stringify(ck.manifest.config),
      'cxr_align.conv1':
        'visual.conv1.weight is the grayscale stem as an RGB kernel whose channels sum to it: feed the gray image replicated to 3 channels',
    });
    process.stdout.write(`exported step ${ck.step}: ${tensors.length} tensors, ${(bytes / 1e6).toFixed(2)} MB, from ${ck.dir} to ${out}\n`);
  },
};
