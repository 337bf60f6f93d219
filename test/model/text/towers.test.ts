import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../../../kernels/backend.js';
import { l2Normalize } from '../../../model/layers.js';
import type { BertTextShape } from '../../../model/text/bert-text.js';
import type { ClipTextShape } from '../../../model/text/clip-text.js';
import { loadTokenizer } from '../../../model/text/tokenizer.js';
import { encodeTextTower, type TextTowerShape, textTowerSpecs, trimTokenRows } from '../../../model/text/tower.js';
import { labelPrompts } from '../../../model/vit.js';
import { buildLayout } from '../../../shared/params.js';
import { openClipTensors } from '../../../shared/interop/open-clip.js';
import { loadLabelSet } from '../../../shared/labels.js';
import { packageRoot } from '../../../shared/util/paths.js';
import { writeBertTokenizerFiles, writeClipTokenizerFiles } from '../../helpers/tokenizer-files.js';
import { randomTensors, referenceEnv, tensorGetter, torchPython } from '../../helpers/text-towers.js';

const prompts = labelPrompts(loadLabelSet('chexpert14').labels);

const clip = (quickGelu: boolean, vocabSize: number): ClipTextShape => ({
  kind: 'clip',
  vocabSize,
  contextLength: 77,
  width: 32,
  heads: 4,
  layers: 2,
  embedDim: 24,
  quickGelu,
  prefix: '',
});
const bert = (pooler: BertTextShape['pooler'], proj: BertTextShape['proj'], vocabSize: number): BertTextShape => ({
  kind: 'bert',
  vocabSize,
  contextLength: 256,
  maxPositions: 300,
  typeVocabSize: 2,
  width: 48,
  heads: 4,
  layers: 2,
  intermediate: 96,
  eps: 1e-12,
  padId: 0,
  embedDim: 24,
  pooler,
  proj,
});

/** Each case: the tower, random values, the prompts' ids at the full context, and PyTorch's embeddings of them. */
function referenceCases(py: string) {
  const dir = mkdtempSync(path.join(tmpdir(), 'cxr-towers-'));
  try {
    const clipVocab = writeClipTokenizerFiles(dir).vocabSize;
    const bertVocab = writeBertTokenizerFiles(dir).vocabSize;
    const shapes: TextTowerShape[] = [
      clip(false, clipVocab),
      clip(true, clipVocab),
      bert('cls_pooler', 'linear', bertVocab),
      bert('cls_last_hidden_state_pooler', 'mlp', bertVocab),
      bert('mean_pooler', 'mlp', bertVocab),
    ];
    const cases = shapes.map((shape, k) => {
      const tok = loadTokenizer(dir, shape.kind);
      const ids = prompts.map((p) => tok.encode(p, shape.contextLength));
      const specs = textTowerSpecs(shape);
      return { shape, specs, values: randomTensors(specs, 100 + k), ids };
    });
    // PyTorch gets the tensors in open_clip's layouts, as export writes them.
    const input = cases.map(({ shape, specs, values, ids }) => {
      const layout = buildLayout(specs);
      const flat = new Float32Array(layout.total);
      layout.entries.forEach((e) => flat.set(values.get(e.name)!, e.offset));
      const state = Object.fromEntries(
        openClipTensors(layout, flat).map((x) => [
          x.name,
          { shape: x.shape, data: Array.from(typeof x.data === 'function' ? x.data() : x.data) },
        ]),
      );
      return { shape, state, ids };
    });
    writeFileSync(path.join(dir, 'in.json'), JSON.stringify(input));
    const r = spawnSync(py, [path.join(packageRoot, 'test', 'reference', 'text_towers.py'), path.join(dir, 'in.json')], {
      encoding: 'utf8',
      env: referenceEnv(),
    });
    if (r.status !== 0) throw new Error(`text_towers.py failed: ${r.stderr}`);
    const ref = JSON.parse(r.stdout.trim().split('\n').pop()!) as { embeddings: number[][] }[];
    return cases.map((c, k) => ({ ...c, reference: ref[k]!.embeddings }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const py = torchPython();
const cases = py ? referenceCases(py) : null;

for (const backend of ['cpu', 'wasm'] as const) {
  test(`${backend}: CLIP and BERT text towers equal open_clip's (plain PyTorch, open_clip names) on unit embeddings to 1e-4`, async (t) => {
    if (!cases) {
      t.skip('PyTorch reference skipped: no python3 with torch (apt-get install -y python3-torch)');
      return;
    }
    await initBackend(backend);
    for (const { shape, specs, values, ids, reference } of cases) {
      const g = tensorGetter(specs, values);
      try {
        // Ours runs on the rows cut to the longest prompt; PyTorch ran the full context.
        const rows = trimTokenRows(shape, ids);
        assert.ok(rows[0]!.length < 32, `rows cut to the prompts' length, got ${rows[0]!.length}`);
        const ours = tf.tidy(() => l2Normalize(encodeTextTower(g.p, shape, rows)).arraySync());
        const refUnit = tf.tidy(() => l2Normalize(tf.tensor2d(reference)).arraySync());
        let worst = 0;
        ours.forEach((row, i) => row.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - refUnit[i]![j]!)))));
        const name = shape.kind === 'clip' ? `clip quickGelu=${shape.quickGelu}` : `bert ${shape.pooler} ${shape.proj}`;
        t.diagnostic(`${name}: max |diff| of unit embeddings ${worst.toExponential(2)}`);
        assert.ok(worst <= 1e-4, `${name}: ${worst}`);
      } finally {
        g.dispose();
      }
    }
  });
}
