import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { UserError } from '../../shared/util/errors.js';
import { createLogger } from '../../shared/util/log.js';
import { loadCheckpoint } from '../../shared/checkpoint/load.js';
import { openClipTensors, type TorchFormat } from '../../shared/interop/open-clip.js';
import type { ModelConfig } from '../../model/config.js';
import { loadPretrainedModel, pretrainedTextTowerTensors, torchFormat } from '../../model/pretrained/model.js';
import { modelLayout } from '../../model/vit.js';
import { writeSafetensors } from '../../shared/interop/safetensors.js';

interface ExportArgs {
  checkpoint?: string;
  pretrained?: string;
  out: string;
  force: boolean;
}

/**
 * `coordinator export`: a checkpoint's parameters as safetensors under open_clip's names and
 * layouts, with a frozen pretrained text tower read back from its weights file.
 */
export const exportCommand: CommandModule<object, ExportArgs> = {
  command: 'export',
  describe: "a checkpoint's parameters as safetensors with open_clip names (PyTorch layouts)",
  builder: (y) =>
    y
      .option('checkpoint', {
        type: 'string',
        describe: 'a step-NNNNNNN checkpoint directory, or a run directory (its latest committed checkpoint)',
      })
      .option('pretrained', {
        type: 'string',
        describe: 'instead of --checkpoint: an open_clip / model hub directory, its image tower as the trainer imports it',
      })
      .option('out', { type: 'string', demandOption: true, describe: 'the .safetensors file to write' })
      .option('force', { type: 'boolean', default: false, describe: 'replace --out if it exists' })
      .example('coordinator export --checkpoint runs/exp1 --out exp1.safetensors', 'export the latest committed checkpoint of a run')
      .example(
        'coordinator export --pretrained models/BiomedCLIP --out check.safetensors',
        'what the trainer reads from a pretrained directory',
      ),
  handler: async (a) => {
    const log = createLogger('export');
    const out = path.resolve(a.out);
    if (existsSync(out) && !a.force) throw new UserError(`${out} exists; pass --force to replace it`);
    if (a.checkpoint && a.pretrained) throw new UserError('give --checkpoint or --pretrained, not both');
    if (a.pretrained) {
      const { config, params } = await loadPretrainedModel(path.resolve(a.pretrained), { labels: [] });
      const fmt = torchFormat(config);
      const tensors = openClipTensors(modelLayout(config), params, fmt).filter(
        (t) => t.name.startsWith('visual.') || t.name === 'logit_scale',
      );
      const bytes = await writeSafetensors(out, tensors, {
        format: 'pt',
        'cxr_align.pretrained': JSON.stringify(config.pretrained),
        'cxr_align.config': JSON.stringify(config),
        'cxr_align.conv1': stemNote(fmt),
      });
      process.stdout.write(
        `exported the image tower of ${a.pretrained}: ${tensors.length} tensors, ${(bytes / 1e6).toFixed(2)} MB, to ${out}\n`,
      );
      return;
    }
    if (!a.checkpoint) throw new UserError('give --checkpoint RUN or --pretrained DIR');
    const ck = await loadCheckpoint(a.checkpoint, {
      world: 1,
      rank: 0,
      layout: 'checkpoint',
      moments: false,
      onWarning: (m) => log.warn(m),
    });
    const model = (ck.manifest.config as { model?: ModelConfig } | null)?.model;
    const fmt = model ? torchFormat(model) : {};
    const tensors = openClipTensors(ck.layout, ck.params, fmt);
    // A frozen text tower is not in the checkpoint (but for its readout under --text-head
    // transformer, frozen too): the pretrained file's, unchanged, completes the model.
    if (model?.head === 'text' && model.text.kind === 'frozen') {
      const have = new Set(tensors.map((t) => t.name));
      tensors.push(...(await pretrainedTextTowerTensors(model)).filter((t) => !have.has(t.name)));
    }
    const bytes = await writeSafetensors(out, tensors, {
      format: 'pt',
      'cxr_align.step': String(ck.step),
      'cxr_align.epoch': String(ck.epoch),
      'cxr_align.checkpoint': ck.dir,
      'cxr_align.config': JSON.stringify(ck.manifest.config),
      'cxr_align.conv1': stemNote(fmt),
    });
    process.stdout.write(`exported step ${ck.step}: ${tensors.length} tensors, ${(bytes / 1e6).toFixed(2)} MB, from ${ck.dir} to ${out}\n`);
  },
};

/** How to feed the exported stem, for the file's metadata. */
function stemNote(fmt: TorchFormat): string {
  const mean = fmt.imageMean ?? [0.5, 0.5, 0.5];
  const std = fmt.imageStd ?? [0.25, 0.25, 0.25];
  return (
    `the patch embedding is the grayscale stem as an RGB kernel: feed the gray image replicated to 3 channels, ` +
    `pixel/255 normalised with mean ${JSON.stringify(mean)} and std ${JSON.stringify(std)}`
  );
}
