import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { BACKEND_CHOICES, type BackendChoice, initBackend } from '../../kernels/backend.js';
import { readPretrainedDir } from '../../model/pretrained/dir.js';
import { embedPrompts, loadPretrainedText } from '../../model/text/pretrained.js';
import { labelPrompts } from '../../model/vit.js';
import { openStateDict, sha256File } from '../../shared/interop/state-dict.js';
import { loadLabelSet } from '../../shared/labels.js';
import { writeJsonAtomic } from '../../shared/util/fs-atomic.js';

interface TextEmbedArgs {
  pretrained: string;
  out: string;
  labels: string;
  backend: BackendChoice;
}

/**
 * `coordinator text-embed`: the label prompts through a pretrained directory's text tower, written
 * in the `--text-embeddings` format (model/text-embeddings.ts), so a run given that file trains
 * exactly as one with `--pretrained DIR --text-tower frozen` (the vectors are not normalised; the
 * head and the losses normalise where they compare).
 */
export const textEmbedCommand: CommandModule<object, TextEmbedArgs> = {
  command: 'text-embed',
  describe: "label prompt embeddings from a pretrained directory's text tower, as a --text-embeddings file",
  builder: (y) =>
    y
      .option('pretrained', {
        type: 'string',
        demandOption: true,
        describe: 'open_clip model directory (open_clip_config.json, weights, tokenizer files)',
      })
      .option('out', { type: 'string', demandOption: true, describe: 'the JSON file to write' })
      .option('labels', { type: 'string', default: 'chexpert14', describe: 'label set: chexpert14, nih14 or a label-set JSON file' })
      .option('backend', { choices: BACKEND_CHOICES, default: 'auto' as BackendChoice })
      .example(
        '$0 text-embed --pretrained models/BiomedCLIP --out biomedclip-prompts.json',
        'then train with --text-embeddings biomedclip-prompts.json',
      ),
  handler: async (a) => {
    const backend = await initBackend(a.backend);
    process.stderr.write(`backend: ${backend.name} (${backend.reason})\n`);
    const pd = await readPretrainedDir(a.pretrained);
    const sd = await openStateDict(pd.weightsFile);
    const text = await loadPretrainedText(pd, sd).finally(() => sd.close());
    const prompts = labelPrompts(loadLabelSet(a.labels).labels);
    const vectors = await embedPrompts(text, prompts);
    const D = text.shape.embedDim;
    await writeJsonAtomic(path.resolve(a.out), {
      dim: D,
      vectors: Object.fromEntries(prompts.map((p, i) => [p, Array.from(vectors.subarray(i * D, (i + 1) * D))])),
      source: {
        pretrained: pd.dir,
        weights: path.basename(pd.weightsFile),
        weightsSha256: await sha256File(pd.weightsFile),
        tokenizer: text.tokenizer.source,
        textTower: text.shape,
      },
    });
    process.stdout.write(`${prompts.length} prompt embeddings of dimension ${D} (${text.shape.kind} text tower) -> ${a.out}\n`);
  },
};
