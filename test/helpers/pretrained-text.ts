import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { labelPrompts } from '../../model/vit.js';
import { loadLabelSet } from '../../shared/labels.js';
import { packageRoot } from '../../shared/util/paths.js';
import { torchReference } from './torch.js';
import { writeBertTokenizerFiles, writeClipTokenizerFiles } from './tokenizer-files.js';

export type TextVariant = 'clip' | 'biomedclip';

/**
 * Adds the text side of a pretrained directory to DIR (test/reference/pretrained_text.py: config,
 * torch.save weights, and the small-vocabulary tokenizer files) and returns PyTorch's unit
 * embeddings of the chexpert14 prompts, from the reference token ids of the fixture, or a reason
 * to skip where python3 with torch is missing.
 */
export function addPretrainedText(dir: string, variant: TextVariant, seed = 0): { value: Record<string, number[]> } | { skip: string } {
  if (variant === 'clip') writeClipTokenizerFiles(dir);
  else writeBertTokenizerFiles(dir);
  const fixture = JSON.parse(readFileSync(path.join(packageRoot, 'test', 'fixtures', 'prompt-tokens.json'), 'utf8')) as Record<
    string,
    Record<string, number[]>
  >;
  const all = fixture[variant === 'clip' ? 'clip_small' : 'bert_small']!;
  const ids = Object.fromEntries(labelPrompts(loadLabelSet('chexpert14').labels).map((p) => [p, all[p]!]));
  const idsFile = path.join(dir, '.prompt-ids.json');
  writeFileSync(idsFile, JSON.stringify(ids));
  return torchReference<Record<string, number[]>>('pretrained_text.py', [dir, variant, idsFile, String(seed)]);
}
