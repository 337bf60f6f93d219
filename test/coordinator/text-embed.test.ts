import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { loadTextEmbeddings } from '../../model/text-embeddings.js';
import { labelPrompts } from '../../model/vit.js';
import { loadLabelSet } from '../../shared/labels.js';
import { coordinatorEntry } from '../../shared/util/paths.js';
import { addPretrainedText } from '../helpers/pretrained-text.js';

const labels = loadLabelSet('chexpert14').labels;

function textEmbed(dir: string, out: string) {
  return spawnSync(process.execPath, [coordinatorEntry, 'text-embed', '--pretrained', dir, '--out', out, '--backend', 'cpu'], {
    encoding: 'utf8',
  });
}

for (const variant of ['clip', 'biomedclip'] as const) {
  test(`text-embed (${variant}): a pretrained directory's prompt vectors, in the --text-embeddings format, equal open_clip's to 1e-4`, (t) => {
    const dir = mkdtempSync(path.join(tmpdir(), 'cxr-text-embed-'));
    try {
      const ref = addPretrainedText(dir, variant);
      if ('skip' in ref) {
        t.skip(ref.skip);
        return;
      }
      const out = path.join(dir, 'prompts.json');
      const r = textEmbed(dir, out);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`42 prompt embeddings of dimension 16 \\(${variant === 'clip' ? 'clip' : 'bert'} text tower\\)`));
      const { dim, vectors } = loadTextEmbeddings(out, labels);
      assert.equal(dim, 16);
      let worst = 0;
      labelPrompts(labels).forEach((p, i) => {
        const v = vectors.subarray(i * dim, (i + 1) * dim);
        const n = Math.hypot(...v);
        v.forEach((x, j) => (worst = Math.max(worst, Math.abs(x / n - ref.value[p]![j]!))));
      });
      t.diagnostic(`max |diff| of unit embeddings ${worst.toExponential(2)}`);
      assert.ok(worst <= 1e-4, String(worst));

      // Without its tokenizer files the directory is refused with the files it needs.
      unlinkSync(path.join(dir, variant === 'clip' ? 'merges.txt' : 'vocab.txt'));
      const bad = textEmbed(dir, out);
      assert.equal(bad.status, 2);
      assert.match(
        bad.stderr,
        variant === 'clip'
          ? /no tokenizer files for the CLIP text tower \(needs tokenizer\.json, vocab\.json \+ merges\.txt/
          : /no tokenizer files for the BERT text tower \(needs tokenizer\.json or vocab\.txt\)/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
