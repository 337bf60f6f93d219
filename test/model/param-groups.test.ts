import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveModelConfig, withVisualHead } from '../../model/config.js';
import { modelLayout } from '../../model/vit.js';
import { lrMultipliers, parseFreeze, towerDepth } from '../../model/param-groups.js';
import { adamwStep, adamwStepGroups, decayMask, lrGroups } from '../../worker/steps/adamw.js';
import { DEFAULT_ADAMW } from '../../model/train-config.js';
import { mulberry32 } from '../../shared/random/generators.js';
import { UserError } from '../../shared/util/errors.js';

const cfg = withVisualHead(
  resolveModelConfig({
    preset: 'tiny',
    imageSize: 16,
    labels: ['A', 'B'],
    overrides: { width: 8, layers: 3, heads: 2, embedDim: 4 },
    textDim: 4,
  }),
  'mlp',
);
const layout = modelLayout(cfg);
const scaleOf = (m: Float64Array, name: string) => m[layout.entries.findIndex((e) => e.name === name)]!;

test('param groups: tower depths, --freeze parsing and its errors', () => {
  assert.deepEqual(towerDepth('visual.conv1.weight'), { tower: 'visual', block: null, top: false });
  assert.deepEqual(towerDepth('visual.transformer.resblocks.2.ln_1.weight'), { tower: 'visual', block: 2, top: false });
  assert.deepEqual(towerDepth('visual.proj'), { tower: 'visual', block: null, top: true });
  assert.deepEqual(towerDepth('text.transformer.encoder.layer.5.output.dense.weight'), { tower: 'text', block: 5, top: false });
  // CLIP's text tower under the CLIP class's top-level names (model/text/clip-text.ts).
  assert.deepEqual(towerDepth('token_embedding.weight'), { tower: 'text', block: null, top: false });
  assert.deepEqual(towerDepth('positional_embedding'), { tower: 'text', block: null, top: false });
  assert.deepEqual(towerDepth('transformer.resblocks.3.attn.in_proj_weight'), { tower: 'text', block: 3, top: false });
  assert.deepEqual(towerDepth('ln_final.weight'), { tower: 'text', block: null, top: true });
  assert.deepEqual(towerDepth('text_projection'), { tower: 'text', block: null, top: true });
  assert.equal(towerDepth('logit_scale'), null);
  assert.equal(towerDepth('visual.head.fc1.weight'), null);
  assert.equal(towerDepth('text.prompt_embeddings'), null);
  assert.equal(towerDepth('logit_scale'), null);
  assert.deepEqual(parseFreeze(['visual', 'text-blocks:2']), [
    { tower: 'visual', keepBlocks: null },
    { tower: 'text', keepBlocks: 2 },
  ]);
  assert.throws(
    () => parseFreeze(['vision']),
    (e: Error) => e instanceof UserError && /--freeze 'vision'/.test(e.message),
  );
  const o = { lr: 1e-3, headLr: null, layerDecay: 1 };
  assert.throws(() => lrMultipliers(layout, { ...o, freeze: parseFreeze(['visual-blocks:4']) }), /has only 3 blocks/);
  assert.throws(() => lrMultipliers(layout, { ...o, freeze: parseFreeze(['text']) }), /no text tower/);
  assert.throws(() => lrMultipliers(layout, { ...o, layerDecay: 0, freeze: [] }), /--lr-layer-decay/);
});

test('param groups: --freeze, --head-lr and --lr-layer-decay multipliers', () => {
  const none = lrMultipliers(layout, { lr: 1e-3, headLr: null, layerDecay: 1, freeze: [] });
  assert.ok(none.every((s) => s === 1));
  const m = lrMultipliers(layout, { lr: 1e-3, headLr: 1e-2, layerDecay: 0.5, freeze: parseFreeze(['visual-blocks:1']) });
  // All but the last block frozen: the stem and blocks 0, 1; block 2 and the top train, with decay 0.5 per level.
  assert.equal(scaleOf(m, 'visual.conv1.weight'), 0);
  assert.equal(scaleOf(m, 'visual.transformer.resblocks.1.mlp.c_fc.weight'), 0);
  assert.equal(scaleOf(m, 'visual.transformer.resblocks.2.mlp.c_fc.weight'), 0.5);
  assert.equal(scaleOf(m, 'visual.proj'), 1);
  assert.equal(scaleOf(m, 'visual.ln_post.weight'), 1);
  // Heads, prompts and scales at --head-lr.
  for (const n of ['visual.head.fc1.weight', 'text.head.fc2.bias', 'text.prompt_embeddings', 'logit_scale', 'cls.bias'])
    assert.ok(Math.abs(scaleOf(m, n) - 10) < 1e-12, n);
  const decayOnly = lrMultipliers(layout, { lr: 1e-3, headLr: null, layerDecay: 0.5, freeze: [] });
  assert.equal(scaleOf(decayOnly, 'visual.conv1.weight'), 0.5 ** 4);
  assert.equal(scaleOf(decayOnly, 'visual.transformer.resblocks.0.ln_1.bias'), 0.5 ** 3);
  const all = lrMultipliers(layout, { lr: 1e-3, headLr: null, layerDecay: 1, freeze: parseFreeze(['visual']) });
  layout.entries.forEach((e, k) => assert.equal(all[k], towerDepth(e.name)?.tower === 'visual' ? 0 : 1, e.name));
});

test('AdamW by groups: scale 1 is adamwStep bit for bit, scale s is adamwStep at s x lr, frozen runs untouched with zero moments', () => {
  const r = mulberry32(4);
  const P = layout.total;
  const init = Float32Array.from({ length: P }, () => r() - 0.5);
  const grads = Float32Array.from({ length: P }, () => r() - 0.5);
  const mask = decayMask(layout);
  const hyper = { ...DEFAULT_ADAMW, lr: 1e-2, weightDecay: 0.05 };
  const own = { start: 37, end: P - 11 };
  const n = own.end - own.start;
  const run = (f: (p: Float32Array, m: Float32Array, v: Float32Array) => void) => {
    const p = init.slice();
    const m = new Float32Array(n);
    const v = new Float32Array(n);
    for (let s = 0; s < 3; s++) f(p, m, v);
    return { p, m, v };
  };
  let s = 0;
  const plain = run((p, m, v) => adamwStep(p, grads, m, v, own, hyper, ++s, mask, 0.7));
  s = 0;
  const ones = run((p, m, v) =>
    adamwStepGroups(p, grads, m, v, own, hyper, ++s, mask, lrGroups(layout, new Float64Array(layout.entries.length).fill(1)), 0.7),
  );
  assert.deepEqual(ones, plain);
  const scales = lrMultipliers(layout, { lr: 1e-2, headLr: 5e-3, layerDecay: 0.8, freeze: parseFreeze(['visual-blocks:1']) });
  s = 0;
  const grouped = run((p, m, v) => adamwStepGroups(p, grads, m, v, own, hyper, ++s, mask, lrGroups(layout, scales), 0.7));
  layout.entries.forEach((e, k) => {
    const a = Math.max(e.offset, own.start);
    const b = Math.min(e.offset + e.size, own.end);
    if (a >= b) return;
    if (scales[k] === 0) {
      assert.deepEqual(grouped.p.subarray(a, b), init.subarray(a, b), `${e.name} frozen: bit-identical`);
      assert.ok(grouped.m.subarray(a - own.start, b - own.start).every((x) => x === 0));
      return;
    }
    // The same entry alone through adamwStep at its rate.
    let t = 0;
    const p = init.slice();
    const m = new Float32Array(b - a);
    const v = new Float32Array(b - a);
    for (let i = 0; i < 3; i++) adamwStep(p, grads, m, v, { start: a, end: b }, { ...hyper, lr: hyper.lr * scales[k]! }, ++t, mask, 0.7);
    assert.deepEqual(grouped.p.subarray(a, b), p.subarray(a, b), e.name);
  });
});
