import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { CsvParser, type CsvRecord } from '../../shared/dataset/csv.js';
import { splitPatients } from '../../shared/dataset/split.js';
import { Prng } from '../../shared/random/generators.js';
import { drawFindings, planSynth, reportLabels } from '../../coordinator/data/synth.js';
import { loadLabelSet } from '../../shared/labels.js';

function serialize(rows: string[][], eol: string): string {
  return rows.map((r) => r.map((f) => (/[",\r\n]/.test(f) ? `"${f.replace(/"/g, '""')}"` : f)).join(',')).join(eol) + eol;
}

test('csv: any records survive serialisation and parsing, however the text is chunked', () => {
  const field = fc.string({ unit: fc.constantFrom('a', 'b', ',', '"', '\n', ' ', '1', '.'), maxLength: 6 });
  fc.assert(
    fc.property(
      fc.array(fc.array(field, { minLength: 2, maxLength: 4 }), { minLength: 1, maxLength: 8 }),
      fc.constantFrom('\n', '\r\n'),
      fc.array(fc.nat(40), { maxLength: 6 }),
      (rows, eol, cuts) => {
        const text = serialize(rows, eol);
        const p = new CsvParser('x.csv');
        const out: CsvRecord[] = [];
        let at = 0;
        for (const c of [...cuts].sort((a, b) => a - b)) {
          const end = Math.min(text.length, c);
          if (end > at) {
            p.push(text.slice(at, end), out);
            at = end;
          }
        }
        p.push(text.slice(at), out);
        p.end(out);
        assert.deepEqual(
          out.map((r) => r.fields),
          rows,
        );
      },
    ),
    { numRuns: 300 },
  );
});

test('csv: records know their line numbers, quoted newlines included', () => {
  const p = new CsvParser('x.csv');
  const out: CsvRecord[] = [];
  p.push('a,b\n1,"two\nlines"\n3,4\n', out);
  p.end(out);
  assert.deepEqual(
    out.map((r) => r.line),
    [1, 2, 4],
  );
  assert.throws(() => {
    const q = new CsvParser('y.csv');
    q.push('a,b\n1,"open', []);
    q.end([]);
  }, /y\.csv:2: unterminated quoted field/);
});

test('patient split: no patient in two splits, image fractions near the request, deterministic per seed', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 30, maxLength: 300 }), fc.nat(1000), (sizes, seed) => {
      const per = new Map(sizes.map((n, i) => [`p${i}`, n]));
      const a = splitPatients(per, { val: 0.1, test: 0.2 }, seed);
      assert.deepEqual([...a.entries()].sort(), [...splitPatients(per, { val: 0.1, test: 0.2 }, seed).entries()].sort());
      assert.equal(a.size, per.size);
      const total = sizes.reduce((x, y) => x + y, 0);
      const count = { train: 0, val: 0, test: 0 };
      for (const [id, s] of a) count[s] += per.get(id)!;
      // Greedy by whole patients: each split overshoots by less than one patient (at most 6 images).
      assert.ok(count.test >= 0.2 * total && count.test < 0.2 * total + 6, `test ${count.test} of ${total}`);
      assert.ok(
        count.val >= Math.min(0.1 * total, total - count.test) - 1e-9 && count.val < 0.1 * total + 6,
        `val ${count.val} of ${total}`,
      );
    }),
  );
  assert.throws(() => splitPatients(new Map([['a', 1]]), { val: 0.5, test: 0.5 }, 0), /below 1/);
});

test('prng: same seed same stream, different seeds differ', () => {
  const a = new Prng(7);
  const b = new Prng(7);
  const c = new Prng(8);
  const xa = Array.from({ length: 5 }, () => a.u32());
  assert.deepEqual(
    xa,
    Array.from({ length: 5 }, () => b.u32()),
  );
  assert.notDeepEqual(
    xa,
    Array.from({ length: 5 }, () => c.u32()),
  );
  const r = new Prng(1);
  let sum = 0;
  for (let i = 0; i < 10000; i++) sum += r.next();
  assert.ok(Math.abs(sum / 10000 - 0.5) < 0.02);
});

test('synth labels follow the CheXpert hierarchy and report realistic uncertain and blank rates', () => {
  const names = loadLabelSet('chexpert14').labels;
  const k = (n: string) => names.indexOf(n);
  const rng = new Prng(3);
  let cardio = 0;
  let cardioWithEc = 0;
  let child = 0;
  let childWithOpacity = 0;
  const codes = { pos: 0, neg: 0, unc: 0, blank: 0 };
  for (let i = 0; i < 5000; i++) {
    const has = drawFindings(rng, null);
    if (has.has('Cardiomegaly')) {
      cardio++;
      if (has.has('Enlarged Cardiomediastinum')) cardioWithEc++;
    }
    if (['Edema', 'Consolidation', 'Pneumonia', 'Lung Lesion', 'Atelectasis'].some((f) => has.has(f as never))) {
      child++;
      if (has.has('Lung Opacity')) childWithOpacity++;
    }
    const labels = reportLabels(rng, has, names);
    const pathology = [...has].some((f) => f !== 'Support Devices');
    assert.equal(labels[k('No Finding')] === 1, !pathology);
    for (let j = 1; j < names.length; j++) {
      const v = labels[j]!;
      // A reported 1 is always true and a reported 0 always false: the image carries the truth.
      if (v === 1) assert.ok(has.has(names[j] as never));
      if (v === 0) assert.ok(!has.has(names[j] as never));
      if (v === 1) codes.pos++;
      else if (v === 0) codes.neg++;
      else if (v === -1) codes.unc++;
      else if (Number.isNaN(v)) codes.blank++;
      else assert.fail(`label value ${v}`);
    }
  }
  assert.ok(cardioWithEc / cardio > 0.8, `P(EC | cardiomegaly) = ${cardioWithEc / cardio}`);
  assert.ok(childWithOpacity / child > 0.85, `P(opacity | child) = ${childWithOpacity / child}`);
  const total = codes.pos + codes.neg + codes.unc + codes.blank;
  assert.ok(codes.unc / total > 0.02 && codes.unc / total < 0.1, `uncertain rate ${codes.unc / total}`);
  assert.ok(codes.blank / total > 0.4, `blank rate ${codes.blank / total}`);
});

test('synth plan: several studies per patient on average', () => {
  const plan = planSynth({ count: 3000, imageSize: 64, seed: 0, fractions: { val: 0.1, test: 0.2 } });
  const studies = plan.patients.reduce((a, p) => a + p.studies, 0);
  assert.equal(studies, 3000);
  assert.ok(studies / plan.patients.length > 2, `${studies / plan.patients.length} studies per patient`);
});
